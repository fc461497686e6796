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
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use propetl_models::roberta::{head_tensors, Checkpoint, RobertaPetl, Variant};
use propetl_runtime::{io::atomic_write, NumericOverrides, PetlRng, PetlState, StorageReport};
use serde::{Deserialize, Serialize};

use crate::data::{self, CustomData, GlueTask, Splits, TextExample};
use crate::train::{evaluate, train, EpochLog, Example, TrainConfig, TrainData};

/// What to train on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `cola` … `rte` (GLUE, from `data_dir`), `rotten-tomatoes` (sentiment classification),
    /// `vader-movies` (sentiment regression) or `custom` (see `custom`).
    pub task: String,
    /// `pro_adapter`, `pro_lora`, `pro_prefix`, `adapter`, `lora` or `prefix`.
    pub variant: String,
    /// Hugging Face model folder; absent: the built-in tiny RoBERTa (random weights).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// GLUE folder (`<dir>/<TASK>/train.tsv`, …) or the folder of the sentiment files.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// `reference` (method page §4, seeded) or `plain` (train / validation).
    #[serde(default = "default_split")]
    pub split: String,
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

fn default_split() -> String {
    "reference".into()
}

impl RunConfig {
    /// A configuration with defaults for `task` and `variant`.
    pub fn new(task: &str, variant: &str) -> Self {
        Self {
            task: task.into(),
            variant: variant.into(),
            model_dir: None,
            data_dir: None,
            split: default_split(),
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
    pub task: String,
    /// Variant.
    pub variant: String,
    /// Best epoch (1-based).
    pub best_epoch: usize,
    /// Eval metrics of the best epoch.
    pub eval: BTreeMap<String, f64>,
    /// Test metrics of the best state.
    pub test: BTreeMap<String, f64>,
    /// Storage of the trained task.
    pub storage: StorageReport,
    /// Examples per split.
    pub sizes: BTreeMap<String, usize>,
    /// Malformed rows skipped.
    pub skipped_rows: usize,
    /// Wall time of the whole run.
    pub wall_seconds: f64,
    /// Per-epoch logs.
    pub epochs: Vec<EpochLog>,
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
    glue: Option<GlueTask>,
    num_labels: usize,
    skipped: usize,
}

fn load_task(cfg: &RunConfig) -> Result<TaskData> {
    let data_dir = || {
        cfg.data_dir
            .clone()
            .with_context(|| format!("task `{}` needs --data-dir", cfg.task))
    };
    let plain = match cfg.split.as_str() {
        "reference" => false,
        "plain" => true,
        other => bail!("unknown split `{other}` (reference or plain)"),
    };
    let seed = cfg.train.seed;
    Ok(match cfg.task.as_str() {
        "rotten-tomatoes" => {
            let all =
                data::load_rotten_tomatoes(&data_dir()?.join("rotten_tomatoes_corpus_full.csv"))?;
            TaskData {
                splits: data::hash_split(all, 42),
                glue: None,
                num_labels: 2,
                skipped: 0,
            }
        }
        "vader-movies" => {
            let all =
                data::load_vader_movies(&data_dir()?.join("movieReviewSnippets_GroundTruth.txt"))?;
            TaskData {
                splits: data::hash_split(all, 42),
                glue: None,
                num_labels: 1,
                skipped: 0,
            }
        }
        "custom" => {
            let c = cfg
                .custom
                .as_ref()
                .context("task = \"custom\" needs a [custom] section")?;
            let splits = c.splits(seed, cfg.skip_bad_rows)?;
            let num_labels = c.num_labels(&splits.train);
            TaskData {
                splits,
                glue: None,
                num_labels,
                skipped: 0,
            }
        }
        name => {
            let t = GlueTask::parse(name)?;
            let dir = data_dir()?;
            let splits = t.splits(&dir, 42, plain, cfg.skip_bad_rows)?;
            let skipped = if cfg.skip_bad_rows {
                t.load(&dir, "train.tsv", true)?.skipped
            } else {
                0
            };
            TaskData {
                splits,
                glue: Some(t),
                num_labels: t.num_labels(),
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

/// Replace a model's PETL state and head with a saved one (inference only).
pub fn restore(model: &mut dyn RobertaPetl, varmap: &VarMap, path: &Path) -> Result<()> {
    let s = model.state();
    let loaded = PetlState::load(path, s.config(), s.layout(), s.device())?;
    let vars = varmap.data().lock().expect("varmap").clone();
    for (name, t) in &loaded.extra {
        let var = vars.get(name).with_context(|| {
            format!(
                "{}: head tensor `{name}` is not part of this model",
                path.display()
            )
        })?;
        if var.dims() != t.dims() {
            bail!("{}: head tensor `{name}` has shape {:?}, the model expects {:?} (another number of labels?)", path.display(), t.dims(), var.dims());
        }
        var.set(t)?;
    }
    for name in vars.keys().filter(|k| k.starts_with("head.")) {
        if !loaded.extra.contains_key(name) {
            bail!("{}: missing head tensor `{name}`", path.display());
        }
    }
    *model.state_mut() = loaded.state;
    model.state_mut().merge()?;
    Ok(())
}

/// A model with everything a run needs.
pub struct Prepared {
    /// The model.
    pub model: Box<dyn RobertaPetl>,
    /// Its trainable variables.
    pub varmap: VarMap,
    /// Tokenized splits.
    pub train: Vec<Example>,
    /// Eval split.
    pub eval: Vec<Example>,
    /// Test split.
    pub test: Vec<Example>,
    /// GLUE task, if any.
    pub glue: Option<GlueTask>,
    /// Padding id.
    pub pad: u32,
    /// Rows skipped.
    pub skipped: usize,
}

/// Load model and data for a configuration.
pub fn prepare(cfg: &RunConfig) -> Result<Prepared> {
    let dev = Device::Cpu;
    let variant = Variant::parse(&cfg.variant)?;
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
    let varmap = VarMap::new();
    let model = variant.build(
        &ckpt,
        data.num_labels,
        &cfg.petl,
        &varmap,
        &mut PetlRng::seed(cfg.train.seed),
    )?;
    Ok(Prepared {
        model,
        varmap,
        train: tokenize(&tok, &data.splits.train)?,
        eval: tokenize(&tok, &data.splits.eval)?,
        test: tokenize(&tok, &data.splits.test)?,
        glue: data.glue,
        pad: ckpt.config.pad_token_id as u32,
        skipped: data.skipped,
    })
}

/// Run a configuration, writing the run directory `out`.
pub fn run(cfg: &RunConfig, out: &Path) -> Result<RunReport> {
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
        varmap,
        train: tr,
        eval,
        test,
        glue,
        pad,
        skipped,
    } = prepare(cfg)?;
    let mut train_cfg = cfg.train.clone();
    if let (true, Some(t)) = (cfg.epochs_from_task, glue) {
        train_cfg.epochs = t.paper_epochs();
    }
    tracing::info!(
        train = tr.len(),
        eval = eval.len(),
        test = test.len(),
        "data ready"
    );
    let best_path = out.join("best.safetensors");
    let backbone = model.config().backbone_params();
    let mut best: Option<(usize, f64, BTreeMap<String, f64>)> = None;
    let data = TrainData {
        train: &tr,
        eval: &eval,
        pad,
        task: glue,
    };
    let epochs = train(model.as_mut(), &varmap, &data, &train_cfg, |m, log| {
        append_jsonl(&metrics_path, log)?;
        let better = best
            .as_ref()
            .is_none_or(|(_, b, _)| log.eval_metric > *b || b.is_nan());
        if better {
            m.state()
                .save(&best_path, &head_tensors(&varmap), backbone)?;
            best = Some((log.epoch, log.eval_metric, log.eval.clone()));
        }
        Ok(())
    })?;
    let (best_epoch, _, best_eval) = best.context("no epoch was run")?;
    restore(model.as_mut(), &varmap, &best_path)?;
    let test_scores = evaluate(
        model.as_ref(),
        &test,
        glue,
        cfg.train.batch_size,
        cfg.train.max_len,
        pad,
    )?;
    let report = RunReport {
        task: cfg.task.clone(),
        variant: cfg.variant.clone(),
        best_epoch,
        eval: best_eval,
        test: test_scores,
        storage: model.storage()?,
        sizes: [
            ("train".to_string(), tr.len()),
            ("eval".to_string(), eval.len()),
            ("test".to_string(), test.len()),
        ]
        .into(),
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

/// Shared `main` of the paper-variant examples: `cargo run --release --example
/// pro_adapter_roberta -- [MODEL_DIR GLUE_DIR [TASK]]`. Without arguments it runs the
/// variant's paper configuration on the built-in tiny RoBERTa and the small synthetic GLUE
/// data of `tests/fixtures/glue` (a few epochs, larger learning rates).
pub fn example_main(variant: &str) -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cfg =
        RunConfig::from_toml_file(&root.join("configs/roberta").join(format!("{variant}.toml")))?;
    match args.as_slice() {
        [model, glue, rest @ ..] => {
            cfg.model_dir = Some(model.into());
            cfg.data_dir = Some(glue.into());
            cfg.task = rest.first().cloned().unwrap_or_else(|| "rte".into());
        }
        [] => {
            println!(
                "no MODEL_DIR GLUE_DIR given: built-in tiny RoBERTa on the synthetic GLUE fixtures"
            );
            cfg.data_dir = Some(root.join("tests/fixtures/glue"));
            cfg.task = "sst2".into();
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
    let report = run(&cfg, &out)?;
    for e in &report.epochs {
        println!(
            "epoch {:>2}  train loss {:.4}  eval {:.2}",
            e.epoch, e.train_loss, e.eval_metric
        );
    }
    println!("best epoch {}; test {:?}", report.best_epoch, report.test);
    println!("{}", report.storage.to_table());
    println!("run directory: {}", out.display());
    Ok(())
}
