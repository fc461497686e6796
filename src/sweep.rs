//! Sweeps: a grid of ordinary runs over variants, seeds and numeric overrides of one task,
//! and the summary over seeds.
//!
//! A sweep file is a run configuration (the schema of [`RunConfig`], `variant` optional)
//! plus a `[sweep]` section:
//!
//! ```toml
//! task = "rotten-tomatoes"
//! model_dir = "assets/all-MiniLM-L6-v2"
//! data_dir = "assets"
//! [train]
//! epochs = 2
//! [sweep]
//! variants = ["pro_adapter", "adapter"]
//! seeds = [42, 43, 44]
//! [sweep.petl]          # optional: one list per override key of `[petl]`
//! keep = [0.1, 0.5]
//! [sweep.train.full]    # optional: `[train]` keys for one variant's cells
//! lr = 5e-5
//! ```
//!
//! Every cell (variant × override values × seed) is a run directory under the sweep folder,
//! named `pro_adapter-keep0.1-seed42`; cells that differ only in their seed form a *group*
//! (`pro_adapter-keep0.1`), the unit of the summary. An override key that does not apply to a
//! variant (`keep` for the unshared `adapter`, `r` for an adapter) is dropped for that
//! variant — from the grid and from the base `[petl]` section — so the unshared baselines run
//! once per seed next to a keep sweep; a grid key that applies to none of the variants is an
//! error. `[sweep.train.<variant>]` overrides `[train]` keys for that variant's cells (full
//! fine-tuning needs a far smaller learning rate than the PETL variants).
//!
//! [`run_sweep`] validates every cell's configuration before anything is written, then runs
//! the cells in order: a cell whose directory holds a complete `report.json` (written with
//! the same configuration) is skipped; a half-done cell is resumed from its checkpoint
//! ([`run::resume`]) when it has one, else run again from scratch (replacing the directory);
//! a cell that fails is reported and the sweep goes on with the next one. At the end
//! `summary.json` and `summary.csv` hold one row per group: n, mean and sample standard
//! deviation over seeds of the test selection metric and of every reported test metric,
//! storage, and the comparison with the unshared baseline when the sweep has it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use propetl_runtime::{io::atomic_write, NumericOverrides, PetlConfig, Variant};
use serde::{Deserialize, Serialize};

use crate::run::{self, ModelFamily, RunConfig, RunOptions, RunReport, CHECKPOINT_FILE};
use crate::train::TrainObserver;

/// The summary files of a sweep folder.
pub const SUMMARY_JSON: &str = "summary.json";
/// See [`SUMMARY_JSON`].
pub const SUMMARY_CSV: &str = "summary.csv";
/// The sweep file as given, copied into the sweep folder when the sweep starts.
pub const SWEEP_FILE: &str = "sweep.toml";

/// The canonical order of override keys (cell names list them in this order).
const KEY_ORDER: [&str; 9] = [
    "keep",
    "reduction",
    "bottleneck",
    "init_std",
    "r",
    "alpha",
    "length",
    "hidden",
    "combine",
];

/// A parsed sweep file: the base run configuration and the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepConfig {
    /// The configuration every cell starts from (its `variant` and `train.seed` are replaced
    /// by the cell's).
    pub base: RunConfig,
    /// The variants, in order.
    pub variants: Vec<Variant>,
    /// The seeds, in order.
    pub seeds: Vec<u64>,
    /// Override keys and their values, in the canonical key order.
    pub petl: Vec<(String, Vec<toml::Value>)>,
    /// `[train]` keys set for one variant's cells (`[sweep.train.<variant>]`).
    pub train: BTreeMap<Variant, toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepSection {
    #[serde(default)]
    variants: Vec<Variant>,
    #[serde(default)]
    seeds: Vec<u64>,
    #[serde(default)]
    petl: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    train: BTreeMap<String, toml::Table>,
}

impl SweepConfig {
    /// Parse a sweep file's text (`source` names it in errors). `[sweep] variants` defaults
    /// to the base `variant`, `seeds` to the base `train.seed`.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).with_context(|| format!("{source}: invalid TOML"))?;
        let section = table
            .remove("sweep")
            .with_context(|| format!("{source}: no [sweep] section (a sweep file is a run configuration plus [sweep] with variants = [...] and seeds = [...])"))?;
        let section: SweepSection = section
            .try_into()
            .with_context(|| format!("{source}: invalid [sweep] section"))?;
        let mut variants = section.variants;
        if variants.is_empty() {
            let v = table
                .get("variant")
                .with_context(|| format!("{source}: [sweep] variants is missing or empty (and there is no base `variant`)"))?;
            variants.push(
                v.clone()
                    .try_into()
                    .with_context(|| format!("{source}: invalid `variant`"))?,
            );
        }
        // the base needs a variant to parse; each cell sets its own
        table
            .entry("variant")
            .or_insert_with(|| toml::Value::String(variants[0].name().to_string()));
        let base: RunConfig = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("{source}: invalid run configuration"))?;
        let seeds = if section.seeds.is_empty() {
            vec![base.train.seed]
        } else {
            section.seeds
        };
        let mut petl: Vec<(String, Vec<toml::Value>)> = section.petl.into_iter().collect();
        for (key, values) in &petl {
            if !KEY_ORDER.contains(&key.as_str()) {
                bail!(
                    "{source}: unknown key `{key}` in [sweep.petl] (one of: {})",
                    KEY_ORDER.join(", ")
                );
            }
            if values.is_empty() {
                bail!("{source}: [sweep.petl] {key} is an empty list");
            }
        }
        petl.sort_by_key(|(k, _)| KEY_ORDER.iter().position(|o| o == k));
        let mut train = BTreeMap::new();
        for (name, keys) in section.train {
            let variant: Variant = name
                .parse()
                .with_context(|| format!("{source}: [sweep.train.{name}]"))?;
            if !variants.contains(&variant) {
                bail!(
                    "{source}: [sweep.train.{name}] names a variant the sweep does not run ({})",
                    variants
                        .iter()
                        .map(|v| v.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            // the keys must make a valid [train] section on top of the base one
            with_train(&base, &keys)
                .with_context(|| format!("{source}: invalid [sweep.train.{name}]"))?;
            train.insert(variant, keys);
        }
        Ok(Self {
            base,
            variants,
            seeds,
            petl,
            train,
        })
    }

    /// Read and parse a sweep file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// The cells of the grid, in order (variant, then the override values, then seed), each
    /// configuration validated. Errors name the offending cell; nothing is written.
    pub fn cells(&self) -> Result<Vec<Cell>> {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(v) = self.variants.iter().find(|v| !seen.insert(v.name())) {
            bail!("[sweep] variants lists `{v}` twice");
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(s) = self.seeds.iter().find(|s| !seen.insert(**s)) {
            bail!("[sweep] seeds lists {s} twice");
        }
        for (key, values) in &self.petl {
            let mut seen = Vec::<&toml::Value>::new();
            if let Some(v) = values.iter().find(|v| {
                let dup = seen.contains(v);
                seen.push(v);
                dup
            }) {
                bail!("[sweep.petl] {key} lists {v} twice");
            }
        }
        let family = self.base.model_family()?;
        let specs: Vec<Option<PetlConfig>> =
            self.variants.iter().map(|v| spec(family, *v)).collect();
        // full fine-tuning has no PETL module: no key applies to it; a family without a
        // variant (spec `None`) is left to the cell's validation
        let takes = |variant: &Variant, spec: &Option<PetlConfig>, key: &str| {
            !variant.is_full() && spec.as_ref().is_none_or(|s| applies(s, key))
        };
        for (key, _) in &self.petl {
            if !self
                .variants
                .iter()
                .zip(&specs)
                .any(|(v, s)| takes(v, s, key))
            {
                bail!(
                    "[sweep.petl] {key} applies to none of the variants ({})",
                    self.variants
                        .iter()
                        .map(|v| v.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let mut cells = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (variant, spec) in self.variants.iter().zip(&specs) {
            let keys: Vec<&(String, Vec<toml::Value>)> = self
                .petl
                .iter()
                .filter(|(k, _)| takes(variant, spec, k))
                .collect();
            // the base [petl] without what does not apply to this variant
            let mut base_petl = toml::Table::try_from(&self.base.petl)?;
            base_petl.retain(|k, _| takes(variant, spec, k));
            for combo in product(&keys) {
                let mut petl = base_petl.clone();
                let mut overrides = Vec::new();
                for (key, value) in &combo {
                    petl.insert(key.to_string(), (*value).clone());
                    overrides.push((key.to_string(), (*value).clone()));
                }
                let group = group_name(*variant, &overrides);
                let petl: NumericOverrides = toml::Value::Table(petl)
                    .try_into()
                    .with_context(|| format!("sweep cell {group}: invalid [petl] values"))?;
                for &seed in &self.seeds {
                    let name = format!("{group}-seed{seed}");
                    let mut config = match self.train.get(variant) {
                        Some(keys) => with_train(&self.base, keys)?,
                        None => self.base.clone(),
                    };
                    config.variant = *variant;
                    config.train.seed = seed;
                    config.petl = petl.clone();
                    config
                        .validate()
                        .with_context(|| format!("sweep cell {name}"))?;
                    if !names.insert(name.clone()) {
                        // a variant without the grid's keys: one cell per seed
                        continue;
                    }
                    cells.push(Cell {
                        name,
                        group: group.clone(),
                        variant: *variant,
                        seed,
                        overrides: overrides.clone(),
                        config,
                    });
                }
            }
        }
        Ok(cells)
    }
}

/// `base` with the `[train]` keys of `keys` set (unknown keys and wrong types are errors).
fn with_train(base: &RunConfig, keys: &toml::Table) -> Result<RunConfig> {
    let mut train = toml::Table::try_from(&base.train)?;
    for (k, v) in keys {
        train.insert(k.clone(), v.clone());
    }
    let mut config = base.clone();
    config.train = toml::Value::Table(train).try_into()?;
    Ok(config)
}

/// The variant's PETL spec on the base model's family (`None` when the family has no such
/// variant: validation then says so).
fn spec(family: ModelFamily, variant: Variant) -> Option<PetlConfig> {
    match family {
        ModelFamily::Encoder => propetl_models::roberta::spec(variant).ok(),
        ModelFamily::TextToText => propetl_models::t5::spec(variant).ok(),
    }
}

/// Whether an override key means something for a variant: `keep` and `combine` need masks,
/// size keys the method's own.
fn applies(spec: &PetlConfig, key: &str) -> bool {
    match key {
        "keep" | "combine" => spec.is_masked(),
        k => spec.method.kind().options().contains(&k),
    }
}

/// Every combination of one value per key, the last key varying fastest.
fn product<'a>(keys: &[&'a (String, Vec<toml::Value>)]) -> Vec<Vec<(&'a str, &'a toml::Value)>> {
    let mut out: Vec<Vec<(&str, &toml::Value)>> = vec![Vec::new()];
    for (key, values) in keys {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((key.as_str(), v));
                    p
                })
            })
            .collect();
    }
    out
}

/// A value as it appears in names and tables: `0.1`, `1`, `8`, `or`.
pub fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(f) => format!("{f}"),
        other => other.to_string(),
    }
}

fn group_name(variant: Variant, overrides: &[(String, toml::Value)]) -> String {
    let mut name = variant.name().to_string();
    for (k, v) in overrides {
        let text: String = value_text(v)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let _ = write!(name, "-{k}{text}");
    }
    name
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The run directory's name under the sweep folder (`pro_adapter-keep0.1-seed42`).
    pub name: String,
    /// The cell's group: its name without the seed (`pro_adapter-keep0.1`).
    pub group: String,
    /// Variant.
    pub variant: Variant,
    /// Seed (`train.seed`).
    pub seed: u64,
    /// The grid's override values that apply to this variant, in canonical key order.
    pub overrides: Vec<(String, toml::Value)>,
    /// The complete run configuration.
    pub config: RunConfig,
}

impl Cell {
    /// `keep=0.1, r=8` (empty without overrides).
    pub fn overrides_text(&self) -> String {
        overrides_text(&self.overrides)
    }
}

fn overrides_text(o: &[(String, toml::Value)]) -> String {
    o.iter()
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a sweep does with a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellAction {
    /// Its run directory holds a complete report: kept as it is.
    Skip,
    /// A new run.
    Run,
    /// Half done with a checkpoint: continued from it.
    Resume,
    /// Half done without a checkpoint (or `--overwrite`): run again from scratch.
    Redo,
}

impl CellAction {
    /// `skip`, `run`, `resume`, `redo`.
    pub fn name(&self) -> &'static str {
        match self {
            CellAction::Skip => "skip",
            CellAction::Run => "run",
            CellAction::Resume => "resume",
            CellAction::Redo => "redo",
        }
    }
}

/// How to run a sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOptions {
    /// Run every cell again, complete ones included (each run directory is replaced only when
    /// its new run has finished).
    pub overwrite: bool,
    /// Test hook: the cell of this name fails right after the checkpoint of this epoch.
    #[doc(hidden)]
    pub fail_cell_after_epoch: Option<(String, usize)>,
}

/// Progress of a sweep.
pub trait SweepObserver {
    /// The cells and what will be done with each, before the first runs.
    fn on_plan(&mut self, cells: &[Cell], actions: &[CellAction]) {
        let _ = (cells, actions);
    }
    /// Cell `index` starts (not called for skipped cells).
    fn on_cell_start(&mut self, index: usize, cell: &Cell, action: CellAction) {
        let _ = (index, cell, action);
    }
    /// The observer of the cell's training.
    fn train_observer(&mut self) -> &mut dyn TrainObserver;
    /// Cell `index` ended (skipped cells included): its report, or why it failed.
    fn on_cell_end(
        &mut self,
        index: usize,
        cell: &Cell,
        result: Result<&RunReport, &anyhow::Error>,
    ) {
        let _ = (index, cell, result);
    }
}

/// A [`SweepObserver`] that shows nothing.
pub struct SilentSweep(crate::train::Silent);

impl Default for SilentSweep {
    fn default() -> Self {
        Self(crate::train::Silent)
    }
}

impl SweepObserver for SilentSweep {
    fn train_observer(&mut self) -> &mut dyn TrainObserver {
        &mut self.0
    }
}

/// The complete report of a run directory, if it has one.
fn complete_report(dir: &Path) -> Option<RunReport> {
    let text = std::fs::read_to_string(dir.join("report.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Configurations compared without the display-only `train.progress`.
fn same_config(a: &RunConfig, b: &RunConfig) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    a.train.progress = false;
    b.train.progress = false;
    a == b
}

/// What [`run_sweep`] would do with each cell of `out` (after checking that existing run
/// directories were written with the cells' configurations).
pub fn plan(cells: &[Cell], out: &Path, options: &SweepOptions) -> Result<Vec<CellAction>> {
    if out.exists() && !out.is_dir() {
        bail!("{} exists and is not a directory", out.display());
    }
    let mut actions = Vec::new();
    for cell in cells {
        let dir = out.join(&cell.name);
        let action = if !dir.exists() {
            CellAction::Run
        } else if !dir.is_dir() {
            bail!("{} exists and is not a directory", dir.display());
        } else if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none()) {
            CellAction::Run
        } else if options.overwrite {
            CellAction::Redo
        } else {
            let written = RunConfig::from_toml_file(&dir.join("config.toml")).ok();
            match written {
                Some(w) if !same_config(&w, &cell.config) => bail!(
                    "{} was run with another configuration than the sweep's cell {}: pass --overwrite to run the sweep's, or another --out",
                    dir.display(),
                    cell.name
                ),
                _ => {}
            }
            if complete_report(&dir).is_some() {
                CellAction::Skip
            } else if written.is_some() && dir.join(CHECKPOINT_FILE).exists() {
                CellAction::Resume
            } else {
                CellAction::Redo
            }
        };
        actions.push(action);
    }
    Ok(actions)
}

/// What a sweep did.
#[derive(Debug)]
pub struct SweepOutcome {
    /// The cells, in order.
    pub cells: Vec<Cell>,
    /// What was done with each.
    pub actions: Vec<CellAction>,
    /// Each cell's report (`None`: it failed).
    pub reports: Vec<Option<RunReport>>,
    /// Failed cells and their errors.
    pub failed: Vec<(String, String)>,
    /// The summary (also in `summary.json` / `summary.csv`).
    pub summary: Summary,
}

/// Run a sweep into the folder `out`: validate every cell, copy the sweep file (`text`) to
/// `out/sweep.toml`, run the cells (skipping complete ones, resuming half-done ones), and
/// write the summary. A failing cell does not stop the sweep; the outcome lists it (and the
/// summary leaves it out).
pub fn run_sweep(
    config: &SweepConfig,
    text: &str,
    out: &Path,
    options: &SweepOptions,
    observer: &mut dyn SweepObserver,
) -> Result<SweepOutcome> {
    let cells = config.cells()?;
    let actions = plan(&cells, out, options)?;
    if let Some((name, _)) = &options.fail_cell_after_epoch {
        if !cells.iter().any(|c| &c.name == name) {
            bail!("no sweep cell {name}");
        }
    }
    // everything is valid: now write
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    atomic_write(&out.join(SWEEP_FILE), text.as_bytes())?;
    observer.on_plan(&cells, &actions);
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for (i, (cell, &action)) in cells.iter().zip(&actions).enumerate() {
        let dir = out.join(&cell.name);
        let run_options = RunOptions {
            overwrite: action == CellAction::Redo,
            fail_after_epoch: options
                .fail_cell_after_epoch
                .as_ref()
                .filter(|(n, _)| *n == cell.name)
                .map(|(_, e)| *e),
        };
        let result = match action {
            CellAction::Skip => complete_report(&dir).context("report.json vanished"),
            CellAction::Resume => {
                observer.on_cell_start(i, cell, action);
                run::resume_with(&dir, run_options, observer.train_observer())
            }
            CellAction::Run | CellAction::Redo => {
                observer.on_cell_start(i, cell, action);
                run::run_with(&cell.config, &dir, run_options, observer.train_observer())
            }
        }
        .with_context(|| format!("sweep cell {}", cell.name));
        observer.on_cell_end(i, cell, result.as_ref());
        match result {
            Ok(r) => reports.push(Some(r)),
            Err(e) => {
                failed.push((cell.name.clone(), format!("{e:#}")));
                reports.push(None);
            }
        }
    }
    let summary = summarize(&config.base, &cells, &reports);
    write_summary(out, &summary)?;
    Ok(SweepOutcome {
        cells,
        actions,
        reports,
        failed,
        summary,
    })
}

/// Mean and sample standard deviation (n − 1; `None` for fewer than two values) of a list.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// Mean (`null`: not a number, e.g. a correlation of constant predictions).
    #[serde(with = "nan_null")]
    pub mean: f64,
    /// Sample standard deviation (`null` with one value).
    #[serde(with = "nan_null")]
    pub std: f64,
}

mod nan_null {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

impl MeanStd {
    /// Of `values` (NaN propagates; std NaN for fewer than two values).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        let mean = if n == 0 {
            f64::NAN
        } else {
            values.iter().sum::<f64>() / n as f64
        };
        let std = if n < 2 {
            f64::NAN
        } else {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        Self { mean, std }
    }
}

/// Storage of a group's trained task (the same for all its seeds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupStorage {
    /// Float32-equivalents (prototype floats + mask bits / 32).
    pub float32_equivalents: f64,
    /// Of the frozen backbone's parameters, in %.
    pub percent_of_backbone: f64,
    /// Exact payload bytes.
    pub payload_bytes: usize,
    /// Float32-equivalents over those of the unshared baseline of the same method and sizes
    /// (from the storage report; `null` where undefined).
    #[serde(with = "nan_null")]
    pub ratio_to_baseline: f64,
}

/// One row of the summary: a variant with its override values, over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// `pro_adapter-keep0.1`.
    pub group: String,
    /// Variant.
    pub variant: Variant,
    /// The grid's override values (`{"keep": 0.1}`).
    pub overrides: BTreeMap<String, toml::Value>,
    /// Cells with a report.
    pub n: usize,
    /// Their seeds.
    pub seeds: Vec<u64>,
    /// Cells of the group without a report (failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// The test selection metric of each seed (in `seeds` order).
    #[serde(with = "nan_null_vec")]
    pub selection_values: Vec<f64>,
    /// Test selection metric over seeds.
    pub selection: MeanStd,
    /// Every reported test metric over seeds (`accuracy`, `f1`, …).
    pub test: BTreeMap<String, MeanStd>,
    /// Storage (`None` without any report).
    pub storage: Option<GroupStorage>,
    /// The group of the unshared baseline of this (masked) variant with the same sizes, when
    /// the sweep has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Mean test selection metric minus the baseline's (points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_minus_baseline: Option<f64>,
    /// Float32-equivalents over the baseline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_over_baseline: Option<f64>,
}

mod nan_null_vec {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| x.is_finite().then_some(*x)))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?
            .into_iter()
            .map(|x| x.unwrap_or(f64::NAN))
            .collect())
    }
}

/// The summary of a sweep (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The task.
    pub task: run::Task,
    /// What the selection metric is: `accuracy`, or `mean of accuracy, f1`.
    pub selection_metric: String,
    /// One row per group, in grid order.
    pub groups: Vec<GroupSummary>,
}

/// The summary of cells and their reports (`None`: no report).
pub fn summarize(base: &RunConfig, cells: &[Cell], reports: &[Option<RunReport>]) -> Summary {
    let mut groups: Vec<GroupSummary> = Vec::new();
    let mut members: Vec<Vec<&RunReport>> = Vec::new();
    let mut selection_metric = None;
    for (cell, report) in cells.iter().zip(reports) {
        let i = match groups.iter().position(|g| g.group == cell.group) {
            Some(i) => i,
            None => {
                groups.push(GroupSummary {
                    group: cell.group.clone(),
                    variant: cell.variant,
                    overrides: cell.overrides.iter().cloned().collect(),
                    n: 0,
                    seeds: Vec::new(),
                    missing: Vec::new(),
                    selection_values: Vec::new(),
                    selection: MeanStd::of(&[]),
                    test: BTreeMap::new(),
                    storage: None,
                    baseline: None,
                    selection_minus_baseline: None,
                    storage_over_baseline: None,
                });
                members.push(Vec::new());
                groups.len() - 1
            }
        };
        match report {
            Some(r) => {
                groups[i].seeds.push(cell.seed);
                members[i].push(r);
                if selection_metric.is_none() {
                    let names: Vec<&str> = r.test.numbers().iter().map(|(k, _)| *k).collect();
                    selection_metric = Some(match names.as_slice() {
                        [one] => one.to_string(),
                        many => format!("mean of {}", many.join(", ")),
                    });
                }
            }
            None => groups[i].missing.push(cell.name.clone()),
        }
    }
    for (g, reports) in groups.iter_mut().zip(&members) {
        g.n = reports.len();
        g.selection_values = reports.iter().map(|r| r.test.selection).collect();
        g.selection = MeanStd::of(&g.selection_values);
        let mut by_metric: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in reports {
            for (k, v) in r.test.numbers() {
                by_metric.entry(k.to_string()).or_default().push(v);
            }
        }
        g.test = by_metric
            .into_iter()
            .map(|(k, v)| (k, MeanStd::of(&v)))
            .collect();
        g.storage = reports.first().map(|r| GroupStorage {
            float32_equivalents: r.storage.float32_equivalents,
            percent_of_backbone: r.storage.percent_of_backbone,
            payload_bytes: r.storage.payload_bytes,
            ratio_to_baseline: r.storage.ratio_to_baseline,
        });
    }
    // the unshared baseline of a masked variant: `pro_x` → `x`, with the same size overrides
    let snapshot = groups.clone();
    for g in groups.iter_mut() {
        let Some(base_name) = g.variant.name().strip_prefix("pro_") else {
            continue;
        };
        let sizes = |o: &BTreeMap<String, toml::Value>| -> BTreeMap<String, toml::Value> {
            o.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "keep" | "combine"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let Some(b) = snapshot
            .iter()
            .find(|b| b.variant.name() == base_name && sizes(&b.overrides) == sizes(&g.overrides))
        else {
            continue;
        };
        g.baseline = Some(b.group.clone());
        if b.n > 0 && g.n > 0 {
            g.selection_minus_baseline = Some(g.selection.mean - b.selection.mean);
        }
        if let (Some(s), Some(bs)) = (g.storage, b.storage) {
            g.storage_over_baseline = Some(s.float32_equivalents / bs.float32_equivalents);
        }
    }
    Summary {
        task: base.task,
        selection_metric: selection_metric.unwrap_or_else(|| "selection".into()),
        groups,
    }
}

/// The metric names of a summary's columns, in the metrics' usual order.
pub fn metric_columns(summary: &Summary) -> Vec<String> {
    let order = ["accuracy", "f1", "mcc", "pearson", "spearman"];
    let mut names: Vec<String> = summary
        .groups
        .iter()
        .flat_map(|g| g.test.keys().cloned())
        .collect();
    names.sort_by_key(|n| (order.iter().position(|o| o == n), n.clone()));
    names.dedup();
    names
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `summary.csv`: one row per group; empty fields where a value is undefined.
pub fn summary_csv(summary: &Summary) -> String {
    let metrics = metric_columns(summary);
    let mut header: Vec<String> = [
        "group",
        "variant",
        "overrides",
        "n",
        "seeds",
        "selection_mean",
        "selection_std",
    ]
    .map(String::from)
    .to_vec();
    for m in &metrics {
        header.push(format!("test_{m}_mean"));
        header.push(format!("test_{m}_std"));
    }
    header.extend(
        [
            "float32_equivalents",
            "percent_of_backbone",
            "payload_bytes",
            "ratio_to_baseline",
            "baseline",
            "selection_minus_baseline",
            "storage_over_baseline",
        ]
        .map(String::from),
    );
    let mut out = header.join(",");
    out.push('\n');
    for g in &summary.groups {
        let overrides: Vec<(String, toml::Value)> = g
            .overrides
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut row = vec![
            g.group.clone(),
            g.variant.name().to_string(),
            overrides_text(&overrides).replace(", ", " "),
            g.n.to_string(),
            g.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            num(g.selection.mean),
            num(g.selection.std),
        ];
        for m in &metrics {
            let ms = g.test.get(m);
            row.push(ms.map(|s| num(s.mean)).unwrap_or_default());
            row.push(ms.map(|s| num(s.std)).unwrap_or_default());
        }
        match g.storage {
            Some(s) => row.extend([
                num(s.float32_equivalents),
                num(s.percent_of_backbone),
                s.payload_bytes.to_string(),
                num(s.ratio_to_baseline),
            ]),
            None => row.extend(std::iter::repeat_n(String::new(), 4)),
        }
        row.push(g.baseline.clone().unwrap_or_default());
        row.push(g.selection_minus_baseline.map(num).unwrap_or_default());
        row.push(g.storage_over_baseline.map(num).unwrap_or_default());
        out.push_str(
            &row.iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

/// Write `summary.json` and `summary.csv` into `out`, each atomically.
pub fn write_summary(out: &Path, summary: &Summary) -> Result<()> {
    atomic_write(
        &out.join(SUMMARY_JSON),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    atomic_write(&out.join(SUMMARY_CSV), summary_csv(summary).as_bytes())?;
    Ok(())
}

/// The default sweep folder of a sweep file: `runs/sweeps/<file stem>`.
pub fn default_out(sweep_file: &Path) -> PathBuf {
    let stem = sweep_file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "sweep".into());
    PathBuf::from("runs/sweeps").join(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "task = \"sst2\"\ndata_dir = \"tests/fixtures/glue\"\n[train]\nepochs = 1\n";

    #[test]
    fn grid_names_and_dropped_keys() {
        let text = format!(
            "{BASE}[petl]\nkeep = 0.3\n[sweep]\nvariants = [\"pro_adapter\", \"adapter\"]\nseeds = [1, 2]\n[sweep.petl]\nkeep = [0.1, 1.0]\nreduction = [16]\n"
        );
        let cfg = SweepConfig::from_toml_str(&text, "t").unwrap();
        let cells = cfg.cells().unwrap();
        let names: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "pro_adapter-keep0.1-reduction16-seed1",
                "pro_adapter-keep0.1-reduction16-seed2",
                "pro_adapter-keep1-reduction16-seed1",
                "pro_adapter-keep1-reduction16-seed2",
                "adapter-reduction16-seed1",
                "adapter-reduction16-seed2",
            ]
        );
        assert_eq!(cells[0].config.petl.keep, Some(0.1));
        assert_eq!(cells[0].config.train.seed, 1);
        assert_eq!(cells[4].config.petl.keep, None);
        assert_eq!(cells[4].config.petl.reduction, Some(16));
    }

    #[test]
    fn full_fine_tuning_takes_no_petl_key_and_runs_once_per_seed() {
        let text = format!(
            "{BASE}[petl]\nkeep = 0.3\n[sweep]\nvariants = [\"pro_adapter\", \"full\"]\nseeds = [1, 2]\n[sweep.petl]\nkeep = [0.1, 1.0]\n"
        );
        let cells = SweepConfig::from_toml_str(&text, "t")
            .unwrap()
            .cells()
            .unwrap();
        let names: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "pro_adapter-keep0.1-seed1",
                "pro_adapter-keep0.1-seed2",
                "pro_adapter-keep1-seed1",
                "pro_adapter-keep1-seed2",
                "full-seed1",
                "full-seed2",
            ]
        );
        assert_eq!(cells[4].config.petl, NumericOverrides::default());
        // `[sweep.train.full]` sets full fine-tuning's own learning rate, nobody else's
        let text = "task = \"sst2\"\ndata_dir = \"tests/fixtures/glue\"\n[train]\nepochs = 1\nlr = 1e-3\n[sweep]\nvariants = [\"pro_adapter\", \"full\"]\n[sweep.train.full]\nlr = 5e-5\n";
        let cells = SweepConfig::from_toml_str(text, "t")
            .unwrap()
            .cells()
            .unwrap();
        assert_eq!(cells[0].config.train.lr, 1e-3);
        assert_eq!(cells[1].config.train.lr, 5e-5);
        assert_eq!(cells[1].config.train.epochs, 1);
        let bad = |extra: &str| {
            let text = format!("{BASE}[sweep]\nvariants = [\"pro_adapter\", \"full\"]\n{extra}");
            format!("{:#}", SweepConfig::from_toml_str(&text, "t").unwrap_err())
        };
        let e = bad("[sweep.train.lora]\nlr = 1e-4\n");
        assert!(e.contains("does not run"), "{e}");
        let e = bad("[sweep.train.full]\nlrr = 1e-4\n");
        assert!(e.contains("lrr"), "{e}");
        let e = bad("[sweep.train.fulll]\nlr = 1e-4\n");
        assert!(e.contains("fulll"), "{e}");
        // a key that only `full` would get applies to none
        let text = format!("{BASE}[sweep]\nvariants = [\"full\"]\n[sweep.petl]\nkeep = [0.5]\n");
        let e = SweepConfig::from_toml_str(&text, "t")
            .unwrap()
            .cells()
            .unwrap_err()
            .to_string();
        assert!(e.contains("applies to none"), "{e}");
    }

    #[test]
    fn bad_grids_are_refused() {
        let bad = |grid: &str| {
            let text = format!("{BASE}[sweep]\n{grid}");
            SweepConfig::from_toml_str(&text, "t")
                .and_then(|c| c.cells())
                .unwrap_err()
                .to_string()
        };
        let e = bad("variants = [\"pro_adaptr\"]\nseeds = [1]\n");
        assert!(e.contains("invalid [sweep]"), "{e}");
        let e = format!(
            "{:#}",
            SweepConfig::from_toml_str(
                &format!(
                    "{BASE}[sweep]\nvariants = [\"pro_adapter\"]\n[sweep.petl]\nkeep = [0.0]\n"
                ),
                "t"
            )
            .unwrap()
            .cells()
            .unwrap_err()
        );
        assert!(
            e.contains("pro_adapter-keep0-seed42") && e.contains("keep"),
            "{e}"
        );
        let e = bad("variants = [\"adapter\"]\n[sweep.petl]\nr = [4]\n");
        assert!(e.contains("applies to none"), "{e}");
        let e = bad("variants = [\"adapter\"]\n[sweep.petl]\nrank = [4]\n");
        assert!(e.contains("unknown key `rank`"), "{e}");
        let e = bad("variants = [\"adapter\"]\nseeds = [1, 1]\n");
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn mean_and_sample_std() {
        let s = MeanStd::of(&[1.0, 2.0, 4.0]);
        assert!((s.mean - 7.0 / 3.0).abs() < 1e-12);
        let var = ((1.0f64 - 7.0 / 3.0).powi(2)
            + (2.0f64 - 7.0 / 3.0).powi(2)
            + (4.0f64 - 7.0 / 3.0).powi(2))
            / 2.0;
        assert!((s.std - var.sqrt()).abs() < 1e-12);
        assert!(MeanStd::of(&[3.0]).std.is_nan());
    }
}
