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

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use propetl_models::roberta::{self, Checkpoint};
use propetl_runtime::{
    io::atomic_write, DeviceSpec, Example, NumericOverrides, PetlRng, StorageReport, TaskKind,
    TaskModel, Variant,
};
use serde::{Deserialize, Serialize};

use crate::data::{self, CustomData, GlueTask, Splits, TextExample};
use crate::metrics::Metrics;
use crate::train::{
    evaluate, train, EpochLog, EvalSettings, TrainConfig, TrainData, TrainObserver,
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
}

impl Task {
    /// The name used in configs and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Glue(t) => t.name(),
            Task::RottenTomatoes => "rotten-tomatoes",
            Task::VaderMovies => "vader-movies",
            Task::Custom => "custom",
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
            other => Task::Glue(GlueTask::parse(other).map_err(|_| {
                anyhow::anyhow!(
                    "unknown task `{other}` (a GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte; or rotten-tomatoes, vader-movies, custom)"
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
    /// Hugging Face model folder; absent: the built-in tiny RoBERTa (random weights).
    #[serde(default)]
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
        }
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

/// The built-in tiny RoBERTa: the tiny checkpoint of the parity fixtures (3 layers, hidden 64,
/// random weights) with its byte-level BPE tokenizer, embedded in the binary.
pub fn builtin_tiny(device: &Device) -> Result<Checkpoint> {
    const CONFIG: &str = include_str!("../tests/fixtures/tiny-roberta/config.json");
    const WEIGHTS: &[u8] = include_bytes!("../tests/fixtures/tiny-roberta/model.safetensors");
    const TOKENIZER: &[u8] = include_bytes!("../tests/fixtures/tiny-roberta/tokenizer.json");
    Ok(Checkpoint::from_bytes(
        CONFIG,
        WEIGHTS.to_vec(),
        Some(TOKENIZER.to_vec()),
        device,
    )?)
}

struct TaskData {
    splits: Splits,
    kind: TaskKind,
    skipped: usize,
}

fn load_task(cfg: &RunConfig) -> Result<TaskData> {
    let data_dir = || {
        cfg.data_dir
            .clone()
            .with_context(|| format!("task `{}` needs --data-dir", cfg.task))
    };
    let kind_of = |num_labels: usize| match num_labels {
        1 => TaskKind::Regression,
        n => TaskKind::Classification { num_labels: n },
    };
    let seed = cfg.train.seed;
    Ok(match cfg.task {
        Task::RottenTomatoes => {
            let all =
                data::load_rotten_tomatoes(&data_dir()?.join("rotten_tomatoes_corpus_full.csv"))?;
            TaskData {
                splits: data::hash_split(all, 42),
                kind: kind_of(2),
                skipped: 0,
            }
        }
        Task::VaderMovies => {
            let all =
                data::load_vader_movies(&data_dir()?.join("movieReviewSnippets_GroundTruth.txt"))?;
            TaskData {
                splits: data::hash_split(all, 42),
                kind: TaskKind::Regression,
                skipped: 0,
            }
        }
        Task::Custom => {
            let c = cfg
                .custom
                .as_ref()
                .context("task = \"custom\" needs a [custom] section")?;
            let splits = c.splits(seed, cfg.skip_bad_rows)?;
            let kind = kind_of(c.num_labels(&splits.train));
            TaskData {
                splits,
                kind,
                skipped: 0,
            }
        }
        Task::Glue(t) => {
            let dir = data_dir()?;
            let plain = cfg.split == Split::Plain;
            let splits = t.splits(&dir, 42, plain, cfg.skip_bad_rows)?;
            let skipped = if cfg.skip_bad_rows {
                t.load(&dir, "train.tsv", true)?.skipped
            } else {
                0
            };
            TaskData {
                splits,
                kind: kind_of(t.num_labels()),
                skipped,
            }
        }
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
            Ok(Example {
                ids,
                label: e.label,
            })
        })
        .collect()
}

fn append_jsonl(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(value)?)?;
    f.sync_data()?;
    Ok(())
}

/// A model with everything a run needs.
pub struct Prepared {
    /// The model (every trainable tensor is reachable through it).
    pub model: Box<dyn TaskModel>,
    /// Tokenized training split.
    pub train: Vec<Example>,
    /// Eval split.
    pub eval: Vec<Example>,
    /// Test split.
    pub test: Vec<Example>,
    /// Rows skipped.
    pub skipped: usize,
}

/// The device of a configuration (CPU unless configured).
pub fn device(cfg: &RunConfig) -> Result<Device> {
    Ok(cfg.device.open()?)
}

/// Load model and data for a configuration.
pub fn prepare(cfg: &RunConfig) -> Result<Prepared> {
    let dev = device(cfg)?;
    let ckpt = match &cfg.model_dir {
        Some(d) => Checkpoint::open(d, &dev)?,
        None => builtin_tiny(&dev)?,
    };
    let tok = ckpt.tokenizer()?;
    let mut data = load_task(cfg)?;
    let mut rng = PetlRng::seed(cfg.train.seed);
    if let Some(n) = cfg.max_train_examples {
        rng.shuffle(&mut data.splits.train);
        data.splits.train.truncate(n);
    }
    if let Some(n) = cfg.max_eval_examples {
        data.splits.eval.truncate(n);
        data.splits.test.truncate(n);
    }
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
        train: tokenize(&tok, &data.splits.train)?,
        eval: tokenize(&tok, &data.splits.eval)?,
        test: tokenize(&tok, &data.splits.test)?,
        skipped: data.skipped,
    })
}

/// The evaluation settings of a configuration.
pub fn eval_settings(cfg: &RunConfig) -> EvalSettings<'static> {
    EvalSettings {
        batch_size: cfg.train.batch_size,
        max_len: cfg.train.max_len,
        task: "default",
        glue: cfg.task.glue(),
    }
}

/// Keeps the best epoch's state and appends each epoch to `metrics.jsonl`, then forwards to
/// the caller's observer.
struct RunObserver<'a> {
    inner: &'a mut dyn TrainObserver,
    metrics_path: PathBuf,
    best_path: PathBuf,
    best: Option<(usize, f64, Metrics)>,
}

impl TrainObserver for RunObserver<'_> {
    fn on_start(&mut self, total_steps: usize, epochs: usize) {
        self.inner.on_start(total_steps, epochs)
    }
    fn on_step(&mut self, epoch: usize, step: usize, loss: f64, tokens_per_s: f64) {
        self.inner.on_step(epoch, step, loss, tokens_per_s)
    }
    fn on_epoch(&mut self, model: &dyn TaskModel, log: &EpochLog) -> Result<()> {
        append_jsonl(&self.metrics_path, log)?;
        let metric = log.eval_metric();
        let better = self
            .best
            .as_ref()
            .is_none_or(|(_, b, _)| metric > *b || b.is_nan());
        if better {
            model.save(&self.best_path)?;
            self.best = Some((log.epoch, metric, log.eval.clone().unwrap_or_default()));
        }
        self.inner.on_epoch(model, log)
    }
    fn on_finish(&mut self) {
        self.inner.on_finish()
    }
}

/// Run a configuration, writing the run directory `out`; `observer` sees the progress.
pub fn run(cfg: &RunConfig, out: &Path, observer: &mut dyn TrainObserver) -> Result<RunReport> {
    let start = std::time::Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    atomic_write(
        &out.join("config.toml"),
        toml::to_string_pretty(cfg)?.as_bytes(),
    )?;
    let metrics_path = out.join("metrics.jsonl");
    let _ = std::fs::remove_file(&metrics_path);
    let Prepared {
        mut model,
        train: tr,
        eval,
        test,
        skipped,
    } = prepare(cfg)?;
    let mut train_cfg = cfg.train.clone();
    if let (true, Some(t)) = (cfg.epochs_from_task, cfg.task.glue()) {
        train_cfg.epochs = t.paper_epochs();
    }
    tracing::info!(
        train = tr.len(),
        eval = eval.len(),
        test = test.len(),
        "data ready"
    );
    let best_path = out.join("best.safetensors");
    let data = TrainData {
        train: &tr,
        eval: &eval,
        task: "default",
        glue: cfg.task.glue(),
    };
    let mut run_observer = RunObserver {
        inner: observer,
        metrics_path,
        best_path: best_path.clone(),
        best: None,
    };
    let epochs = train(model.as_mut(), &data, &train_cfg, &mut run_observer)?;
    let (best_epoch, _, best_eval) = run_observer.best.context("no epoch was run")?;
    model.restore(&best_path)?;
    let test_scores = evaluate(model.as_ref(), &test, &eval_settings(cfg))?;
    let report = RunReport {
        task: cfg.task,
        variant: cfg.variant,
        best_epoch,
        eval: best_eval,
        test: test_scores,
        storage: model.storage()?,
        sizes: SplitSizes {
            train: tr.len(),
            eval: eval.len(),
            test: test.len(),
        },
        skipped_rows: skipped,
        wall_seconds: start.elapsed().as_secs_f64(),
        epochs,
    };
    atomic_write(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// Restore the best state of a run directory and evaluate it on `split` (`test` or `eval`).
pub fn evaluate_run(dir: &Path, split: &str) -> Result<Metrics> {
    let cfg = RunConfig::from_toml_file(&dir.join("config.toml"))?;
    let mut p = prepare(&cfg)?;
    p.model.restore(&dir.join("best.safetensors"))?;
    let data = match split {
        "test" => &p.test,
        "eval" => &p.eval,
        other => bail!("unknown split `{other}` (test or eval)"),
    };
    evaluate(p.model.as_ref(), data, &eval_settings(&cfg))
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
    let report = run(&cfg, &out, &mut crate::train::Silent)?;
    Ok((report, out))
}
