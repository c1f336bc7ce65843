//! SVG plots for the benchmarks (plotters, SVG backend only): grouped bars ([`bar_panels`]) and
//! lines with error bars ([`lines`]). The simulation benchmarks include this file too
//! (`benches/simbench`), without the rest of `common`.
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

/// One point of a series, with an optional range drawn as an error bar (e.g. p1 to p99).
#[derive(Clone, Copy, Debug)]
pub struct Point {
    /// Where on the x axis.
    pub x: f64,
    /// The value (a mean, a median).
    pub y: f64,
    /// The low and high ends of the bar, if any.
    pub range: Option<(f64, f64)>,
}

impl Point {
    /// A point with no bar.
    pub fn at(x: f64, y: f64) -> Point {
        Point { x, y, range: None }
    }

    /// A point with a bar from `lo` to `hi`.
    pub fn with_range(x: f64, y: f64, lo: f64, hi: f64) -> Point {
        Point {
            x,
            y,
            range: Some((lo, hi)),
        }
    }
}

/// A named line.
#[derive(Clone, Debug)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// Its points, by x.
    pub points: Vec<Point>,
    /// Dashed (a reference curve) rather than solid with markers.
    pub dashed: bool,
}

impl Series {
    /// A solid line with markers.
    pub fn new(name: impl Into<String>, points: Vec<Point>) -> Series {
        Series {
            name: name.into(),
            points,
            dashed: false,
        }
    }

    /// A dashed reference curve.
    pub fn reference(name: impl Into<String>, points: Vec<Point>) -> Series {
        Series {
            name: name.into(),
            points,
            dashed: true,
        }
    }
}

/// How the x axis is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XAxis {
    /// Linear in x.
    Linear,
    /// x is a power of two, drawn at log2 x and labelled with x itself.
    Log2,
}

/// Draws `series` as lines into the SVG file `path`: `title` above, axes labelled `x_label` and
/// `y_label`, y from 0 (or below, if a value is) to a little above the largest value.
///
/// # Errors
/// If the file cannot be written.
pub fn lines(
    path: &Path,
    title: &str,
    (x_label, x_axis): (&str, XAxis),
    y_label: &str,
    series: &[Series],
) -> PlotResult {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let to_x = |x: f64| match x_axis {
        XAxis::Linear => x,
        XAxis::Log2 => x.log2(),
    };
    let all = || series.iter().flat_map(|s| s.points.iter());
    let xs = all().map(|p| to_x(p.x));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let tops = all().map(|p| p.range.map_or(p.y, |(_, hi)| hi.max(p.y)));
    let y1 = tops.fold(0.0f64, f64::max) * 1.1 + 1e-9;
    let bottoms = all().map(|p| p.range.map_or(p.y, |(lo, _)| lo.min(p.y)));
    let y0 = bottoms.fold(0.0f64, f64::min);
    let pad = ((x1 - x0) * 0.04).max(0.05);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), y0..y1)?;
    let x_fmt = |v: &f64| match x_axis {
        XAxis::Linear => tidy(*v),
        XAxis::Log2 => format!("{}", 2f64.powf(*v).round()),
    };
    let x_ticks = match x_axis {
        XAxis::Linear => 10,
        XAxis::Log2 => ((x1 - x0).round() as usize + 1).max(2),
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_labels(x_ticks)
        .x_label_formatter(&x_fmt)
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = color(i).to_rgba();
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (to_x(p.x), p.y)).collect();
        let legend = move |(x, y): (i32, i32)| {
            PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
        };
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, color.stroke_width(2)))?
                .label(&s.name)
                .legend(legend);
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(&s.name)
            .legend(legend);
        chart.draw_series(
            pts.iter()
                .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
        let bars = s.points.iter().filter_map(|p| {
            let (lo, hi) = p.range?;
            Some(ErrorBar::new_vertical(
                to_x(p.x),
                lo,
                p.y,
                hi,
                color.stroke_width(1),
                10,
            ))
        });
        chart.draw_series(bars)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}
