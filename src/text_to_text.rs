//! Runs on a text-to-text (T5) backbone: every task answers in text. Inputs in method page
//! §5's formats (GLUE: [`data::t5_input`]; other single-text tasks `sentence: …`, pairs
//! `sentence1: … sentence2: …`), targets are label strings ("0", "1", …; scores with one
//! decimal), one task mask per task. [`prepare`] builds a run's model and examples;
//! [`load_run`] rebuilds a finished run's model for evaluation and generation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use propetl_models::t5::{self, text_to_text, T5Checkpoint, T5TextToText, T5Tokenizer, TextTask};
use propetl_runtime::{Example, PetlRng, TaskKind, TaskModel};

use crate::data::{self, TextExample};
use crate::run::{Prepared, RunConfig, Task, TaskData, TaskExamples, BEST_FILE};

/// The text-to-text input of an example: GLUE tasks in method page §5's formats; other
/// tasks `sentence: …` or, for pairs, `sentence1: … sentence2: …`.
pub fn input_text(task: Task, example: &TextExample) -> String {
    match (task.glue(), &example.text_b) {
        (Some(glue), _) => data::t5_input(glue, example),
        (None, Some(b)) => format!("sentence1: {} sentence2: {b}", example.text_a),
        (None, None) => format!("sentence: {}", example.text_a),
    }
}

/// The target text of a label: the class index ("1"), or a score rounded to one decimal
/// ("3.4").
pub fn target_text(kind: TaskKind, label: f32) -> String {
    match kind {
        TaskKind::Regression => format!("{:.1}", (label * 10.0).round() / 10.0),
        TaskKind::Classification { .. } => format!("{}", label as i64),
    }
}

/// Most 0.1-steps a regression task's targets may span (a generation is matched against
/// every one).
const MAX_SCORE_STEPS: f32 = 2000.0;

/// The score range of a regression task: STS-B's 0–5, otherwise the training labels' range
/// widened to one decimal.
pub fn score_range(task: Task, train: &[TextExample]) -> Result<(f32, f32)> {
    if task.glue().is_some() {
        return Ok((0.0, 5.0));
    }
    let (lo, hi) = train
        .iter()
        .map(|e| e.label)
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
    let (lo, hi) = ((lo * 10.0).floor() / 10.0, (hi * 10.0).ceil() / 10.0);
    if !(lo.is_finite() && hi.is_finite()) {
        bail!("task `{task}`: no training scores to take a target range from");
    }
    if (hi - lo) * 10.0 > MAX_SCORE_STEPS {
        bail!(
            "task `{task}`: scores span {lo}..{hi}, more than {} steps of 0.1 — too many target strings for a text-to-text model; rescale the scores",
            MAX_SCORE_STEPS
        );
    }
    Ok((lo, hi))
}

/// What a text-to-text task answers: its kind and, for regression, its score range.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskAnswers {
    /// Classification or regression.
    pub kind: TaskKind,
    /// Regression: the lowest and highest score the model may answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_range: Option<(f32, f32)>,
}

/// The text-to-text answers of every task of a run (`answers.json` of a T5 run directory).
pub const ANSWERS_FILE: &str = "answers.json";

/// The backbone folder and its tokenizer. T5 runs need `model_dir`.
fn open_backbone(cfg: &RunConfig, dev: &Device) -> Result<(T5Checkpoint, T5Tokenizer)> {
    let dir: PathBuf = cfg
        .resolved_model_dir()?
        .context("a T5 run needs model_dir (the built-in tiny model is a RoBERTa)")?;
    let ckpt = T5Checkpoint::open(&dir, dev)?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        bail!(
            "{} is missing: a T5 run needs the checkpoint's tokenizer",
            tok_path.display()
        );
    }
    let tok = T5Tokenizer::from_file(&tok_path, &ckpt.config)?;
    Ok((ckpt, tok))
}

/// The model of a T5 run: the variant over `answers`' tasks (in order), each task with its
/// label targets.
fn build(
    cfg: &RunConfig,
    ckpt: &T5Checkpoint,
    tok: &T5Tokenizer,
    answers: &[(String, TaskAnswers)],
) -> Result<T5TextToText> {
    let names: Vec<&str> = answers.iter().map(|(n, _)| n.as_str()).collect();
    let max_len = cfg.train.max_len;
    let encode = |text: &str| tok.encode(text, max_len);
    let inner = t5::build(
        cfg.variant,
        ckpt,
        &names,
        &cfg.petl,
        &VarMap::new(),
        &mut PetlRng::seed(cfg.train.seed),
    )?;
    let mut tasks = BTreeMap::new();
    for (name, a) in answers {
        let labels = match (a.kind, a.score_range) {
            (TaskKind::Classification { num_labels }, _) => {
                text_to_text::class_targets(num_labels, &encode)?
            }
            (TaskKind::Regression, Some((lo, hi))) => text_to_text::score_targets(lo, hi, &encode)?,
            (TaskKind::Regression, None) => bail!("regression task `{name}` has no score range"),
        };
        tasks.insert(
            name.clone(),
            TextTask {
                kind: a.kind,
                labels,
            },
        );
    }
    Ok(T5TextToText::new(inner, tasks)?)
}

/// Model and examples of a T5 run from every task's checked data (in `cfg.run_tasks()`
/// order). Writes nothing.
pub(crate) fn prepare(
    cfg: &RunConfig,
    data: Vec<(Task, TaskData)>,
    dev: &Device,
) -> Result<Prepared> {
    let (ckpt, tok) = open_backbone(cfg, dev)?;
    let max_len = cfg.train.max_len;
    let mut answers = Vec::new();
    for (task, d) in &data {
        let score_range = match d.kind {
            TaskKind::Regression => Some(score_range(*task, &d.splits.train)?),
            TaskKind::Classification { .. } => None,
        };
        answers.push((
            task.name().to_string(),
            TaskAnswers {
                kind: d.kind,
                score_range,
            },
        ));
    }
    let model = build(cfg, &ckpt, &tok, &answers)?;
    let answers = answers.into_iter().collect();
    let mut tasks = Vec::new();
    let mut skipped = 0;
    for (task, d) in data {
        let examples = |xs: &[TextExample]| -> Result<Vec<Example>> {
            xs.iter()
                .map(|x| {
                    Ok(Example {
                        ids: tok.encode(&input_text(task, x), max_len)?,
                        label: x.label,
                        target_ids: tok.encode(&target_text(d.kind, x.label), max_len)?,
                    })
                })
                .collect()
        };
        skipped += d.skipped;
        tasks.push(TaskExamples {
            task,
            petl_task: task.name().to_string(),
            kind: d.kind,
            train: examples(&d.splits.train)?,
            eval: examples(&d.splits.eval)?,
            test: examples(&d.splits.test)?,
        });
    }
    Ok(Prepared {
        model: Box::new(model),
        tasks,
        skipped,
        answers,
    })
}

/// A finished T5 run, loaded for evaluation or generation: its configuration, tokenizer and
/// model with the best epoch's state.
pub struct LoadedRun {
    /// The run's configuration.
    pub config: RunConfig,
    /// The backbone's tokenizer.
    pub tokenizer: T5Tokenizer,
    /// The model (PETL state of the best epoch).
    pub model: T5TextToText,
}

/// Load a T5 run directory (`device` overrides the run's).
pub fn load_run(dir: &Path, device: Option<propetl_runtime::DeviceSpec>) -> Result<LoadedRun> {
    let cfg = RunConfig::from_toml_file(&dir.join("config.toml"))
        .with_context(|| format!("is {} a run directory?", dir.display()))?;
    let answers: BTreeMap<String, TaskAnswers> = serde_json::from_str(
        &std::fs::read_to_string(dir.join(ANSWERS_FILE)).with_context(|| {
            format!("reading {}/{ANSWERS_FILE} (is it a T5 run?)", dir.display())
        })?,
    )
    .with_context(|| format!("{}/{ANSWERS_FILE} is malformed", dir.display()))?;
    let best = dir.join(BEST_FILE);
    if !best.exists() {
        bail!("{} has no {BEST_FILE} (no epoch finished)", dir.display());
    }
    let dev = device.unwrap_or(cfg.device).open()?;
    let (ckpt, tokenizer) = open_backbone(&cfg, &dev)?;
    // the tasks in the run's order: the PETL state's task list must be the one it was saved with
    let order: Vec<(String, TaskAnswers)> = cfg
        .run_tasks()
        .iter()
        .map(|t| {
            let name = t.name().to_string();
            let a = answers
                .get(&name)
                .copied()
                .with_context(|| format!("{ANSWERS_FILE} has no task `{name}`"))?;
            Ok((name, a))
        })
        .collect::<Result<_>>()?;
    let mut model = build(&cfg, &ckpt, &tokenizer, &order)?;
    model.restore(&best)?;
    Ok(LoadedRun {
        config: cfg,
        tokenizer,
        model,
    })
}
