//! Line charts for the simulation benchmarks, as SVG files (plotters' SVG backend: text is
//! written as SVG text, so no font is needed to draw, only to view).

use plotters::prelude::*;
use std::path::Path;

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

/// Draw `series` into the SVG file `path`: `title` above, axes labelled `x_label` and
/// `y_label`, y from 0 (or below, if a value is) to a little above the largest value.
///
/// # Panics
/// If the file cannot be written.
pub fn lines(
    path: &Path,
    title: &str,
    (x_label, x_axis): (&str, XAxis),
    y_label: &str,
    series: &[Series],
) {
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
    root.fill(&WHITE).expect("draw");
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), y0..y1)
        .expect("draw");
    let x_fmt = |v: &f64| match x_axis {
        XAxis::Linear => {
            let text = format!("{v:.3}");
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        }
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
        .draw()
        .expect("draw");
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (to_x(p.x), p.y)).collect();
        let legend = move |(x, y): (i32, i32)| {
            PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
        };
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, color.stroke_width(2)))
                .expect("draw")
                .label(&s.name)
                .legend(legend);
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .expect("draw")
            .label(&s.name)
            .legend(legend);
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .expect("draw");
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
        chart.draw_series(bars).expect("draw");
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .expect("draw");
    root.present().expect("write the plot");
}
