//! A complete run: resolve the configuration, load model and data, train with evaluation every
//! epoch, keep the best epoch's PETL state, evaluate it on the test split, and write the run
//! directory:
//!
//! | file | content |
//! |---|---|
//! | `config.toml` | the resolved configuration |
//! | `metrics.jsonl` | one JSON object per epoch (losses, eval metrics, time) |
//! | `best.safetensors` | the best epoch's PETL state + head (runtime save format) |
//! | `report.json` | final metrics (eval of the best epoch, test), storage report, wall time |

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use propetl_models::roberta::{self, Checkpoint};
use propetl_runtime::{
    io::atomic_write, DeviceSpec, Example, NumericOverrides, PetlRng, StorageReport, TaskKind,
    TaskModel, Variant,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::TrainCheckpoint;
use crate::data::{self, CustomData, GlueTask, Splits, TextExample};
use crate::metrics::Metrics;
use crate::predict::TaskInfo;
use crate::text_to_text::{TaskAnswers, ANSWERS_FILE};
use crate::train::{
    evaluate, set_trainable_values, train_from, train_multi_task_from, trainable_values, EpochLog,
    EvalSettings, TaskSplit, TrainConfig, TrainData, TrainObserver,
};

/// What a run trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Task {
    /// A GLUE task from a GLUE folder (`<dir>/<TASK>/train.tsv`, …).
    Glue(GlueTask),
    /// Rotten Tomatoes sentences, fresh/rotten (classification).
    RottenTomatoes,
    /// VADER movie snippets with human sentiment scores (regression).
    VaderMovies,
    /// A JSONL/CSV dataset described by the `[custom]` section.
    Custom,
    /// Multi-task GLUE (method page §5): the tasks of `tasks` (default: all eight) trained
    /// together, one task mask each; needs a text-to-text (T5) model.
    GlueMulti,
}

impl Task {
    /// The name used in configs and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Glue(t) => t.name(),
            Task::RottenTomatoes => "rotten-tomatoes",
            Task::VaderMovies => "vader-movies",
            Task::Custom => "custom",
            Task::GlueMulti => "glue",
        }
    }

    /// The GLUE task, if this is one (it picks the metrics).
    pub fn glue(&self) -> Option<GlueTask> {
        match self {
            Task::Glue(t) => Some(*t),
            _ => None,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "rotten-tomatoes" => Task::RottenTomatoes,
            "vader-movies" => Task::VaderMovies,
            "custom" => Task::Custom,
            "glue" => Task::GlueMulti,
            other => Task::Glue(GlueTask::parse(other).map_err(|_| {
                anyhow::anyhow!(
                    "unknown task `{other}` (a GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte; glue (multi-task, T5); or rotten-tomatoes, vader-movies, custom)"
                )
            })?),
        })
    }
}

impl TryFrom<String> for Task {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Task> for String {
    fn from(t: Task) -> String {
        t.name().to_string()
    }
}

/// How GLUE data is split into train / eval / test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Method page §4, seeded: small tasks halve validation into eval/test; large ones hold
    /// 1000 training examples out as eval and test on validation.
    #[default]
    Reference,
    /// Train on train, evaluate and test on validation.
    Plain,
}

/// A complete run configuration (`config.toml` of a run directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// What to train on.
    pub task: Task,
    /// `pro_adapter`, `pro_lora`, `pro_prefix`, `adapter`, `lora` or `prefix`.
    pub variant: Variant,
    /// Hugging Face model folder, or a Hub id (`FacebookAI/roberta-base`) resolved through
    /// the Hugging Face cache ([`crate::hub`]); absent: the built-in tiny RoBERTa (random
    /// weights). `model = "…"` in TOML is the same key.
    #[serde(default, alias = "model")]
    pub model_dir: Option<PathBuf>,
    /// GLUE folder (`<dir>/<TASK>/train.tsv`, …) or the folder of the sentiment files.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// How GLUE data is split.
    #[serde(default)]
    pub split: Split,
    /// The device to train on (`cpu`, `cuda[:N]`, `metal`).
    #[serde(default)]
    pub device: DeviceSpec,
    /// Skip (and count) malformed rows instead of failing.
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// Use at most this many training examples (first of a seeded shuffle).
    #[serde(default)]
    pub max_train_examples: Option<usize>,
    /// Use at most this many eval and test examples each.
    #[serde(default)]
    pub max_eval_examples: Option<usize>,
    /// Optimization.
    #[serde(default)]
    pub train: TrainConfig,
    /// Take the epoch count of the paper's recipe for GLUE tasks (20 small, 10 large).
    #[serde(default)]
    pub epochs_from_task: bool,
    /// Run-time overrides of the variant's numeric hyper-parameters (keep, sizes).
    #[serde(default)]
    pub petl: NumericOverrides,
    /// A custom JSONL/CSV dataset (task = "custom").
    #[serde(default)]
    pub custom: Option<CustomData>,
    /// The tasks of a multi-task run (`task = "glue"`; empty: all eight GLUE tasks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<GlueTask>,
    /// Multi-task runs: each batch is one task, drawn with probability ∝ (n_i/N)^(1/T) at
    /// this temperature (method page §5: 10, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_temperature: Option<f64>,
}

/// What kind of backbone a run's model is (from its `config.json` `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// An encoder with a classification/regression head (RoBERTa, BERT).
    Encoder,
    /// An encoder–decoder that answers in text (T5): labels are target strings.
    TextToText,
}

impl RunConfig {
    /// A configuration with defaults for `task` and `variant`.
    pub fn new(task: Task, variant: Variant) -> Self {
        Self {
            task,
            variant,
            model_dir: None,
            data_dir: None,
            split: Split::default(),
            device: DeviceSpec::default(),
            skip_bad_rows: false,
            max_train_examples: None,
            max_eval_examples: None,
            train: TrainConfig::default(),
            epochs_from_task: false,
            petl: NumericOverrides::default(),
            custom: None,
            tasks: Vec::new(),
            sampling_temperature: None,
        }
    }

    /// The model folder, a Hub id resolved through the Hugging Face cache; `None`: the
    /// built-in tiny RoBERTa.
    pub fn resolved_model_dir(&self) -> Result<Option<PathBuf>> {
        self.model_dir
            .as_ref()
            .map(crate::hub::resolve_model)
            .transpose()
    }

    /// The backbone family: `model_type = "t5"` in the model's `config.json` is
    /// [`ModelFamily::TextToText`], anything else (or no model) an encoder, whose loader
    /// reports what it cannot read.
    pub fn model_family(&self) -> Result<ModelFamily> {
        let Some(dir) = self.resolved_model_dir()? else {
            return Ok(ModelFamily::Encoder);
        };
        let model_type = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v["model_type"].as_str().map(str::to_owned));
        Ok(match model_type.as_deref() {
            Some("t5") => ModelFamily::TextToText,
            _ => ModelFamily::Encoder,
        })
    }

    /// The tasks this run trains: `task`, or for `task = "glue"` the `tasks` list (default:
    /// all eight GLUE tasks).
    pub fn run_tasks(&self) -> Vec<Task> {
        match (self.task, self.tasks.is_empty()) {
            (Task::GlueMulti, true) => GlueTask::ALL.into_iter().map(Task::Glue).collect(),
            (Task::GlueMulti, false) => self.tasks.iter().copied().map(Task::Glue).collect(),
            (task, _) => vec![task],
        }
    }

    /// Check every value before any work: training hyper-parameters, example limits, the
    /// PETL overrides against the variant's rules. Errors name the key and the allowed range.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        for (key, v) in [
            ("max_train_examples", self.max_train_examples),
            ("max_eval_examples", self.max_eval_examples),
        ] {
            if v == Some(0) {
                bail!("{key} must be at least 1 when given, got 0");
            }
        }
        if self.task == Task::Custom && self.custom.is_none() {
            bail!("task = \"custom\" needs a [custom] section");
        }
        if self.task != Task::Custom && self.custom.is_some() {
            bail!(
                "a [custom] section needs task = \"custom\" (task is `{}`)",
                self.task
            );
        }
        if !self.tasks.is_empty() && self.task != Task::GlueMulti {
            bail!(
                "`tasks` lists the tasks of a multi-task run and needs task = \"glue\" (task is `{}`)",
                self.task
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(t) = self.tasks.iter().find(|t| !seen.insert(**t)) {
            bail!("`tasks` lists `{}` twice", t.name());
        }
        if let Some(t) = self.sampling_temperature {
            if !(t.is_finite() && t > 0.0) {
                bail!("sampling_temperature must be a finite number > 0, got {t}");
            }
            if self.task != Task::GlueMulti {
                bail!("sampling_temperature applies to multi-task runs (task = \"glue\") only");
            }
        }
        let family = self.model_family()?;
        if self.task == Task::GlueMulti && family != ModelFamily::TextToText {
            bail!("task = \"glue\" trains the GLUE tasks together as text-to-text and needs a T5 model (model_dir with model_type \"t5\"); for an encoder train one task at a time");
        }
        if self.variant.is_full() {
            if family != ModelFamily::Encoder {
                bail!("variant `full` (full fine-tuning) is available for encoder models (RoBERTa/BERT); T5 trains with its PETL variants");
            }
            if let Some(key) = self.petl.given().first() {
                bail!("[petl] {key} does not apply to variant `full`: full fine-tuning has no PETL module");
            }
            return Ok(());
        }
        let spec = match family {
            ModelFamily::Encoder => roberta::spec(self.variant),
            ModelFamily::TextToText => {
                propetl_models::t5::spec_for(self.variant, self.run_tasks().len())
            }
        };
        spec.and_then(|spec| Ok(self.petl.apply(&spec)?))
            .with_context(|| format!("[petl] overrides of variant `{}`", self.variant))?;
        Ok(())
    }

    /// Parse a TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{}: invalid run configuration", path.display()))
    }
}

/// The final report of a run (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// Task.
    pub task: Task,
    /// Variant.
    pub variant: Variant,
    /// Best epoch (1-based).
    pub best_epoch: usize,
    /// Eval metrics of the best epoch.
    pub eval: Metrics,
    /// Test metrics of the best state.
    pub test: Metrics,
    /// Storage of the trained task.
    pub storage: StorageReport,
    /// Examples per split.
    pub sizes: SplitSizes,
    /// Malformed rows skipped.
    pub skipped_rows: usize,
    /// Wall time of the whole run.
    pub wall_seconds: f64,
    /// Per-epoch logs.
    pub epochs: Vec<EpochLog>,
    /// Multi-task runs: each task's eval (best epoch) and test metrics and its examples per
    /// split; `eval`/`test` above then hold the mean of the tasks' selection metrics.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, TaskScores>,
    /// Multi-task runs over all eight GLUE tasks: the mean of the 11 test numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glue_average: Option<f64>,
}

/// One task's scores in a multi-task run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    /// Eval metrics of the best epoch.
    pub eval: Metrics,
    /// Test metrics of the best state.
    pub test: Metrics,
    /// Examples per split.
    pub sizes: SplitSizes,
}

/// Examples per split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSizes {
    /// Training examples.
    pub train: usize,
    /// Eval (model selection) examples.
    pub eval: usize,
    /// Test examples.
    pub test: usize,
}

/// The built-in tiny RoBERTa's `config.json`.
pub(crate) const BUILTIN_CONFIG: &str = include_str!("../tests/fixtures/tiny-roberta/config.json");
/// The built-in tiny RoBERTa's `model.safetensors`.
const BUILTIN_WEIGHTS: &[u8] = include_bytes!("../tests/fixtures/tiny-roberta/model.safetensors");
/// The built-in tiny RoBERTa's `tokenizer.json`.
pub(crate) const BUILTIN_TOKENIZER: &[u8] =
    include_bytes!("../tests/fixtures/tiny-roberta/tokenizer.json");

/// The built-in tiny RoBERTa: the tiny checkpoint of the parity fixtures (3 layers, hidden 64,
/// random weights) with its byte-level BPE tokenizer, embedded in the binary.
pub fn builtin_tiny(device: &Device) -> Result<Checkpoint> {
    Ok(Checkpoint::from_bytes(
        BUILTIN_CONFIG,
        BUILTIN_WEIGHTS.to_vec(),
        Some(BUILTIN_TOKENIZER.to_vec()),
        device,
    )?)
}

pub(crate) struct TaskData {
    pub(crate) splits: Splits,
    pub(crate) kind: TaskKind,
    pub(crate) skipped: usize,
}

/// Load, split and check one task's data (`task` is `cfg.task` or one task of a multi-task
/// run); `max_train_examples`/`max_eval_examples` applied.
fn load_task(cfg: &RunConfig, task: Task) -> Result<TaskData> {
    let data_dir = || {
        cfg.data_dir
            .clone()
            .with_context(|| format!("task `{task}` needs --data-dir"))
    };
    let kind_of = |num_labels: usize| match num_labels {
        1 => TaskKind::Regression,
        n => TaskKind::Classification { num_labels: n },
    };
    let seed = cfg.train.seed;
    let (mut splits, kind) = match task {
        Task::GlueMulti => bail!("task = \"glue\" is loaded one GLUE task at a time"),
        Task::RottenTomatoes => {
            let path = data_dir()?.join("rotten_tomatoes_corpus_full.csv");
            let ds = data::load_rotten_tomatoes_checked(&path, cfg.skip_bad_rows)?;
            let mut splits =
                data::hash_split(ds.examples, 42).with_source(path.display().to_string());
            splits.skipped = ds.skipped;
            (splits, kind_of(2))
        }
        Task::VaderMovies => {
            let path = data_dir()?.join("movieReviewSnippets_GroundTruth.txt");
            let ds = data::load_vader_movies_checked(&path, cfg.skip_bad_rows)?;
            let mut splits =
                data::hash_split(ds.examples, 42).with_source(path.display().to_string());
            splits.skipped = ds.skipped;
            (splits, TaskKind::Regression)
        }
        Task::Custom => {
            let c = cfg
                .custom
                .as_ref()
                .context("task = \"custom\" needs a [custom] section")?;
            let splits = c.splits(seed, cfg.skip_bad_rows)?;
            let kind = kind_of(c.num_labels(&splits.train));
            (splits, kind)
        }
        Task::Glue(t) => {
            let dir = data_dir()?;
            let plain = cfg.split == Split::Plain;
            let splits = t.splits(&dir, 42, plain, cfg.skip_bad_rows)?;
            (splits, kind_of(t.num_labels()))
        }
    };
    // before any work: every split has examples, every label belongs to the task
    splits.validate()?;
    let (classes, regression) = match kind {
        TaskKind::Classification { num_labels } => (num_labels, false),
        TaskKind::Regression => (1, true),
    };
    data::check_labels(&splits, classes, regression)?;
    if let Some(n) = cfg.max_train_examples {
        PetlRng::seed(cfg.train.seed).shuffle(&mut splits.train);
        splits.train.truncate(n);
    }
    if let Some(n) = cfg.max_eval_examples {
        splits.eval.truncate(n);
        splits.test.truncate(n);
    }
    Ok(TaskData {
        skipped: splits.skipped,
        splits,
        kind,
    })
}

fn tokenize(
    tok: &propetl_models::tokenizer::EncoderTokenizer,
    xs: &[TextExample],
) -> Result<Vec<Example>> {
    xs.iter()
        .map(|e| {
            let ids = match &e.text_b {
                Some(b) => tok.encode_pair(&e.text_a, b)?,
                None => tok.encode(&e.text_a)?,
            };
            Ok(Example::new(ids, e.label))
        })
        .collect()
}

/// One task's tokenized splits.
pub struct TaskExamples {
    /// The task.
    pub task: Task,
    /// The PETL task whose masks its batches use (`default` for encoder runs, the task's
    /// name in text-to-text runs).
    pub petl_task: String,
    /// Classification or regression.
    pub kind: TaskKind,
    /// Training split.
    pub train: Vec<Example>,
    /// Eval (model selection) split.
    pub eval: Vec<Example>,
    /// Test split.
    pub test: Vec<Example>,
}

impl TaskExamples {
    /// How to evaluate this task.
    pub fn eval_settings<'a>(&'a self, cfg: &RunConfig) -> EvalSettings<'a> {
        EvalSettings {
            batch_size: cfg.train.batch_size,
            max_len: cfg.train.max_len,
            task: &self.petl_task,
            glue: self.task.glue(),
        }
    }

    fn sizes(&self) -> SplitSizes {
        SplitSizes {
            train: self.train.len(),
            eval: self.eval.len(),
            test: self.test.len(),
        }
    }
}

/// A model with everything a run needs.
pub struct Prepared {
    /// The model (every trainable tensor is reachable through it).
    pub model: Box<dyn TaskModel>,
    /// Every task's examples (one for single-task runs).
    pub tasks: Vec<TaskExamples>,
    /// Rows skipped.
    pub skipped: usize,
    /// Text-to-text runs: what each task answers (empty for encoder runs).
    pub answers: BTreeMap<String, TaskAnswers>,
}

/// Class names of a task in index order (empty for regression).
pub fn label_names(cfg: &RunConfig, task: Task, kind: TaskKind) -> Vec<String> {
    let TaskKind::Classification { num_labels } = kind else {
        return Vec::new();
    };
    let named: &[&str] = match task {
        Task::Glue(GlueTask::Cola) => &["unacceptable", "acceptable"],
        Task::Glue(GlueTask::Sst2) => &["negative", "positive"],
        Task::Glue(GlueTask::Mrpc) => &["not_equivalent", "equivalent"],
        Task::Glue(GlueTask::Qqp) => &["not_duplicate", "duplicate"],
        Task::Glue(GlueTask::Mnli) => &["entailment", "neutral", "contradiction"],
        Task::Glue(GlueTask::Qnli) | Task::Glue(GlueTask::Rte) => &["entailment", "not_entailment"],
        Task::RottenTomatoes => &["rotten", "fresh"],
        _ => &[],
    };
    if named.len() == num_labels {
        return named.iter().map(|s| s.to_string()).collect();
    }
    match cfg.custom.as_ref().and_then(|c| c.labels.clone()) {
        Some(names) if names.len() == num_labels => names,
        _ => (0..num_labels).map(|i| i.to_string()).collect(),
    }
}

/// A finished encoder run's backbone and model with its best state restored (for
/// prediction and export); `kind` is what the run predicts (`task.json`).
pub fn load_encoder_run(
    dir: &Path,
    cfg: &RunConfig,
    kind: TaskKind,
    dev: &Device,
) -> Result<(Checkpoint, Box<dyn TaskModel>)> {
    let best = dir.join(BEST_FILE);
    if !best.exists() {
        bail!(
            "{} has no {BEST_FILE} (no epoch finished): nothing to load",
            dir.display()
        );
    }
    let ckpt = match cfg.resolved_model_dir().with_context(|| {
        format!(
            "the model of run {} (`model_dir` in its config.toml)",
            dir.display()
        )
    })? {
        Some(d) => Checkpoint::open(&d, dev)
            .with_context(|| format!("opening the run's model folder {}", d.display()))?,
        None => builtin_tiny(dev)?,
    };
    let mut model = roberta::build(
        cfg.variant,
        &ckpt,
        kind,
        &cfg.petl,
        &VarMap::new(),
        &mut PetlRng::seed(cfg.train.seed),
    )?;
    model
        .restore(&best)
        .with_context(|| format!("loading {}", best.display()))?;
    Ok((ckpt, model))
}

/// The device of a configuration (CPU unless configured).
pub fn device(cfg: &RunConfig) -> Result<Device> {
    Ok(cfg.device.open()?)
}

/// Load model and data for a configuration: every value and every data row is checked, and
/// the model built, before anything is written.
pub fn prepare(cfg: &RunConfig) -> Result<Prepared> {
    cfg.validate()?;
    let dev = device(cfg)?;
    if cfg.model_family()? == ModelFamily::TextToText {
        let data = cfg
            .run_tasks()
            .into_iter()
            .map(|t| Ok((t, load_task(cfg, t)?)))
            .collect::<Result<Vec<_>>>()?;
        return crate::text_to_text::prepare(cfg, data, &dev);
    }
    let ckpt = match cfg.resolved_model_dir()? {
        Some(d) => Checkpoint::open(d, &dev)?,
        None => builtin_tiny(&dev)?,
    };
    let tok = ckpt.tokenizer()?;
    let data = load_task(cfg, cfg.task)?;
    let model = roberta::build(
        cfg.variant,
        &ckpt,
        data.kind,
        &cfg.petl,
        &VarMap::new(),
        &mut PetlRng::seed(cfg.train.seed),
    )?;
    Ok(Prepared {
        model,
        tasks: vec![TaskExamples {
            task: cfg.task,
            petl_task: "default".into(),
            kind: data.kind,
            train: tokenize(&tok, &data.splits.train)?,
            eval: tokenize(&tok, &data.splits.eval)?,
            test: tokenize(&tok, &data.splits.test)?,
        }],
        skipped: data.skipped,
        answers: BTreeMap::new(),
    })
}

/// Keeps the best epoch's state, appends each epoch to `metrics.jsonl`, writes training
/// checkpoints, then forwards to the caller's observer.
struct RunObserver<'a> {
    inner: &'a mut dyn TrainObserver,
    dir: PathBuf,
    best: Option<BestEpoch>,
    best_values: BTreeMap<String, Tensor>,
    /// Every epoch's log (multi-task runs write them; single-task runs keep them in the
    /// checkpoint).
    logs: Vec<EpochLog>,
    /// Test hook: fail right after this epoch's checkpoint (a crash, without a sleep or kill).
    fail_after_epoch: Option<usize>,
}

/// The best epoch so far (kept in the training checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BestEpoch {
    epoch: usize,
    metric: Option<f64>,
    eval: Metrics,
}

impl BestEpoch {
    /// NaN never beats a number; a number beats NaN; the first epoch beats nothing.
    fn is_beaten_by(best: Option<&BestEpoch>, metric: f64) -> bool {
        match best.map(|b| b.metric.unwrap_or(f64::NAN)) {
            None => true,
            Some(b) if b.is_nan() => !metric.is_nan(),
            Some(b) => metric > b,
        }
    }
}

impl TrainObserver for RunObserver<'_> {
    fn on_start(&mut self, total_steps: usize, epochs: usize) {
        self.inner.on_start(total_steps, epochs)
    }
    fn on_step(&mut self, epoch: usize, step: usize, loss: f64, tokens_per_s: f64) {
        self.inner.on_step(epoch, step, loss, tokens_per_s)
    }
    fn on_epoch(&mut self, model: &dyn TaskModel, log: &EpochLog) -> Result<()> {
        let metric = log.eval_metric();
        if BestEpoch::is_beaten_by(self.best.as_ref(), metric) {
            self.best = Some(BestEpoch {
                epoch: log.epoch,
                metric: metric.is_finite().then_some(metric),
                eval: log.eval.clone().unwrap_or_default(),
            });
            self.best_values = trainable_values(model)?;
        }
        self.logs.push(log.clone());
        self.inner.on_epoch(model, log)
    }
    fn wants_checkpoints(&self) -> bool {
        true
    }
    fn on_checkpoint(&mut self, model: &dyn TaskModel, mut ckpt: TrainCheckpoint) -> Result<()> {
        // the checkpoint first: it holds everything the other files are derived from
        ckpt.extra = serde_json::to_value(&self.best)?;
        ckpt.extra_tensors = self.best_values.clone();
        let epochs_done = ckpt.progress.epochs_done;
        let at_epoch_end = ckpt.progress.position == 0;
        let logs = ckpt.progress.logs.clone();
        let multi = ckpt.progress.multi_task.clone();
        ckpt.save(&self.dir.join(CHECKPOINT_FILE))?;
        if at_epoch_end {
            write_metrics(&self.dir, &logs)?;
            if let Some(multi) = &multi {
                write_task_metrics(&self.dir, &multi.logs)?;
            }
            if self.best.as_ref().is_some_and(|b| b.epoch == epochs_done) {
                model.save(&self.dir.join(BEST_FILE))?;
            }
            if self.fail_after_epoch == Some(epochs_done) {
                bail!("injected failure after epoch {epochs_done}");
            }
        }
        Ok(())
    }
    fn on_finish(&mut self) {
        self.inner.on_finish()
    }
}

/// The training checkpoint of a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The best epoch's inference state (PETL state + head).
pub const BEST_FILE: &str = "best.safetensors";
const LOCK_FILE: &str = ".lock";

/// [`TASK_METRICS_FILE`] rewritten atomically from a multi-task run's per-task logs.
fn write_task_metrics(dir: &Path, logs: &[crate::train::MultiTaskEpochLog]) -> Result<()> {
    let mut text = String::new();
    for log in logs {
        text += &serde_json::to_string(log)?;
        text.push('\n');
    }
    atomic_write(&dir.join(TASK_METRICS_FILE), text.as_bytes())?;
    Ok(())
}

/// `metrics.jsonl` rewritten atomically from the logs (one JSON object per epoch).
fn write_metrics(dir: &Path, logs: &[EpochLog]) -> Result<()> {
    let mut text = String::new();
    for log in logs {
        text += &serde_json::to_string(log)?;
        text.push('\n');
    }
    atomic_write(&dir.join("metrics.jsonl"), text.as_bytes())?;
    Ok(())
}

/// An exclusive lock on a run directory (`.lock` holding the writer's pid), released on drop.
/// A lock left by a process that no longer runs is taken over.
struct RunLock {
    path: PathBuf,
}

impl RunLock {
    fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid = holder.trim().parse::<u32>().ok();
                    let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
                    if alive && pid != Some(std::process::id()) {
                        bail!(
                            "{} is in use by another propetl process (pid {}); wait for it to finish",
                            dir.display(),
                            holder.trim()
                        );
                    }
                    // stale: its writer is gone
                    std::fs::remove_file(&path)
                        .with_context(|| format!("removing stale lock {}", path.display()))?;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating lock {}", path.display()))
                }
            }
        }
        bail!("cannot lock {}", dir.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What to do with an existing run directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Replace an existing, non-empty run directory: the new run is built in a fresh sibling
    /// directory and swapped in only when it has finished.
    pub overwrite: bool,
    /// Test hook: fail right after the checkpoint of this epoch (a crash without a kill).
    #[doc(hidden)]
    pub fail_after_epoch: Option<usize>,
}

/// Whether `p` is a directory with at least one entry.
pub(crate) fn is_nonempty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some())
}

/// `p` made absolute (resolving symlinks where it exists; the parent where it does not).
pub(crate) fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|c| c.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// Run a configuration, writing the run directory `out`; `observer` sees the progress.
///
/// The whole configuration and the data are validated and the model is built before anything
/// is written. An existing non-empty `out` is an error unless `options.overwrite`; then the new
/// run is built beside it and swapped in at the end, so a failed run leaves it untouched.
pub fn run(cfg: &RunConfig, out: &Path, observer: &mut dyn TrainObserver) -> Result<RunReport> {
    run_with(cfg, out, RunOptions::default(), observer)
}

/// [`run`] with options (overwrite).
pub fn run_with(
    cfg: &RunConfig,
    out: &Path,
    options: RunOptions,
    observer: &mut dyn TrainObserver,
) -> Result<RunReport> {
    let start = std::time::Instant::now();
    if out.exists() && !out.is_dir() {
        bail!("{} exists and is not a directory", out.display());
    }
    if out.join(LOCK_FILE).exists() {
        // refuse early when another live process writes there (a stale lock is removed)
        drop(RunLock::acquire(out)?);
    }
    if is_nonempty_dir(out) && !options.overwrite {
        bail!(
            "run directory {} exists and is not empty: pass --overwrite to replace it or --resume to continue it",
            out.display()
        );
    }
    let prepared = prepare(cfg)?;
    // everything is valid: now write, into `out` directly when it is new or empty, otherwise
    // into a fresh sibling that replaces it at the end
    let staging = if is_nonempty_dir(out) {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into());
        out.with_file_name(format!(".{name}.new-{}", std::process::id()))
    } else {
        out.to_path_buf()
    };
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let lock = RunLock::acquire(&staging)?;
    let result = train_in(cfg, &staging, prepared, None, options, observer, start);
    if staging != out {
        match &result {
            Ok(_) => {
                drop(lock);
                swap_in(&staging, out)?;
            }
            Err(_) => {
                drop(lock);
                let _ = std::fs::remove_dir_all(&staging);
            }
        }
    }
    result
}

/// Build a folder in a hidden sibling of `out` with `fill`, then rename it into place
/// (replacing `out`, which the caller has checked may be replaced): the folder appears
/// complete or not at all; on any error nothing is left behind. `what` names the folder in
/// errors and in the sibling's name (`.NAME.WHAT-PID`).
pub(crate) fn write_folder_atomically<T>(
    out: &Path,
    what: &str,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .with_context(|| format!("{} has no folder name", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let pid = std::process::id();
    let staging = parent.join(format!(".{name}.{what}-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    let _ = std::fs::remove_dir_all(&staging);
    let result = (|| -> Result<T> {
        std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        let value = fill(&staging)?;
        if out.exists() {
            std::fs::rename(out, &old)
                .with_context(|| format!("moving {} aside", out.display()))?;
            if let Err(e) = std::fs::rename(&staging, out) {
                let _ = std::fs::rename(&old, out);
                return Err(e).with_context(|| format!("moving the {what} into {}", out.display()));
            }
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("removing the previous {}", old.display()))?;
        } else {
            std::fs::rename(&staging, out)
                .with_context(|| format!("moving the {what} into {}", out.display()))?;
        }
        if let Ok(d) = std::fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Refuse an output path that is a file, or a non-empty folder unless `overwrite`.
pub(crate) fn check_output_folder(out: &Path, overwrite: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("{} exists and is not a folder", out.display());
    }
    if is_nonempty_dir(out) && !overwrite {
        bail!(
            "{} exists and is not empty: pass --overwrite to replace it",
            out.display()
        );
    }
    Ok(())
}

/// Replace `out` by `staging` (both in the same parent directory).
fn swap_in(staging: &Path, out: &Path) -> Result<()> {
    let old = staging.with_extension("old");
    std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
    if let Err(e) = std::fs::rename(staging, out) {
        let _ = std::fs::rename(&old, out);
        return Err(e).with_context(|| format!("moving the new run into {}", out.display()));
    }
    std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    Ok(())
}

/// Continue the run in `dir` from its last checkpoint (written at every epoch end and every
/// `train.checkpoint_every_steps` steps); it ends bit-identical to an uninterrupted run.
pub fn resume(dir: &Path, observer: &mut dyn TrainObserver) -> Result<RunReport> {
    resume_with(dir, RunOptions::default(), observer)
}

/// [`resume`] with options (the failure hook).
pub fn resume_with(
    dir: &Path,
    options: RunOptions,
    observer: &mut dyn TrainObserver,
) -> Result<RunReport> {
    let start = std::time::Instant::now();
    let cfg = RunConfig::from_toml_file(&dir.join("config.toml"))
        .with_context(|| format!("{} is not a resumable run directory", dir.display()))?;
    let ckpt_path = dir.join(CHECKPOINT_FILE);
    if !ckpt_path.exists() {
        bail!(
            "{} has no {CHECKPOINT_FILE}: nothing to resume (it was never checkpointed)",
            dir.display()
        );
    }
    let lock = RunLock::acquire(dir)?;
    let prepared = prepare(&cfg)?;
    let ckpt = TrainCheckpoint::load(&ckpt_path, &cfg.device.open()?)?;
    let result = train_in(&cfg, dir, prepared, Some(ckpt), options, observer, start);
    drop(lock);
    result
}

fn train_in(
    cfg: &RunConfig,
    dir: &Path,
    prepared: Prepared,
    resume: Option<TrainCheckpoint>,
    options: RunOptions,
    observer: &mut dyn TrainObserver,
    start: std::time::Instant,
) -> Result<RunReport> {
    let Prepared {
        mut model,
        tasks,
        skipped,
        answers,
    } = prepared;
    if resume.is_none() {
        atomic_write(
            &dir.join("config.toml"),
            toml::to_string_pretty(cfg)?.as_bytes(),
        )?;
        write_task_info(cfg, dir, &tasks)?;
        if !answers.is_empty() {
            atomic_write(
                &dir.join(ANSWERS_FILE),
                serde_json::to_string_pretty(&answers)?.as_bytes(),
            )?;
        }
    }
    let mut train_cfg = cfg.train.clone();
    if let (true, Some(t)) = (cfg.epochs_from_task, cfg.task.glue()) {
        train_cfg.epochs = t.paper_epochs();
    }
    for t in &tasks {
        tracing::info!(
            task = t.task.name(),
            train = t.train.len(),
            eval = t.eval.len(),
            test = t.test.len(),
            "data ready"
        );
    }
    let mut run_observer = RunObserver {
        inner: observer,
        dir: dir.to_path_buf(),
        best: None,
        best_values: BTreeMap::new(),
        logs: Vec::new(),
        fail_after_epoch: options.fail_after_epoch,
    };
    if let Some(ckpt) = &resume {
        run_observer.best = serde_json::from_value(ckpt.extra.clone())
            .context("training checkpoint: bad best-epoch record")?;
        run_observer.best_values = ckpt.extra_tensors.clone();
        run_observer.logs = ckpt.progress.logs.clone();
        // the derived files are rebuilt from the checkpoint (a crash may have left them newer)
        write_metrics(dir, &ckpt.progress.logs)?;
        if let Some(multi) = &ckpt.progress.multi_task {
            write_task_metrics(dir, &multi.logs)?;
        }
        if run_observer.best.is_some() {
            let current = trainable_values(model.as_ref())?;
            set_trainable_values(model.as_ref(), &run_observer.best_values)?;
            model.save(&dir.join(BEST_FILE))?;
            set_trainable_values(model.as_ref(), &current)?;
        }
    }
    if cfg.task == Task::GlueMulti {
        return train_multi_in(
            cfg,
            dir,
            model,
            &tasks,
            skipped,
            &train_cfg,
            run_observer,
            resume,
            start,
        );
    }
    let task = tasks.first().context("a run has one task")?;
    let data = TrainData {
        train: &task.train,
        eval: &task.eval,
        task: &task.petl_task,
        glue: task.task.glue(),
    };
    let epochs = train_from(model.as_mut(), &data, &train_cfg, &mut run_observer, resume)?;
    let best = run_observer.best.context("no epoch was run")?;
    model.restore(&dir.join(BEST_FILE))?;
    let test_scores = evaluate(model.as_ref(), &task.test, &task.eval_settings(cfg))?;
    let report = RunReport {
        task: cfg.task,
        variant: cfg.variant,
        best_epoch: best.epoch,
        eval: best.eval,
        test: test_scores,
        storage: model.storage()?,
        sizes: task.sizes(),
        skipped_rows: skipped,
        wall_seconds: start.elapsed().as_secs_f64(),
        epochs,
        tasks: BTreeMap::new(),
        glue_average: None,
    };
    atomic_write(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// `task.json` (single-task runs: what `predict` answers) or `tasks.json` (multi-task runs:
/// the same per task).
fn write_task_info(cfg: &RunConfig, dir: &Path, tasks: &[TaskExamples]) -> Result<()> {
    let info = |t: &TaskExamples| TaskInfo {
        kind: t.kind,
        labels: label_names(cfg, t.task, t.kind),
    };
    if cfg.task == Task::GlueMulti {
        let all: BTreeMap<&str, TaskInfo> = tasks
            .iter()
            .map(|t| (t.petl_task.as_str(), info(t)))
            .collect();
        atomic_write(
            &dir.join(TASKS_INFO_FILE),
            serde_json::to_string_pretty(&all)?.as_bytes(),
        )?;
    } else if let Some(t) = tasks.first() {
        atomic_write(
            &dir.join("task.json"),
            serde_json::to_string_pretty(&info(t))?.as_bytes(),
        )?;
    }
    Ok(())
}

/// Per-task metrics of every epoch of a multi-task run (one JSON object per epoch).
pub const TASK_METRICS_FILE: &str = "task_metrics.jsonl";
/// What each task of a multi-task run predicts.
pub const TASKS_INFO_FILE: &str = "tasks.json";

/// A multi-task run (method page §5): temperature-sampled single-task batches, every task
/// evaluated after every epoch, the epoch with the best mean selection metric kept, every
/// task tested on its best state; per-task epochs in [`TASK_METRICS_FILE`]; checkpointed
/// like single-task runs (every epoch and every `checkpoint_every_steps`), so it resumes.
#[allow(clippy::too_many_arguments)]
fn train_multi_in(
    cfg: &RunConfig,
    dir: &Path,
    mut model: Box<dyn TaskModel>,
    tasks: &[TaskExamples],
    skipped: usize,
    train_cfg: &TrainConfig,
    mut observer: RunObserver,
    resume: Option<TrainCheckpoint>,
    start: std::time::Instant,
) -> Result<RunReport> {
    let splits: Vec<TaskSplit> = tasks
        .iter()
        .map(|t| TaskSplit {
            task: &t.petl_task,
            train: &t.train,
            eval: &t.eval,
            glue: t.task.glue(),
        })
        .collect();
    let temperature = cfg.sampling_temperature.unwrap_or(DEFAULT_TEMPERATURE);
    let logs = train_multi_task_from(
        model.as_mut(),
        &splits,
        temperature,
        train_cfg,
        &mut observer,
        resume,
    )?;
    let best = observer.best.clone().context("no epoch was run")?;
    model.restore(&dir.join(BEST_FILE))?;
    let best_log = logs
        .get(best.epoch - 1)
        .context("the best epoch has no log")?;
    let mut scores = BTreeMap::new();
    for t in tasks {
        let test = evaluate(model.as_ref(), &t.test, &t.eval_settings(cfg))?;
        scores.insert(
            t.petl_task.clone(),
            TaskScores {
                eval: best_log.eval.get(&t.petl_task).cloned().unwrap_or_default(),
                test,
                sizes: t.sizes(),
            },
        );
    }
    let by_glue: BTreeMap<GlueTask, Metrics> = tasks
        .iter()
        .filter_map(|t| Some((t.task.glue()?, scores[&t.petl_task].test.clone())))
        .collect();
    // as in model selection: a task whose metric is undefined counts as 0
    let mean_selection = scores
        .values()
        .map(|s| crate::train::finite_or_zero(s.test.selection))
        .sum::<f64>()
        / scores.len().max(1) as f64;
    let total = |f: fn(&SplitSizes) -> usize| scores.values().map(|s| f(&s.sizes)).sum();
    let report = RunReport {
        task: cfg.task,
        variant: cfg.variant,
        best_epoch: best.epoch,
        eval: best.eval,
        test: Metrics {
            selection: mean_selection,
            ..Default::default()
        },
        storage: model.storage()?,
        sizes: SplitSizes {
            train: total(|s| s.train),
            eval: total(|s| s.eval),
            test: total(|s| s.test),
        },
        skipped_rows: skipped,
        wall_seconds: start.elapsed().as_secs_f64(),
        epochs: observer.logs.clone(),
        // undefined (None) unless all eight tasks ran and every number is one
        glue_average: crate::metrics::glue_average(&by_glue).filter(|a| a.is_finite()),
        tasks: scores,
    };
    atomic_write(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// Method page §5's task-sampling temperature.
pub const DEFAULT_TEMPERATURE: f64 = 10.0;

/// Restore the best state of a run directory and evaluate it on `split` (`test` or `eval`);
/// a multi-task run's selection metric is the mean of its tasks' (see [`evaluate_run_tasks`]).
pub fn evaluate_run(dir: &Path, split: &str) -> Result<Metrics> {
    let scores = evaluate_run_tasks(dir, split)?;
    if scores.len() == 1 {
        return Ok(scores.into_values().next().expect("one task"));
    }
    let mean = scores
        .values()
        .map(|m| crate::train::finite_or_zero(m.selection))
        .sum::<f64>()
        / scores.len() as f64;
    Ok(Metrics {
        selection: mean,
        ..Default::default()
    })
}

/// Restore the best state of a run directory and evaluate every task of it on `split`
/// (`test` or `eval`); keyed by PETL task name (`default` for encoder runs).
pub fn evaluate_run_tasks(dir: &Path, split: &str) -> Result<BTreeMap<String, Metrics>> {
    if !matches!(split, "test" | "eval") {
        bail!("unknown split `{split}` (test or eval)");
    }
    let cfg = RunConfig::from_toml_file(&dir.join("config.toml"))
        .with_context(|| format!("is {} a run directory?", dir.display()))?;
    let best = dir.join(BEST_FILE);
    if !best.exists() {
        bail!(
            "{} has no {BEST_FILE} (no epoch finished): nothing to evaluate",
            dir.display()
        );
    }
    let mut p = prepare(&cfg)?;
    p.model.restore(&best)?;
    p.tasks
        .iter()
        .map(|t| {
            let data = if split == "test" { &t.test } else { &t.eval };
            Ok((
                t.petl_task.clone(),
                evaluate(p.model.as_ref(), data, &t.eval_settings(&cfg))?,
            ))
        })
        .collect()
}

/// Shared `main` of the paper-variant examples: `cargo run --release --example
/// pro_adapter_roberta -- [MODEL_DIR GLUE_DIR [TASK]]`. Without arguments it runs the
/// variant's paper configuration on the built-in tiny RoBERTa and the small synthetic GLUE
/// data of `tests/fixtures/glue` (a few epochs, larger learning rates). Returns the report
/// and the run directory.
pub fn example_run(variant: Variant) -> Result<(RunReport, PathBuf)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = RunConfig::from_toml_file(
        &root
            .join("configs/roberta")
            .join(format!("{}.toml", variant.name())),
    )?;
    match args.as_slice() {
        [model, glue, rest @ ..] => {
            cfg.model_dir = Some(model.into());
            cfg.data_dir = Some(glue.into());
            cfg.task = match rest.first() {
                Some(t) => t.parse()?,
                None => Task::Glue(GlueTask::Rte),
            };
        }
        [] => {
            cfg.data_dir = Some(root.join("tests/fixtures/glue"));
            cfg.task = Task::Glue(GlueTask::Sst2);
            cfg.epochs_from_task = false;
            cfg.train.epochs = 8;
            cfg.train.batch_size = 8;
            cfg.train.lr = 3e-3;
            cfg.train.progress = false;
        }
        _ => bail!("usage: {variant}_roberta [MODEL_DIR GLUE_DIR [TASK]]"),
    }
    let out = root
        .join("runs")
        .join(format!("example-{variant}-{}", cfg.task));
    // an example replaces its own previous run
    let options = RunOptions {
        overwrite: true,
        ..Default::default()
    };
    let report = run_with(&cfg, &out, options, &mut crate::train::Silent)?;
    Ok((report, out))
}
