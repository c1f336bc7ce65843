//! SVG plots for the benchmarks (plotters, SVG backend only).
//!
//! Built without plotters' font support: an SVG carries its text as `<text>` elements naming a
//! font family, and whatever displays the file renders them, so no font is read here and no
//! system font needs to be installed. Text widths are only estimated while laying out, so
//! labels are kept short; a group name may break over lines at `\n`.
//!
//! Every function writes one file and creates its directory; the directory the benches use is
//! [`plots_dir`].

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::error::Error;
use std::path::{Path, PathBuf};

/// What a plot function returns: plotters' and the file system's errors, boxed.
pub type PlotResult = Result<(), Box<dyn Error>>;

/// Where plots go: `CHORDKV_PLOTS_DIR`, else `target/plots` in the workspace root.
pub fn plots_dir() -> PathBuf {
    std::env::var_os("CHORDKV_PLOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/plots"))
}

/// Series colours, in order (the "tab10" palette, which stays apart in print and for most
/// colour-blind readers).
pub const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The colour of series `i`.
pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// One panel of grouped bars: `groups` along the x axis, in each group one bar per series.
pub struct Bars<'a> {
    /// Drawn above the panel.
    pub title: &'a str,
    /// The y axis' name, with its unit.
    pub y_label: &'a str,
    /// One name per group, under it; `\n` starts another line.
    pub groups: &'a [String],
    /// `(name, one value per group)`, in legend order. A value that is not finite (or not
    /// positive, on a log axis) draws no bar.
    pub series: &'a [(String, Vec<f64>)],
    /// A logarithmic y axis (base 10), for values spanning decades.
    pub log_y: bool,
}

/// Writes one panel of grouped bars with a linear y axis from zero to `path`.
///
/// # Errors
/// If the file cannot be written.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> PlotResult {
    bar_panels(
        path,
        &[Bars {
            title,
            y_label,
            groups,
            series,
            log_y: false,
        }],
    )
}

/// Writes `panels` to `path`, one above the other.
///
/// # Errors
/// If the file cannot be written.
pub fn bar_panels(path: &Path, panels: &[Bars<'_>]) -> PlotResult {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let groups = panels.iter().map(|p| p.groups.len()).max().unwrap_or(1);
    let lines = panels
        .iter()
        .flat_map(|p| p.groups.iter().map(|g| g.lines().count()))
        .max()
        .unwrap_or(1);
    let width = (140 + 75 * groups as u32).max(640);
    let height = 360 + 16 * lines as u32;
    let root =
        SVGBackend::new(path, (width, height * panels.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (panel, area) in panels.iter().zip(&areas) {
        let values = panel.series.iter().flat_map(|(_, v)| v.iter().copied());
        if panel.log_y {
            let positive: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
            let lo = positive.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = positive.iter().copied().fold(0.0, f64::max);
            let (lo, hi) = if positive.is_empty() {
                (1.0, 10.0)
            } else {
                (
                    10f64.powf(lo.log10().floor()),
                    10f64.powf((hi.log10() + 0.05).ceil()),
                )
            };
            draw_bars(&root, area, panel, (lo..hi).log_scale(), lo, lines)?;
        } else {
            let hi = values.filter(|v| v.is_finite()).fold(0.0, f64::max);
            let hi = if hi > 0.0 { hi * 1.1 } else { 1.0 };
            draw_bars(&root, area, panel, 0.0..hi, 0.0, lines)?;
        }
    }
    root.present()?;
    Ok(())
}

/// Draws one panel into `area`; group names go on `root`, at the panel's absolute positions.
fn draw_bars<Y>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Bars<'_>,
    y: Y,
    floor: f64,
    lines: usize,
) -> PlotResult
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let n = panel.groups.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(10 + 15 * lines as u32)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..n as f64, y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(panel.y_label)
        .y_label_formatter(&|v| tidy(*v))
        .draw()?;
    let s = panel.series.len().max(1) as f64;
    let width = 0.8 / s;
    for (k, (name, values)) in panel.series.iter().enumerate() {
        let c = color(k);
        let bars = values.iter().enumerate().filter_map(|(g, &v)| {
            let drawn = v.is_finite() && (floor == 0.0 || v > floor);
            let x0 = g as f64 + 0.1 + width * k as f64;
            drawn.then(|| Rectangle::new([(x0, floor), (x0 + width, v)], c.filled()))
        });
        chart
            .draw_series(bars)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    let style =
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (g, name) in panel.groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(g as f64 + 0.5, floor));
        for (l, line) in name.lines().enumerate() {
            root.draw(&Text::new(
                line.to_string(),
                (x, y + 6 + 14 * l as i32),
                &style,
            ))?;
        }
    }
    Ok(())
}

/// A tick value without float noise: `0.1`, `2.5`, `1000`.
fn tidy(v: f64) -> String {
    if v == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}
