//! `--plot FILE.svg`: throughput and total memory against the worker count.

use std::path::Path;

use anyhow::{anyhow, Result};
use ferrocorn_sizing::advisor::StepResult;
use plotters::chart::DualCoordChartContext;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const MIB: f64 = 1024.0 * 1024.0;

type Chart<'a, 'b> = DualCoordChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<RangedCoordf64, RangedCoordf64>,
    Cartesian2d<RangedCoordf64, RangedCoordf64>,
>;

/// Draw req/s (left axis, blue) and total PSS in MiB (right axis, red) for each measured count,
/// with the recommended count marked (green).
pub fn draw(path: &Path, steps: &[&StepResult], recommended: usize) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let max_workers = steps.iter().map(|s| s.workers).max().unwrap_or(1) as f64;
    let max_rps = steps.iter().map(|s| s.rps()).fold(1.0, f64::max) * 1.1;
    let max_mib = steps
        .iter()
        .map(|s| s.total_pss() as f64 / MIB)
        .fold(1.0, f64::max)
        * 1.1;
    let x = 0.0..max_workers * 1.05 + 0.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ferrocorn sizing: throughput and memory by workers",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(x.clone(), 0.0..max_rps)
        .map_err(|e| err(&e))?
        .set_secondary_coord(x, 0.0..max_mib);
    chart
        .configure_mesh()
        .x_desc("workers")
        .y_desc("requests per second")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .configure_secondary_axes()
        .y_desc("total PSS (MiB)")
        .draw()
        .map_err(|e| err(&e))?;
    draw_series(&mut chart, steps, recommended, max_rps).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// The two lines with their points, the recommendation's marker, and the legend.
fn draw_series<'a>(
    chart: &mut Chart<'a, 'a>,
    steps: &[&StepResult],
    recommended: usize,
    max_rps: f64,
) -> DrawResult {
    let rps: Vec<(f64, f64)> = steps.iter().map(|s| (s.workers as f64, s.rps())).collect();
    let mib: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| (s.workers as f64, s.total_pss() as f64 / MIB))
        .collect();
    let blue = BLUE.stroke_width(3);
    let red = RED.stroke_width(3);
    chart
        .draw_series(LineSeries::new(rps.clone(), blue))?
        .label("req/s")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    chart.draw_series(rps.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))?;
    chart
        .draw_secondary_series(LineSeries::new(mib.clone(), red))?
        .label("total PSS (MiB)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
    chart.draw_secondary_series(mib.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
    let mark = recommended as f64;
    let green = GREEN.stroke_width(2);
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(mark, 0.0), (mark, max_rps)],
            green,
        )))?
        .label(format!("recommended: {recommended}"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], green));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
}
