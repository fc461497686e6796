//! `propetl sweep --config sweep.toml`: a grid of runs over variants, seeds and overrides
//! (`propetl::sweep`), a progress bar over its cells, the summary table and the
//! metric-vs-storage plot (`plot.png` + `plot.svg` in the sweep folder), and a
//! metric-vs-setting plot per swept numeric setting (`plot-keep.png` + `.svg`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use propetl::run::RunReport;
use propetl::sweep::{self, Cell, CellAction, Summary, SweepConfig, SweepObserver, SweepOptions};
use propetl::train::{EpochLog, TrainObserver};
use propetl_runtime::TaskModel;

use crate::plot::{self, SettingPlot, SettingPoint, StoragePlot, StoragePoint};
use crate::progress::Progress;

/// Arguments of `propetl sweep`.
#[derive(clap::Args)]
pub struct SweepArgs {
    /// The sweep file: a run configuration (as for `train --config`) plus a [sweep] section
    /// with `variants = [...]`, `seeds = [...]` and optional `[sweep.petl]` lists
    /// (`keep = [0.1, 0.5]`).
    #[arg(long)]
    config: PathBuf,
    /// The sweep folder (default: runs/sweeps/<name of the sweep file>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run every cell again, complete ones included.
    #[arg(long)]
    overwrite: bool,
    /// Hide progress.
    #[arg(long)]
    quiet: bool,
}

/// Training progress of one cell on the sweep's bar: its message shows the epoch, step and
/// loss; epoch lines are printed above the bar.
struct BarTrain {
    bar: ProgressBar,
    label: String,
    epochs: usize,
    total: usize,
}

impl TrainObserver for BarTrain {
    fn on_start(&mut self, total_steps: usize, epochs: usize) {
        self.total = total_steps;
        self.epochs = epochs;
    }

    fn on_step(&mut self, epoch: usize, step: usize, loss: f64, _tokens_per_s: f64) {
        self.bar.set_message(format!(
            "{}  epoch {epoch}/{}  step {step}/{}  loss {loss:.4}",
            self.label, self.epochs, self.total
        ));
    }

    fn on_epoch(&mut self, _model: &dyn TaskModel, log: &EpochLog) -> Result<()> {
        self.bar.println(format!(
            "[{}] epoch {:>2}/{}  train loss {:.4}  eval {:.2}  ({:.1}s)",
            self.label,
            log.epoch,
            self.epochs,
            log.train_loss,
            log.eval_metric(),
            log.seconds
        ));
        Ok(())
    }
}

/// The CLI's [`SweepObserver`]: a bar over the cells to run on a terminal, `tracing` lines
/// otherwise (the training lines of [`Progress`] included).
struct SweepProgress {
    enabled: bool,
    bar: Option<ProgressBar>,
    cells: usize,
    started: bool,
    train: Box<dyn TrainObserver>,
}

impl SweepProgress {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            bar: None,
            cells: 0,
            started: false,
            train: Box::new(propetl::train::Silent),
        }
    }
}

impl SweepObserver for SweepProgress {
    fn on_plan(&mut self, cells: &[Cell], actions: &[CellAction]) {
        self.cells = cells.len();
        let count = |a: CellAction| actions.iter().filter(|&&x| x == a).count();
        let to_run = actions.len() - count(CellAction::Skip);
        if self.enabled {
            tracing::info!(
                cells = cells.len(),
                complete = count(CellAction::Skip),
                new = count(CellAction::Run),
                resume = count(CellAction::Resume),
                redo = count(CellAction::Redo),
                "sweep"
            );
        }
        if self.enabled && std::io::stderr().is_terminal() && to_run > 0 {
            let bar = ProgressBar::new(to_run as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} sweep [{bar:30}] {pos}/{len} cells {elapsed}<{eta}  {msg}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            self.bar = Some(bar);
        }
    }

    fn on_cell_start(&mut self, index: usize, cell: &Cell, action: CellAction) {
        let label = format!("{} ({})", cell.name, action.name());
        self.started = true;
        match &self.bar {
            Some(bar) => {
                bar.set_message(label.clone());
                self.train = Box::new(BarTrain {
                    bar: bar.clone(),
                    label: cell.name.clone(),
                    epochs: 0,
                    total: 0,
                });
            }
            None => {
                if self.enabled {
                    tracing::info!("cell {}/{}: {label}", index + 1, self.cells);
                }
                self.train = Box::new(Progress::new(&cell.name, self.enabled));
            }
        }
    }

    fn train_observer(&mut self) -> &mut dyn TrainObserver {
        self.train.as_mut()
    }

    fn on_cell_end(
        &mut self,
        index: usize,
        cell: &Cell,
        result: Result<&RunReport, &anyhow::Error>,
    ) {
        let started = std::mem::take(&mut self.started);
        let line = match result {
            Ok(r) => format!(
                "cell {}/{} {}: {}test {}",
                index + 1,
                self.cells,
                cell.name,
                if started { "" } else { "complete, kept — " },
                r.test.summary()
            ),
            Err(e) => format!(
                "cell {}/{} {} FAILED: {e:#}",
                index + 1,
                self.cells,
                cell.name
            ),
        };
        self.train = Box::new(propetl::train::Silent);
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                if started {
                    bar.inc(1);
                }
                bar.set_message("");
            }
            None if self.enabled => tracing::info!("{line}"),
            None => {}
        }
    }
}

impl Drop for SweepProgress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// The summary as a table for people.
pub fn table(summary: &Summary) -> String {
    let mut out = format!(
        "{:<36} {:>3} {:>16} {:>14} {:>9} {:>10}\n",
        "group",
        "n",
        format!("test {}", short_metric(&summary.selection_metric)),
        "float32-equiv.",
        "% backb.",
        "vs base"
    );
    for g in &summary.groups {
        let score = if g.n == 0 {
            "n/a".to_string()
        } else if g.n == 1 {
            format!("{:.2}", g.selection.mean)
        } else {
            format!("{:.2} ± {:.2}", g.selection.mean, g.selection.std)
        };
        let (f32eq, pct) = g
            .storage
            .map(|s| {
                (
                    format!("{:.0}", s.float32_equivalents),
                    format!("{:.3}%", s.percent_of_backbone),
                )
            })
            .unwrap_or_default();
        let vs = g
            .storage_over_baseline
            .map(|r| format!("{:.1}%", 100.0 * r))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<36} {:>3} {:>16} {:>14} {:>9} {:>10}\n",
            g.group, g.n, score, f32eq, pct, vs
        ));
    }
    out
}

fn short_metric(m: &str) -> &str {
    if m.starts_with("mean of") {
        "score"
    } else {
        m
    }
}

/// The points of the metric-vs-storage plot: one per group with a report, one line per
/// variant, unshared variants as reference points; a point's note names the overrides that
/// vary within its variant.
pub fn storage_points(summary: &Summary) -> Vec<StoragePoint> {
    summary
        .groups
        .iter()
        .filter(|g| g.n > 0)
        .filter_map(|g| {
            let storage = g.storage?.float32_equivalents;
            let varying: Vec<String> =
                g.overrides
                    .iter()
                    .filter(|(k, v)| {
                        summary.groups.iter().any(|o| {
                            o.variant == g.variant && o.overrides.get(k.as_str()) != Some(*v)
                        })
                    })
                    .map(|(k, v)| format!("{k}={}", sweep::value_text(v)))
                    .collect();
            Some(StoragePoint {
                method: g.variant.name().to_string(),
                storage: storage.max(1.0),
                values: g.selection_values.clone(),
                reference: !g.variant.is_pro(),
                note: (!varying.is_empty()).then(|| varying.join(", ")),
            })
        })
        .collect()
}

/// Draw `plot.png` and `plot.svg` into the sweep folder; returns the PNG's path.
pub fn draw(summary: &Summary, out: &Path) -> Result<Option<PathBuf>> {
    let points = storage_points(summary);
    if points.is_empty() {
        return Ok(None);
    }
    let title = format!(
        "{}: test {} vs storage",
        summary.task, summary.selection_metric
    );
    let y_desc = format!("test {}", summary.selection_metric);
    let (png, _svg) = plot::save(
        &StoragePlot {
            title: &title,
            y_desc: &y_desc,
            points: &points,
            size: (1100, 700),
        },
        &out.join("plot.png"),
    )?;
    Ok(Some(png))
}

/// The data of one metric-vs-setting figure.
pub struct SettingFigure {
    /// The swept setting (`keep`).
    pub key: String,
    /// The swept variants' points.
    pub points: Vec<SettingPoint>,
    /// Reference runs (unshared baselines, full fine-tuning): (variant, values per seed).
    pub references: Vec<(String, Vec<f64>)>,
}

/// The metric-vs-setting figures of a summary: one per override key that takes at least two
/// numeric values within one swept (masked) variant — `keep` in a keep sweep, where storage does
/// not change with the setting. Unshared baselines and full fine-tuning are the reference runs
/// (they have no such setting).
pub fn setting_figures(summary: &Summary) -> Vec<SettingFigure> {
    let mut keys: Vec<&String> = Vec::new();
    for g in summary.groups.iter().filter(|g| g.variant.is_pro()) {
        for k in g.overrides.keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let references: Vec<(String, Vec<f64>)> = summary
        .groups
        .iter()
        .filter(|g| !g.variant.is_pro() && g.n > 0)
        .map(|g| (g.variant.name().to_string(), g.selection_values.clone()))
        .collect();
    let mut out = Vec::new();
    for key in keys {
        let points: Vec<SettingPoint> = summary
            .groups
            .iter()
            .filter(|g| g.variant.is_pro() && g.n > 0)
            .filter_map(|g| {
                Some(SettingPoint {
                    method: g.variant.name().to_string(),
                    x: sweep::value_text(g.overrides.get(key)?).parse().ok()?,
                    values: g.selection_values.clone(),
                })
            })
            .collect();
        let varies = points
            .iter()
            .any(|p| points.iter().any(|q| q.method == p.method && q.x != p.x));
        if varies {
            out.push(SettingFigure {
                key: key.clone(),
                points,
                references: references.clone(),
            });
        }
    }
    out
}

/// Draw `plot-<key>.png` / `.svg` for every [`setting_figures`] figure; returns the PNGs.
pub fn draw_settings(summary: &Summary, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for SettingFigure {
        key,
        points,
        references,
    } in setting_figures(summary)
    {
        let title = format!(
            "{}: test {} vs {key}",
            summary.task, summary.selection_metric
        );
        let x_desc = if key == "keep" {
            "keep ratio (storage does not change with it)".to_string()
        } else {
            key.clone()
        };
        let y_desc = format!("test {}", summary.selection_metric);
        let (png, _svg) = plot::save(
            &SettingPlot {
                title: &title,
                x_desc: &x_desc,
                y_desc: &y_desc,
                points: &points,
                references: &references,
                size: (1100, 700),
            },
            &out.join(format!("plot-{key}.png")),
        )?;
        written.push(png);
    }
    Ok(written)
}

/// `propetl sweep`.
pub fn run(args: &SweepArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config = SweepConfig::from_toml_str(&text, &args.config.display().to_string())?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| sweep::default_out(&args.config));
    let options = SweepOptions {
        overwrite: args.overwrite,
        ..Default::default()
    };
    let outcome = {
        let mut progress = SweepProgress::new(!args.quiet);
        sweep::run_sweep(&config, &text, &out, &options, &mut progress)?
    };
    print!("{}", table(&outcome.summary));
    let plot = draw(&outcome.summary, &out).context("drawing the sweep's plot")?;
    let settings =
        draw_settings(&outcome.summary, &out).context("drawing the sweep's setting plots")?;
    let mut files = vec![
        sweep::SUMMARY_CSV.to_string(),
        sweep::SUMMARY_JSON.to_string(),
    ];
    if plot.is_some() {
        files.push("plot.png, plot.svg".into());
    }
    for png in &settings {
        let name = png.file_name().map(|n| n.to_string_lossy().to_string());
        if let Some(name) = name {
            files.push(format!("{name}, {}", name.replace(".png", ".svg")));
        }
    }
    println!("sweep folder: {} ({})", out.display(), files.join(", "));
    if outcome.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for (cell, e) in &outcome.failed {
            eprintln!("error: cell {cell} failed: {e}");
        }
        eprintln!(
            "error: {} of {} cells failed (run the sweep again to retry them; complete cells are kept)",
            outcome.failed.len(),
            outcome.cells.len()
        );
        Ok(ExitCode::FAILURE)
    }
}
