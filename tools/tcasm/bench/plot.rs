//! The coverage plot: producer cost per version against coverage, one line per tracker, one
//! panel per observer count, both axes logarithmic (costs span four orders of magnitude).
use std::path::Path;

use plotters::prelude::*;

use super::coverage::Row;

/// Line colours, one per tracker in the order the rows name them (the same in every panel).
const COLOURS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x00, 0x00, 0x00),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
];

pub fn draw(path: &Path, rows: &[Row], title: &str) -> crate::Result {
    let plotted: Vec<&Row> = rows.iter().filter(|r| r.coverage > 0.0 && r.producer_us.is_finite()).collect();
    let mut trackers: Vec<&str> = Vec::new();
    let mut observers: Vec<usize> = Vec::new();
    for r in &plotted {
        if !trackers.contains(&r.tracker.as_str()) {
            trackers.push(&r.tracker);
        }
        if !observers.contains(&r.observers) {
            observers.push(r.observers);
        }
    }
    observers.sort_unstable();
    if plotted.is_empty() {
        return Err("nothing to plot".into());
    }
    let (mut xmin, mut xmax) = (f64::MAX, f64::MIN);
    let (mut ymin, mut ymax) = (f64::MAX, f64::MIN);
    for r in &plotted {
        xmin = xmin.min(r.coverage);
        xmax = xmax.max(r.coverage);
        // Costs below 1 µs (or noise below zero for untracked writes) sit on the axis.
        ymin = ymin.min(r.producer_us.max(1.0));
        ymax = ymax.max(r.producer_us.max(1.0));
    }
    let x = (xmin / 1.5)..(xmax * 1.5);
    let y = (ymin / 2.0)..(ymax * 3.0);

    let root = SVGBackend::new(path, (520 * observers.len() as u32 + 40, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|e| e.to_string())?;
    for (panel, &n) in root.split_evenly((1, observers.len())).iter().zip(&observers) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{n} observer{}", if n == 1 { "" } else { "s" }), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x.clone().log_scale(), y.clone().log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("pages written per version (%)")
            .y_desc("producer cost per version (µs)")
            .x_label_formatter(&|v| format!("{v}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, tracker) in trackers.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = plotted
                .iter()
                .filter(|r| r.observers == n && r.tracker == *tracker)
                .map(|r| (r.coverage, r.producer_us.max(1.0)))
                .collect();
            if points.is_empty() {
                continue;
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(*tracker)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
