//! `propetl report RUN_DIR...`: one PNG with the loss and eval-metric curves of every run and
//! each run's test score against its storage (float32-equivalents, log scale).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

use propetl::metrics::{glue_average, Metrics};
use propetl::run::RunReport;

/// DejaVu Sans Mono (free license in `src/fonts/DejaVu-LICENSE.txt`), embedded so that text
/// renders without system fonts.
const FONT: &[u8] = include_bytes!("fonts/DejaVuSansMono.ttf");

fn label(r: &RunReport, dir: &Path) -> String {
    format!(
        "{} {} ({})",
        r.task,
        r.variant,
        dir.file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default()
    )
}

/// Read the `report.json` of each run directory.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, RunReport)>> {
    dirs.iter()
        .map(|d| {
            let p = d.join("report.json");
            let text = std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "reading {} (is {} a run directory?)",
                    p.display(),
                    d.display()
                )
            })?;
            Ok((
                d.clone(),
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a run report", p.display()))?,
            ))
        })
        .collect()
}

/// Draw the report PNG (1200 × 900).
pub fn draw(runs: &[(PathBuf, RunReport)], out: &Path) -> Result<()> {
    if runs.is_empty() {
        bail!("no runs to report");
    }
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("cannot load the embedded font"))?;
    let root = BitMapBackend::new(out, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let (loss_area, metric_area) = top.split_horizontally(600);
    let max_epochs = runs
        .iter()
        .map(|(_, r)| r.epochs.len())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let losses: Vec<f64> = runs
        .iter()
        .flat_map(|(_, r)| r.epochs.iter().map(|e| e.train_loss))
        .filter(|v| v.is_finite())
        .collect();
    let (lmin, lmax) = losses
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let metrics: Vec<f64> = runs
        .iter()
        .flat_map(|(_, r)| r.epochs.iter().map(|e| e.eval_metric()))
        .filter(|v| v.is_finite())
        .collect();
    let (mmin, mmax) = metrics
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    // an axis without finite values (an empty run, all-NaN metrics) or of zero width gets a
    // unit range: plotters cannot draw an infinite or empty one
    let pad = |a: f64, b: f64| {
        if !a.is_finite() || !b.is_finite() {
            (0.0, 1.0)
        } else if (b - a).abs() < 1e-9 {
            (a - 1.0, b + 1.0)
        } else {
            (a - 0.05 * (b - a), b + 0.05 * (b - a))
        }
    };

    for (area, title, (ymin, ymax), pick) in [
        (&loss_area, "train loss per epoch", pad(lmin, lmax), 0usize),
        (
            &metric_area,
            "eval metric per epoch (selection, x100)",
            pad(mmin, mmax),
            1usize,
        ),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.5..max_epochs + 0.5, ymin..ymax)?;
        chart.configure_mesh().x_desc("epoch").draw()?;
        for (i, (dir, r)) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = r
                .epochs
                .iter()
                .map(|e| {
                    (
                        e.epoch as f64,
                        if pick == 0 {
                            e.train_loss
                        } else {
                            e.eval_metric()
                        },
                    )
                })
                .filter(|p| p.1.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(label(r, dir))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }

    let storage: Vec<f64> = runs
        .iter()
        .map(|(_, r)| r.storage.float32_equivalents.max(1.0))
        .collect();
    let scores: Vec<f64> = runs.iter().map(|(_, r)| r.test.selection).collect();
    let (smin, smax) = storage
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let finite: Vec<f64> = scores.iter().copied().filter(|v| v.is_finite()).collect();
    let (ymin, ymax) = pad(
        finite.iter().copied().fold(f64::INFINITY, f64::min),
        finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "test score vs storage (float32-equivalents, log scale)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((smin / 2.0..smax * 2.0).log_scale(), ymin..ymax)?;
    chart
        .configure_mesh()
        .x_desc("float32-equivalents")
        .y_desc("test (selection metric)")
        .draw()?;
    for (i, ((dir, r), (&x, &y))) in runs.iter().zip(storage.iter().zip(&scores)).enumerate() {
        if !y.is_finite() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        chart.draw_series(std::iter::once(Circle::new((x, y), 6, color.filled())))?;
        chart.draw_series(std::iter::once(Text::new(
            label(r, dir),
            (x, y),
            ("sans-serif", 14).into_font(),
        )))?;
    }
    root.present()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// A text table of the runs' test metrics; when the runs cover all eight GLUE tasks, the
/// 11-number GLUE average of each variant (method page §4).
pub fn table(runs: &[(PathBuf, RunReport)]) -> String {
    use std::collections::BTreeMap;
    let mut out = format!(
        "{:<16} {:<12} {:>6} {:>14} {:>10}  test metrics\n",
        "task", "variant", "epoch", "float32-equiv.", "% backbone"
    );
    let mut by_variant: BTreeMap<&str, BTreeMap<propetl::data::GlueTask, Metrics>> =
        BTreeMap::new();
    for (_, r) in runs {
        out += &format!(
            "{:<16} {:<12} {:>6} {:>14.0} {:>9.3}%  {}\n",
            r.task.name(),
            r.variant.name(),
            r.best_epoch,
            r.storage.float32_equivalents,
            r.storage.percent_of_backbone,
            r.test.summary()
        );
        if let Some(t) = r.task.glue() {
            by_variant
                .entry(r.variant.name())
                .or_default()
                .insert(t, r.test.clone());
        }
    }
    for (variant, tasks) in by_variant {
        if let Some(avg) = glue_average(&tasks) {
            out += &format!("GLUE average ({variant}, 11 numbers): {avg:.2}\n");
        }
    }
    out
}
