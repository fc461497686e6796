//! `propetl report RUN_DIR...`: a figure (PNG and SVG) with the train-loss and eval-metric
//! curves of every configuration and the test score against storage (float32-equivalents,
//! log scale), and a table of test metrics.
//!
//! Runs with the same task, variant and settings that differ only in their seed are one
//! configuration: the figure draws their mean (± std bands and error bars) and the table
//! prints mean ± std with n. A configuration's label is its variant, plus the settings that
//! tell it apart from the other configurations of the same variant (`pro_adapter (keep=0.1)`),
//! plus its task when the runs cover several tasks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use propetl::metrics::{glue_average, Metrics};
use propetl::run::{RunConfig, RunReport};

use crate::plot::{
    self, draw_legend, legend_width, marker_element, mean_pm_std, mean_std, Axis, Figure,
    LegendEntry, Marker, StoragePlot, StoragePoint, FAMILY,
};

/// One run directory: its report and, when readable, its resolved configuration.
#[derive(Debug, Clone)]
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// `report.json`.
    pub report: RunReport,
    /// `config.toml` (absent or unreadable: the run is a configuration of its own).
    pub config: Option<RunConfig>,
}

/// Read the `report.json` (and `config.toml`, if any) of each run directory.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Run>> {
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
            let report = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a run report", p.display()))?;
            let cfg = d.join("config.toml");
            let config = cfg
                .exists()
                .then(|| RunConfig::from_toml_file(&cfg).ok())
                .flatten();
            Ok(Run {
                dir: d.clone(),
                report,
                config,
            })
        })
        .collect()
}

/// Keys of the resolved configuration that do not make a different configuration: runs that
/// differ only there are seeds (or re-runs) of one.
const NOT_A_SETTING: [&str; 5] = ["task", "variant", "train.seed", "train.progress", "device"];

/// The resolved configuration flattened to `section.key → value` (`null` → `default`),
/// without task, variant, seed, device and progress.
fn settings(cfg: &RunConfig) -> BTreeMap<String, String> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            serde_json::Value::Null => {
                out.insert(prefix.to_string(), "default".into());
            }
            serde_json::Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(cfg) {
        flatten("", &v, &mut out);
    }
    for k in NOT_A_SETTING {
        out.remove(k);
    }
    out
}

/// A configuration to label: its class (`pro_adapter`, or `sst2 pro_adapter` across tasks),
/// its settings (none when its `config.toml` is unknown) and a fallback (the directory name).
pub type LabelItem = (String, Option<BTreeMap<String, String>>, String);

/// What tells a configuration apart from the others of its class (same task and variant):
/// the settings whose values differ within the class, as `keep=0.1, r=4` (PETL overrides
/// first), or `fallback` (the directory name) when the settings are unknown or equal.
/// Configurations alone in their class get nothing. Items are `(class, settings, fallback)`.
pub fn distinguishing(items: &[LabelItem]) -> Vec<String> {
    let mut out = vec![String::new(); items.len()];
    let mut classes: Vec<&str> = Vec::new();
    for (c, _, _) in items {
        if !classes.contains(&c.as_str()) {
            classes.push(c);
        }
    }
    for class in classes {
        let members: Vec<usize> = (0..items.len()).filter(|&i| items[i].0 == class).collect();
        if members.len() < 2 {
            continue;
        }
        let mut keys: Vec<&String> = members
            .iter()
            .filter_map(|&i| items[i].1.as_ref())
            .flat_map(|s| s.keys())
            .collect();
        keys.sort_by(|a, b| {
            (!a.starts_with("petl."), a.as_str()).cmp(&(!b.starts_with("petl."), b.as_str()))
        });
        keys.dedup();
        let value = |i: usize, k: &str| -> Option<String> {
            items[i]
                .1
                .as_ref()
                .map(|s| s.get(k).cloned().unwrap_or_else(|| "default".into()))
        };
        let differing: Vec<&String> = keys
            .into_iter()
            .filter(|k| {
                let first = value(members[0], k);
                members.iter().any(|&i| value(i, k) != first)
            })
            .collect();
        for &i in &members {
            let shown: Vec<String> = match &items[i].1 {
                Some(_) => differing
                    .iter()
                    .map(|k| {
                        let short = k.rsplit('.').next().unwrap_or(k);
                        format!("{short}={}", value(i, k).unwrap_or_default())
                    })
                    .collect(),
                None => vec![],
            };
            out[i] = if shown.is_empty() {
                items[i].2.clone()
            } else {
                shown.join(", ")
            };
        }
    }
    // what is still ambiguous gets the directory name too
    for i in 0..items.len() {
        let same: Vec<usize> = (0..items.len())
            .filter(|&j| items[j].0 == items[i].0 && out[j] == out[i])
            .collect();
        if same.len() > 1 {
            for j in same {
                if out[j] != items[j].2 {
                    out[j] = if out[j].is_empty() {
                        items[j].2.clone()
                    } else {
                        format!("{}, {}", out[j], items[j].2)
                    };
                }
            }
        }
    }
    out
}

/// Runs of one configuration (same task, variant and settings; different seeds).
struct Group<'a> {
    runs: Vec<&'a Run>,
    /// `pro_adapter` or `sst2 pro_adapter` (several tasks): one line of the storage plot.
    class: String,
    /// What tells it apart within its class (`keep=0.1`), or empty.
    suffix: String,
}

impl Group<'_> {
    /// `pro_adapter (keep=0.1)`, with the task first when the runs cover several tasks.
    fn label(&self) -> String {
        if self.suffix.is_empty() {
            self.class.clone()
        } else {
            format!("{} ({})", self.class, self.suffix)
        }
    }

    /// The label without the task (the GLUE average's row).
    fn method(&self) -> String {
        let v = self.runs[0].report.variant.name();
        if self.suffix.is_empty() {
            v.to_string()
        } else {
            format!("{v} ({})", self.suffix)
        }
    }

    fn first(&self) -> &RunReport {
        &self.runs[0].report
    }

    /// The test selection metric of each run.
    fn scores(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.report.test.selection).collect()
    }
}

fn dir_name(d: &Path) -> String {
    d.file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| d.display().to_string())
}

/// Group runs into configurations, in order of first appearance, and label them.
fn groups(runs: &[Run]) -> Vec<Group<'_>> {
    let multi_task = runs.iter().any(|r| r.report.task != runs[0].report.task);
    let mut keyed: Vec<(Option<BTreeMap<String, String>>, Group)> = Vec::new();
    for r in runs {
        let class = if multi_task {
            format!("{} {}", r.report.task.name(), r.report.variant.name())
        } else {
            r.report.variant.name().to_string()
        };
        let s = r.config.as_ref().map(settings);
        let existing = keyed
            .iter_mut()
            .find(|(ks, g)| s.is_some() && *ks == s && g.class == class);
        match existing {
            Some((_, g)) => g.runs.push(r),
            None => keyed.push((
                s,
                Group {
                    runs: vec![r],
                    class,
                    suffix: String::new(),
                },
            )),
        }
    }
    let items: Vec<LabelItem> = keyed
        .iter()
        .map(|(s, g)| (g.class.clone(), s.clone(), dir_name(&g.runs[0].dir)))
        .collect();
    let suffixes = distinguishing(&items);
    keyed
        .into_iter()
        .zip(suffixes)
        .map(|((_, mut g), suffix)| {
            g.suffix = suffix;
            g
        })
        .collect()
}

/// The name of the test metric all runs share (`accuracy`), if there is one.
fn metric_name(runs: &[Run]) -> Option<&'static str> {
    let names: Vec<Vec<&'static str>> = runs
        .iter()
        .map(|r| r.report.test.numbers().iter().map(|(k, _)| *k).collect())
        .collect();
    match names.first() {
        Some(first) if first.len() == 1 && names.iter().all(|n| n == first) => Some(first[0]),
        _ => None,
    }
}

/// The points of the metric-vs-storage plot: one per configuration, the unshared baselines
/// (and any other non-ProPETL variant, e.g. full fine-tuning) as reference points.
fn storage_points(groups: &[Group]) -> Vec<StoragePoint> {
    groups
        .iter()
        .map(|g| StoragePoint {
            method: g.class.clone(),
            storage: g.first().storage.float32_equivalents.max(1.0),
            values: g.scores(),
            reference: !g.first().variant.is_pro(),
            note: (!g.suffix.is_empty()).then(|| g.suffix.clone()),
        })
        .collect()
}

/// The report figure.
struct ReportFigure<'a> {
    runs: &'a [Run],
    groups: Vec<Group<'a>>,
    /// Colour and marker of each group: its method's (as in the storage plot), in a shade of
    /// its own when the method has several configurations.
    styles: Vec<(RGBColor, Marker)>,
    /// The groups in legend order: by method as in the storage plot.
    order: Vec<usize>,
}

impl<'a> ReportFigure<'a> {
    fn new(runs: &'a [Run]) -> Self {
        let groups = groups(runs);
        let methods = plot::methods(&storage_points(&groups));
        let mut styles = Vec::with_capacity(groups.len());
        for (i, g) in groups.iter().enumerate() {
            let k = groups[..i].iter().filter(|o| o.class == g.class).count();
            let (c, m) = methods
                .iter()
                .find(|m| m.0 == g.class)
                .map(|m| (m.2, m.3))
                .unwrap_or((plot::color(i), Marker::Circle));
            styles.push((plot::shade(c, k), m));
        }
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by_key(|&i| methods.iter().position(|m| m.0 == groups[i].class));
        Self {
            runs,
            groups,
            styles,
            order,
        }
    }
}

/// Per epoch (1-based index), the mean and std of `value` over the runs of a group that
/// have that epoch.
fn epoch_stats(
    g: &Group,
    value: impl Fn(&propetl::train::EpochLog) -> f64,
) -> Vec<(f64, f64, f64)> {
    let mut by_epoch: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for r in &g.runs {
        for e in &r.report.epochs {
            by_epoch.entry(e.epoch).or_default().push(value(e));
        }
    }
    by_epoch
        .into_iter()
        .filter_map(|(e, v)| mean_std(&v).map(|(m, s, _)| (e as f64, m, s)))
        .collect()
}

impl ReportFigure<'_> {
    /// Whether the epoch curves get ± std bands: only while they stay readable (at most six
    /// configurations with several seeds).
    fn bands(&self) -> bool {
        self.groups.iter().filter(|g| g.runs.len() > 1).count() <= 6
    }

    fn legend(&self) -> Vec<LegendEntry> {
        self.order
            .iter()
            .map(|&i| {
                let g = &self.groups[i];
                LegendEntry {
                    label: match plot::n_note(&[g.runs.len()]) {
                        Some(n) => format!("{}, {n}", g.label()),
                        None => g.label(),
                    },
                    color: self.styles[i].0,
                    marker: Some(self.styles[i].1),
                    line: true,
                }
            })
            .collect()
    }

    fn draw_epochs<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        title: &str,
        y_desc: &str,
        value: fn(&propetl::train::EpochLog) -> f64,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let max_epochs = self
            .runs
            .iter()
            .flat_map(|r| r.report.epochs.iter().map(|e| e.epoch))
            .max()
            .unwrap_or(1);
        let stats: Vec<Vec<(f64, f64, f64)>> =
            self.groups.iter().map(|g| epoch_stats(g, value)).collect();
        let (lo, hi) = stats
            .iter()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, m, s)| {
                (a.min(m - s), b.max(m + s))
            });
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(65)
            .build_cartesian_2d(Axis::integer(max_epochs), Axis::linear_around(lo, hi))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_desc)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        // ± std bands while they stay readable: for at most six configurations with seeds
        let bands = self.bands();
        for &i in &self.order {
            let pts = &stats[i];
            let (c, marker) = self.styles[i];
            if bands && pts.iter().any(|p| p.2 > 0.0) {
                let band: Vec<(f64, f64)> = pts
                    .iter()
                    .map(|p| (p.0, p.1 + p.2))
                    .chain(pts.iter().rev().map(|p| (p.0, p.1 - p.2)))
                    .collect();
                chart.draw_series(std::iter::once(Polygon::new(band, c.mix(0.18).filled())))?;
            }
            chart.draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))?;
            for p in pts {
                chart.draw_series(std::iter::once(marker_element!(marker, (p.0, p.1), 4, c)))?;
            }
        }
        Ok(())
    }
}

impl Figure for ReportFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1400, 950)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (w, _) = root.dim_in_pixel();
        let (top, bottom) = root.split_vertically(470);
        let entries = self.legend();
        let mut notes = Vec::new();
        if self.groups.iter().any(|g| g.runs.len() > 1) {
            notes.push("lines: mean over seeds".into());
            if self.bands() {
                notes.push("bands: ± std".into());
            }
        }
        let lw = legend_width(&top, &entries, &notes).min(w / 3);
        let (panels, legend_area) = top.split_horizontally(w - lw);
        let (loss_area, metric_area) = panels.split_horizontally((w - lw) / 2);
        self.draw_epochs(&loss_area, "train loss per epoch", "train loss", |e| {
            e.train_loss
        })?;
        self.draw_epochs(
            &metric_area,
            "eval score per epoch (selection metric)",
            "eval score (×100)",
            |e| e.eval_metric(),
        )?;
        draw_legend(&legend_area, 50, &entries, &notes)?;
        let y_desc = match metric_name(self.runs) {
            Some(m) => format!("test {m} (×100)"),
            None => "test score (selection metric, ×100)".into(),
        };
        let points = storage_points(&self.groups);
        let (_, h) = bottom.dim_in_pixel();
        StoragePlot {
            title: "test score vs storage",
            y_desc: &y_desc,
            points: &points,
            size: (w, h),
        }
        .draw(&bottom)
    }
}

/// Draw the report figure: a PNG at `out` and an SVG next to it (same name, `.svg`).
/// Returns the path of the SVG.
pub fn draw(runs: &[Run], out: &Path) -> Result<PathBuf> {
    if runs.is_empty() {
        bail!("no runs to report");
    }
    let (_, svg) = plot::save(&ReportFigure::new(runs), out)?;
    Ok(svg)
}

/// `accuracy 81.20 ± 0.40, f1 …`: each named metric's mean ± std over `ms`.
fn metric_summary<'a>(
    names: &[&'static str],
    ms: impl Iterator<Item = &'a Metrics> + Clone,
) -> String {
    names
        .iter()
        .map(|k| {
            let vals: Vec<f64> = ms
                .clone()
                .filter_map(|m| {
                    m.numbers()
                        .into_iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v)
                })
                .collect();
            format!("{k} {}", mean_pm_std(&vals, 2))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The mean of each metric over `ms` (a metric is kept when any run has it).
fn mean_metrics(ms: &[&Metrics]) -> Metrics {
    let mean = |f: fn(&Metrics) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = ms.iter().filter_map(|m| f(m)).collect();
        mean_std(&v).map(|s| s.0)
    };
    Metrics {
        accuracy: mean(|m| m.accuracy),
        f1: mean(|m| m.f1),
        mcc: mean(|m| m.mcc),
        pearson: mean(|m| m.pearson),
        spearman: mean(|m| m.spearman),
        selection: mean(|m| Some(m.selection)).unwrap_or(f64::NAN),
    }
}

/// A text table of the configurations' test metrics — mean ± std over seeds, with n, when a
/// configuration has several runs — and, when the runs cover all eight GLUE tasks, the
/// 11-number GLUE average of each method (method page §4).
pub fn table(runs: &[Run]) -> String {
    let groups = groups(runs);
    let width = groups
        .iter()
        .map(|g| g.method().chars().count())
        .max()
        .unwrap_or(0)
        .max(12);
    let mut out = format!(
        "{:<16} {:<width$} {:>3} {:>6} {:>14} {:>10}  test metrics\n",
        "task", "variant", "n", "epoch", "float32-equiv.", "% backbone"
    );
    let mut by_method: BTreeMap<String, BTreeMap<propetl::data::GlueTask, Metrics>> =
        BTreeMap::new();
    let mut several = false;
    for g in &groups {
        let r = g.first();
        let n = g.runs.len();
        several |= n > 1;
        let epochs: Vec<usize> = g.runs.iter().map(|r| r.report.best_epoch).collect();
        let (emin, emax) = (
            epochs.iter().min().copied().unwrap_or(0),
            epochs.iter().max().copied().unwrap_or(0),
        );
        let epoch = if emin == emax {
            emin.to_string()
        } else {
            format!("{emin}-{emax}")
        };
        let names: Vec<&'static str> = {
            let mut v: Vec<&'static str> = Vec::new();
            for run in &g.runs {
                for (k, _) in run.report.test.numbers() {
                    if !v.contains(&k) {
                        v.push(k);
                    }
                }
            }
            v
        };
        let mut metrics = metric_summary(&names, g.runs.iter().map(|run| &run.report.test));
        if metrics.is_empty() {
            // a multi-task run: the mean of its tasks' selection metrics (rows below)
            let vals: Vec<f64> = g.runs.iter().map(|r| r.report.test.selection).collect();
            metrics = format!("mean over tasks {}", mean_pm_std(&vals, 2));
        }
        out += &format!(
            "{:<16} {:<width$} {:>3} {:>6} {:>14.0} {:>9.3}%  {}\n",
            r.task.name(),
            g.method(),
            n,
            epoch,
            r.storage.float32_equivalents,
            r.storage.percent_of_backbone,
            metrics
        );
        if let Some(t) = r.task.glue() {
            let ms: Vec<&Metrics> = g.runs.iter().map(|r| &r.report.test).collect();
            by_method
                .entry(g.method())
                .or_default()
                .insert(t, mean_metrics(&ms));
        }
        // multi-task runs: one row per task
        for task in r.tasks.keys() {
            let ms: Vec<&Metrics> = g
                .runs
                .iter()
                .filter_map(|run| run.report.tasks.get(task).map(|s| &s.test))
                .collect();
            let names: Vec<&'static str> = ms[0].numbers().iter().map(|(k, _)| *k).collect();
            out += &format!(
                "{:<16} {:<width$} {:>3} {:>6} {:>14} {:>10}  {}\n",
                format!("  {task}"),
                "",
                ms.len(),
                "",
                "",
                "",
                metric_summary(&names, ms.iter().copied())
            );
            if let Ok(t) = propetl::data::GlueTask::parse(task) {
                by_method
                    .entry(g.method())
                    .or_default()
                    .insert(t, mean_metrics(&ms));
            }
        }
    }
    if several {
        out += "(mean ± sample std over the n seeds of a configuration)\n";
    }
    for (method, tasks) in by_method {
        if let Some(avg) = glue_average(&tasks) {
            out += &format!("GLUE average ({method}, 11 numbers): {avg:.2}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn item(class: &str, settings: Option<BTreeMap<String, String>>, dir: &str) -> LabelItem {
        (class.into(), settings, dir.into())
    }

    #[test]
    fn report_labels_are_the_variant_alone_when_it_is_unique() {
        let items = [
            item("pro_adapter", s(&[("train.lr", "0.01")]), "a"),
            item("adapter", s(&[("train.lr", "0.001")]), "adapter"),
        ];
        assert_eq!(distinguishing(&items), ["", ""]);
    }

    #[test]
    fn report_labels_name_only_the_settings_that_differ() {
        let items = [
            item(
                "pro_adapter",
                s(&[
                    ("petl.keep", "0.1"),
                    ("train.lr", "0.01"),
                    ("split", "reference"),
                ]),
                "run-a",
            ),
            item(
                "pro_adapter",
                s(&[
                    ("petl.keep", "0.3"),
                    ("train.lr", "0.01"),
                    ("split", "reference"),
                ]),
                "run-b",
            ),
            item(
                "pro_adapter",
                s(&[
                    ("petl.keep", "0.3"),
                    ("train.lr", "0.001"),
                    ("split", "reference"),
                ]),
                "run-c",
            ),
            item("adapter", s(&[("train.lr", "0.001")]), "adapter"),
        ];
        assert_eq!(
            distinguishing(&items),
            [
                "keep=0.1, lr=0.01",
                "keep=0.3, lr=0.01",
                "keep=0.3, lr=0.001",
                ""
            ]
        );
        // an override given to one run only: the other's is the default
        let items = [
            item("pro_lora", s(&[("petl.keep", "0.1")]), "a"),
            item("pro_lora", s(&[]), "b"),
        ];
        assert_eq!(distinguishing(&items), ["keep=0.1", "keep=default"]);
    }

    #[test]
    fn report_labels_fall_back_to_the_directory_name() {
        let items = [
            item("lora", None, "lora-1"),
            item("lora", None, "lora-2"),
            item("prefix", None, "prefix"),
        ];
        assert_eq!(distinguishing(&items), ["lora-1", "lora-2", ""]);
    }
}
