//! PNG plots of a report: throughput per workload (celeriac beside Celery's best, log
//! scale) and the latency distribution (CDF of publish → start).
//!
//! Text needs a TrueType font: the first one found among the usual system paths
//! (`BENCH_FONT` overrides); without one, the plots are skipped with a message.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::report::{Measurement, Report};

const CELERIAC: RGBColor = RGBColor(0x2e, 0x7d, 0x32);
const CELERY: RGBColor = RGBColor(0x9e, 0x9e, 0x9e);

/// Registers a system font as "sans-serif"; the path used, or why not.
fn font() -> Result<String, String> {
    let mut candidates: Vec<String> = std::env::var("BENCH_FONT").into_iter().collect();
    candidates.extend(
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/Library/Fonts/Arial.ttf",
        ]
        .map(String::from),
    );
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(path);
            }
        }
    }
    Err("no TrueType font found (set BENCH_FONT=/path/to/font.ttf)".into())
}

/// Writes `throughput.png` and `latency.png` into `dir`; the files written.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<String>, String> {
    font()?;
    let mut written = Vec::new();
    let t = dir.join("throughput.png");
    throughput(report, &t).map_err(|e| format!("{}: {e}", t.display()))?;
    written.push(t.display().to_string());
    let l = dir.join("latency.png");
    if latency(report, &l).map_err(|e| format!("{}: {e}", l.display()))? {
        written.push(l.display().to_string());
    }
    Ok(written)
}

fn best<'a>(ms: &'a [Measurement], workload: &str, imp: &str) -> Option<&'a Measurement> {
    ms.iter()
        .filter(|m| m.workload == workload && m.implementation == imp && m.tasks_per_s.is_some())
        .max_by(|a, b| {
            a.tasks_per_s
                .partial_cmp(&b.tasks_per_s)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn throughput(report: &Report, path: &Path) -> Res<()> {
    let workloads = [
        "noop_results",
        "noop_ignored",
        "amqp_results",
        "amqp_ignored",
        "enqueue",
        "memory",
        "sqlite",
    ];
    let bars: Vec<(&str, Option<f64>, Option<f64>)> = workloads
        .iter()
        .map(|w| {
            (
                *w,
                best(&report.measurements, w, "celeriac").and_then(|m| m.tasks_per_s),
                best(&report.measurements, w, "celery").and_then(|m| m.tasks_per_s),
            )
        })
        .filter(|(_, a, b)| a.is_some() || b.is_some())
        .collect();
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = bars
        .iter()
        .flat_map(|(_, a, b)| [a.unwrap_or(1.0), b.unwrap_or(1.0)])
        .fold(10.0_f64, f64::max)
        * 3.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput, tasks/s (log scale) — celeriac vs Python Celery's best pool",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(10)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..bars.len() as f64, (4.0..top).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|y| crate::report::thousands(*y))
        .draw()?;
    for (i, (name, ours, theirs)) in bars.iter().enumerate() {
        let x = i as f64;
        chart.draw_series(std::iter::once(Text::new(
            name.to_string(),
            (x + 0.3, 6.0),
            ("sans-serif", 16),
        )))?;
        if let Some(v) = ours {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 10.0), (x + 0.48, *v)],
                CELERIAC.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                crate::report::thousands(*v),
                (x + 0.15, *v * 1.15),
                ("sans-serif", 14),
            )))?;
        }
        if let Some(v) = theirs {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.52, 10.0), (x + 0.85, *v)],
                CELERY.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                crate::report::thousands(*v),
                (x + 0.52, *v * 1.15),
                ("sans-serif", 14),
            )))?;
        }
    }
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, 10.0), (0.0, 10.0)],
            CELERIAC.filled(),
        )))?
        .label("celeriac")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], CELERIAC.filled()));
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, 10.0), (0.0, 10.0)],
            CELERY.filled(),
        )))?
        .label("Celery 5.7 (best pool)")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], CELERY.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The CDF of each implementation's latency samples; false if there are none.
fn latency(report: &Report, path: &Path) -> Res<bool> {
    let series: Vec<(&Measurement, RGBColor)> = report
        .measurements
        .iter()
        .filter(|m| m.workload == "latency" && !m.samples_ms.is_empty())
        .map(|m| {
            let c = if m.implementation == "celeriac" {
                CELERIAC
            } else {
                CELERY
            };
            (m, c)
        })
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let lo = series
        .iter()
        .flat_map(|(m, _)| m.samples_ms.iter().copied())
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    let hi = series
        .iter()
        .flat_map(|(m, _)| m.samples_ms.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(lo * 10.0);
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Publish → start latency on Redis (CDF, log scale)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo / 1.5..hi * 1.5).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("fraction of tasks")
        .draw()?;
    for (m, color) in series {
        let mut s = m.samples_ms.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len() as f64;
        let points: Vec<(f64, f64)> = s
            .iter()
            .enumerate()
            .map(|(i, v)| (v.max(lo), (i + 1) as f64 / n))
            .collect();
        let label = format!("{} ({})", m.implementation, m.variant);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(true)
}
