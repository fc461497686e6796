//! Prediction with a trained run: load a run directory, run its best state on new text.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let predictor = propetl::predict::Predictor::load("runs/latest".as_ref(), None)?;
//! let out = predictor.predict_texts(&["a gripping, beautifully shot film"], 32)?;
//! println!("{} {:?}", out[0].label.as_deref().unwrap_or("?"), out[0].probabilities);
//! // a multi-task (T5) run: each input names its task
//! let multi = propetl::predict::Predictor::load("runs/t5-glue".as_ref(), None)?;
//! let inputs = [
//!     propetl::predict::PredictInput::text("0", "a gripping film"),
//!     propetl::predict::PredictInput::pair("1", "A man eats.", "Someone eats."),
//! ];
//! let out = multi.predict_tasks(&inputs, &["sst2", "rte"], 32, &mut |_| {})?;
//! println!("{:?} {:?}", out[1].label, out[1].generated);
//! # Ok(()) }
//! ```
//!
//! Encoder (RoBERTa) runs answer with their classification/regression head; text-to-text
//! (T5) runs generate greedily over their task's label targets (inputs in method page §5's
//! formats, [`text_to_text::input_text`]) and also return the generated text. Multi-task runs
//! take one task per input: inputs are batched per task (each task's inputs by length), so an
//! input gets exactly the output it gets when its task's inputs are predicted alone.
//!
//! Inputs come from JSONL (one object per line), CSV / TSV (a header row) or plain text (one
//! input per line); outputs keep the input order.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use propetl_models::t5::{T5TextToText, T5Tokenizer};
use propetl_models::tokenizer::EncoderTokenizer;
use propetl_runtime::task::pad_batch;
use propetl_runtime::{DeviceSpec, Example, Prediction, ProPetlModel, TaskKind, TaskModel};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::data::TextExample;
use crate::run::{ModelFamily, RunConfig, Task, TASKS_INFO_FILE};
use crate::text_to_text;

/// What a run predicts (`task.json` of a run directory; per task in `tasks.json` of a
/// multi-task run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Classification (with its number of classes) or regression.
    pub kind: TaskKind,
    /// Class names in index order (empty for regression).
    pub labels: Vec<String>,
}

/// One input: an optional id, a text and an optional second text (pairs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictInput {
    /// The input's id (echoed in the output).
    pub id: String,
    /// First text.
    pub text: String,
    /// Second text of a pair task.
    pub text_pair: Option<String>,
}

impl PredictInput {
    /// A single-text input.
    pub fn text(id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            text: text.into(),
            text_pair: None,
        }
    }

    /// A text-pair input.
    pub fn pair(id: impl Into<String>, text: impl Into<String>, pair: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            text: text.into(),
            text_pair: Some(pair.into()),
        }
    }
}

/// One output line. As JSON: `id`, `task` (multi-task runs), `label` and `probabilities`
/// (classification) or `score` (regression), `generated` (text-to-text runs). A text-to-text
/// generation that is none of the task's labels has `"label": null` (and no score).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PredictOutput {
    /// The input's id.
    pub id: String,
    /// The input's task (multi-task runs).
    #[serde(default)]
    pub task: Option<String>,
    /// The predicted class name (classification; `None` when a generation is no label).
    #[serde(default)]
    pub label: Option<String>,
    /// Probability of every class by name (classification with an encoder head).
    #[serde(default)]
    pub probabilities: Option<BTreeMap<String, f32>>,
    /// The predicted score (regression; `None` when a generation is no score).
    #[serde(default)]
    pub score: Option<f32>,
    /// The generated text (text-to-text runs).
    #[serde(default)]
    pub generated: Option<String>,
}

impl Serialize for PredictOutput {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // a generation that is no answer says so: "label": null
        let unanswered = self.generated.is_some() && self.label.is_none() && self.score.is_none();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id)?;
        if let Some(t) = &self.task {
            m.serialize_entry("task", t)?;
        }
        if self.label.is_some() || unanswered {
            m.serialize_entry("label", &self.label)?;
        }
        if let Some(p) = &self.probabilities {
            m.serialize_entry("probabilities", p)?;
        }
        if let Some(x) = &self.score {
            m.serialize_entry("score", x)?;
        }
        if let Some(g) = &self.generated {
            m.serialize_entry("generated", g)?;
        }
        m.end()
    }
}

/// One task of a loaded run.
struct RunTask {
    /// Its name in the run ("sst2").
    name: String,
    task: Task,
    /// The PETL task whose masks answer it.
    petl_task: String,
    info: TaskInfo,
}

enum Backend {
    Encoder {
        model: Box<dyn TaskModel>,
        tokenizer: EncoderTokenizer,
    },
    TextToText {
        model: T5TextToText,
        tokenizer: T5Tokenizer,
    },
}

/// A trained run, ready to predict.
pub struct Predictor {
    backend: Backend,
    tasks: Vec<RunTask>,
    multi: bool,
    max_len: usize,
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, file: &str) -> Result<T> {
    serde_json::from_str(
        &std::fs::read_to_string(dir.join(file))
            .with_context(|| format!("reading {}/{file}", dir.display()))?,
    )
    .with_context(|| format!("{}/{file} is malformed", dir.display()))
}

/// The task names of a run directory in the run's order (from its `config.toml`; loads no
/// model): the names [`Predictor::predict_tasks`] accepts.
pub fn run_task_names(dir: &Path) -> Result<Vec<String>> {
    let cfg = RunConfig::from_toml_file(&dir.join("config.toml"))
        .with_context(|| format!("is {} a run directory?", dir.display()))?;
    Ok(cfg
        .run_tasks()
        .iter()
        .map(|t| t.name().to_string())
        .collect())
}

impl Predictor {
    /// Load the best state of a run directory (`device` overrides the run's): an encoder
    /// (RoBERTa) run or a text-to-text (T5) run, single- or multi-task.
    pub fn load(dir: &Path, device: Option<DeviceSpec>) -> Result<Self> {
        let cfg = RunConfig::from_toml_file(&dir.join("config.toml"))
            .with_context(|| format!("is {} a run directory?", dir.display()))?;
        match cfg.model_family()? {
            ModelFamily::Encoder => Self::load_encoder(dir, cfg, device),
            ModelFamily::TextToText => Self::load_text_to_text(dir, device),
        }
    }

    fn load_encoder(dir: &Path, cfg: RunConfig, device: Option<DeviceSpec>) -> Result<Self> {
        let info: TaskInfo = read_json(dir, "task.json")?;
        let dev = device.unwrap_or(cfg.device).open()?;
        let (ckpt, model) = crate::run::load_encoder_run(dir, &cfg, info.kind, &dev)?;
        Ok(Self {
            backend: Backend::Encoder {
                model,
                tokenizer: ckpt.tokenizer()?,
            },
            tasks: vec![RunTask {
                name: cfg.task.name().to_string(),
                task: cfg.task,
                petl_task: "default".to_string(),
                info,
            }],
            multi: false,
            max_len: cfg.train.max_len,
        })
    }

    fn load_text_to_text(dir: &Path, device: Option<DeviceSpec>) -> Result<Self> {
        let run = text_to_text::load_run(dir, device)?;
        let cfg = &run.config;
        let multi = cfg.task == Task::GlueMulti;
        let infos: BTreeMap<String, TaskInfo> = if multi {
            read_json(dir, TASKS_INFO_FILE)?
        } else {
            [(cfg.task.name().to_string(), read_json(dir, "task.json")?)].into()
        };
        let max_len = cfg.train.max_len;
        let mut tasks = Vec::new();
        for task in cfg.run_tasks() {
            let name = task.name().to_string();
            let info = infos
                .get(&name)
                .cloned()
                .with_context(|| format!("{}: no label names for task `{name}`", dir.display()))?;
            tasks.push(RunTask {
                petl_task: name.clone(),
                name,
                task,
                info,
            });
        }
        let text_to_text::LoadedRun {
            mut model,
            tokenizer,
            ..
        } = run;
        // masks frozen and every task's masked modules cached: a task switch costs nothing
        model.materialize_for_inference()?;
        Ok(Self {
            backend: Backend::TextToText { model, tokenizer },
            tasks,
            multi,
            max_len,
        })
    }

    /// What the run predicts (the first task's, for a multi-task run).
    pub fn task(&self) -> &TaskInfo {
        &self.tasks[0].info
    }

    /// The run's task names, in the run's order.
    pub fn tasks(&self) -> Vec<&str> {
        self.tasks.iter().map(|t| t.name.as_str()).collect()
    }

    /// What task `name` predicts.
    pub fn task_info(&self, name: &str) -> Option<&TaskInfo> {
        self.tasks.iter().find(|t| t.name == name).map(|t| &t.info)
    }

    /// Whether the run is a multi-task run (outputs then carry their task).
    pub fn is_multi_task(&self) -> bool {
        self.multi
    }

    /// Whether the run answers in generated text (T5).
    pub fn is_text_to_text(&self) -> bool {
        matches!(self.backend, Backend::TextToText { .. })
    }

    /// Predict single texts (ids are their positions) of a single-task run.
    pub fn predict_texts(&self, texts: &[&str], batch_size: usize) -> Result<Vec<PredictOutput>> {
        self.predict(&positional(texts), batch_size, &mut |_| {})
    }

    /// Predict single texts (ids are their positions) for one task of the run.
    pub fn predict_texts_for(
        &self,
        task: &str,
        texts: &[&str],
        batch_size: usize,
    ) -> Result<Vec<PredictOutput>> {
        self.predict_tasks(
            &positional(texts),
            &vec![task; texts.len()],
            batch_size,
            &mut |_| {},
        )
    }

    /// Predict `inputs` of a single-task run in batches of similar lengths; outputs are in
    /// input order. `progress` is called with the number of inputs done after every batch.
    pub fn predict(
        &self,
        inputs: &[PredictInput],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<PredictOutput>> {
        if self.tasks.len() != 1 {
            bail!(
                "this run has several tasks ({}): give every input its task (predict_tasks)",
                self.task_list()
            );
        }
        let task = vec![self.tasks[0].name.as_str(); inputs.len()];
        self.predict_tasks(inputs, &task, batch_size, progress)
    }

    /// Predict `inputs`, input `i` for task `tasks[i]` (one of [`tasks`](Self::tasks)).
    /// Every task name is checked before any work. Each task's inputs are batched by length
    /// apart from the others' (one task's masks per forward pass), so every output is the one
    /// the input gets when its task's inputs are predicted alone; outputs are in input order.
    /// `progress` is called with the number of inputs done after every batch.
    pub fn predict_tasks<S: AsRef<str>>(
        &self,
        inputs: &[PredictInput],
        tasks: &[S],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<PredictOutput>> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        if tasks.len() != inputs.len() {
            bail!(
                "{} inputs but {} task names: one task per input",
                inputs.len(),
                tasks.len()
            );
        }
        let which = inputs
            .iter()
            .zip(tasks)
            .enumerate()
            .map(|(i, (x, t))| {
                let t = t.as_ref();
                self.tasks
                    .iter()
                    .position(|rt| rt.name == t)
                    .with_context(|| {
                        format!(
                            "input {i} (id `{}`): unknown task `{t}` (this run's tasks: {})",
                            x.id,
                            self.task_list()
                        )
                    })
            })
            .collect::<Result<Vec<usize>>>()?;
        let ids = inputs
            .iter()
            .zip(&which)
            .map(|(x, &t)| self.encode(&self.tasks[t], x))
            .collect::<Result<Vec<_>>>()?;
        let mut out: Vec<Option<PredictOutput>> = vec![None; inputs.len()];
        let mut done = 0;
        for (t, rt) in self.tasks.iter().enumerate() {
            let mut order: Vec<usize> = (0..inputs.len()).filter(|&i| which[i] == t).collect();
            order.sort_by_key(|&i| ids[i].len());
            for chunk in order.chunks(batch_size) {
                let rows: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
                for (&i, o) in chunk.iter().zip(self.predict_batch(rt, &rows)?) {
                    out[i] = Some(PredictOutput {
                        id: inputs[i].id.clone(),
                        task: self.multi.then(|| rt.name.clone()),
                        ..o
                    });
                }
                done += chunk.len();
                progress(done);
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every input predicted"))
            .collect())
    }

    fn task_list(&self) -> String {
        self.tasks().join(", ")
    }

    /// Token ids of an input: the encoder's tokens (pairs as pairs), or the text-to-text
    /// input text of its task.
    fn encode(&self, rt: &RunTask, x: &PredictInput) -> Result<Vec<u32>> {
        Ok(match &self.backend {
            Backend::Encoder { tokenizer, .. } => match &x.text_pair {
                Some(b) => tokenizer.encode_pair(&x.text, b)?,
                None => tokenizer.encode(&x.text)?,
            },
            Backend::TextToText { tokenizer, .. } => {
                let example = TextExample {
                    text_a: x.text.clone(),
                    text_b: x.text_pair.clone(),
                    label: 0.0,
                };
                tokenizer.encode(&text_to_text::input_text(rt.task, &example), self.max_len)?
            }
        })
    }

    /// Outputs (without id and task) of one batch of one task.
    fn predict_batch(&self, rt: &RunTask, rows: &[&[u32]]) -> Result<Vec<PredictOutput>> {
        let blank = PredictOutput {
            id: String::new(),
            task: None,
            label: None,
            probabilities: None,
            score: None,
            generated: None,
        };
        match &self.backend {
            Backend::Encoder { model, .. } => {
                let examples: Vec<Example> =
                    rows.iter().map(|r| Example::new(r.to_vec(), 0.0)).collect();
                let refs: Vec<&Example> = examples.iter().collect();
                let batch = model.collate(&refs, self.max_len, &rt.petl_task)?;
                Ok(model
                    .predict(&batch)?
                    .into_iter()
                    .map(|p| match p {
                        Prediction::Class { label, probs } => PredictOutput {
                            label: Some(class_name(&rt.info, label)),
                            probabilities: Some(
                                probs
                                    .iter()
                                    .enumerate()
                                    .map(|(i, &p)| (class_name(&rt.info, i), p))
                                    .collect(),
                            ),
                            ..blank.clone()
                        },
                        Prediction::Score { score } => PredictOutput {
                            score: Some(score),
                            ..blank.clone()
                        },
                    })
                    .collect())
            }
            Backend::TextToText { model, tokenizer } => {
                let t5 = model.inner();
                let (input_ids, attention_mask) = pad_batch(
                    rows,
                    self.max_len,
                    t5.config().pad_token_id,
                    model.petl().device(),
                )?;
                // the model's own answers (greedy, matched against the labels), with the text
                model
                    .answer(&input_ids, &attention_mask, &rt.petl_task)?
                    .into_iter()
                    .map(|(row, hit)| {
                        let text = tokenizer.decode(&row)?;
                        Ok(match rt.info.kind {
                            TaskKind::Regression => PredictOutput {
                                score: hit.map(|l| l.value),
                                generated: Some(text),
                                ..blank.clone()
                            },
                            TaskKind::Classification { .. } => PredictOutput {
                                label: hit.map(|l| class_name(&rt.info, l.value as usize)),
                                generated: Some(text),
                                ..blank.clone()
                            },
                        })
                    })
                    .collect()
            }
        }
    }
}

fn positional(texts: &[&str]) -> Vec<PredictInput> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| PredictInput::text(i.to_string(), *t))
        .collect()
}

fn class_name(info: &TaskInfo, i: usize) -> String {
    info.labels.get(i).cloned().unwrap_or_else(|| i.to_string())
}

/// How an input file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated with a header row.
    Csv,
    /// Tab-separated with a header row.
    Tsv,
    /// One input text per line.
    Lines,
}

impl InputFormat {
    /// The format of a file name by its extension (plain lines otherwise).
    pub fn from_path(path: &Path) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("jsonl") | Some("ndjson") | Some("json") => InputFormat::Jsonl,
            Some("csv") => InputFormat::Csv,
            Some("tsv") => InputFormat::Tsv,
            _ => InputFormat::Lines,
        }
    }
}

/// Which columns hold the id, the texts and the task (JSONL / CSV / TSV).
#[derive(Debug, Clone)]
pub struct Columns {
    /// Id column (absent: the row number, from 0).
    pub id: Option<String>,
    /// Text column.
    pub text: String,
    /// Second text column (pair tasks). With a task column, a JSONL row may leave it out
    /// (or null): its task is a single-text one.
    pub text_pair: Option<String>,
    /// Task column (multi-task runs): every row must have it.
    pub task: Option<String>,
}

/// One input row: the input, its task (when a task column is read) and where it is
/// (`source:line`, for errors).
#[derive(Debug, Clone, PartialEq)]
pub struct InputRow {
    /// The input.
    pub input: PredictInput,
    /// The row's task.
    pub task: Option<String>,
    /// `source:line`.
    pub at: String,
}

/// Parse inputs; `source` names the file in errors (`source:line: …`).
pub fn read_inputs(
    text: &str,
    format: InputFormat,
    columns: &Columns,
    source: &str,
) -> Result<Vec<PredictInput>> {
    Ok(read_rows(text, format, columns, source)?
        .into_iter()
        .map(|r| r.input)
        .collect())
}

/// Every row's task name: `all` for every row when given, else the row's own task (a row
/// without one takes the run's only task). Checked against the run's tasks before any work:
/// errors name the row and the run's tasks.
pub fn row_tasks(
    rows: &[InputRow],
    run_tasks: &[String],
    all: Option<&str>,
) -> Result<Vec<String>> {
    let list = run_tasks.join(", ");
    if let Some(t) = all {
        if !run_tasks.iter().any(|r| r == t) {
            bail!("unknown task `{t}` (this run's tasks: {list})");
        }
        return Ok(vec![t.to_string(); rows.len()]);
    }
    rows.iter()
        .map(|r| match (&r.task, run_tasks) {
            (Some(t), _) if run_tasks.contains(t) => Ok(t.clone()),
            (Some(t), _) => bail!("{}: unknown task `{t}` (this run's tasks: {list})", r.at),
            (None, [only]) => Ok(only.clone()),
            (None, _) => bail!(
                "{}: the row has no task, and this run has several ({list}): give each row its task (a task column) or one task for all rows",
                r.at
            ),
        })
        .collect()
}

/// Parse input rows (with their tasks when `columns.task` is given); `source` names the file
/// in errors (`source:line: …`).
pub fn read_rows(
    text: &str,
    format: InputFormat,
    columns: &Columns,
    source: &str,
) -> Result<Vec<InputRow>> {
    let mut out = Vec::new();
    match format {
        InputFormat::Lines => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                out.push(InputRow {
                    input: PredictInput::text(i.to_string(), line),
                    task: None,
                    at: format!("{source}:{}", i + 1),
                });
            }
        }
        InputFormat::Jsonl => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let at = format!("{source}:{}", i + 1);
                let v: serde_json::Value =
                    serde_json::from_str(line).with_context(|| format!("{at}: invalid JSON"))?;
                let field = |name: &str| -> Result<Option<String>> {
                    match v.get(name) {
                        None => Ok(None),
                        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                        Some(serde_json::Value::Number(n))
                            if Some(name) == columns.id.as_deref() =>
                        {
                            Ok(Some(n.to_string()))
                        }
                        Some(serde_json::Value::Null)
                            if columns.task.is_some()
                                && Some(name) == columns.text_pair.as_deref() =>
                        {
                            Ok(None)
                        }
                        Some(other) => {
                            bail!("{at}: column `{name}` must be a string, found {other}")
                        }
                    }
                };
                let text = field(&columns.text)?
                    .with_context(|| format!("{at}: no `{}` field", columns.text))?;
                let text_pair = match &columns.text_pair {
                    // rows of several tasks: single-text tasks have no second text
                    Some(c) if columns.task.is_some() => field(c)?,
                    Some(c) => Some(field(c)?.with_context(|| format!("{at}: no `{c}` field"))?),
                    None => None,
                };
                let id = match &columns.id {
                    Some(c) => field(c)?.with_context(|| format!("{at}: no `{c}` field"))?,
                    None => out.len().to_string(),
                };
                let task = match &columns.task {
                    Some(c) => Some(field(c)?.with_context(|| {
                        format!(
                            "{at}: no `{c}` field (the row's task; or give one task for all rows)"
                        )
                    })?),
                    None => None,
                };
                out.push(InputRow {
                    input: PredictInput {
                        id,
                        text,
                        text_pair,
                    },
                    task,
                    at,
                });
            }
        }
        InputFormat::Csv | InputFormat::Tsv => {
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(if format == InputFormat::Tsv {
                    b'\t'
                } else {
                    b','
                })
                .from_reader(text.as_bytes());
            let header = reader
                .headers()
                .with_context(|| format!("{source}: no header row"))?
                .clone();
            let col = |name: &str| {
                header.iter().position(|h| h == name).with_context(|| {
                    format!("{source}: the header has no `{name}` column ({:?})", header)
                })
            };
            let t = col(&columns.text)?;
            let p = columns.text_pair.as_deref().map(col).transpose()?;
            let idc = columns.id.as_deref().map(col).transpose()?;
            let taskc = match columns.task.as_deref() {
                Some(c) => Some(col(c).context(
                    "a task column names each row's task (or give one task for all rows)",
                )?),
                None => None,
            };
            for record in reader.records() {
                let r = record.with_context(|| format!("{source}: malformed row"))?;
                let line = r.position().map_or(0, |p| p.line());
                let get = |i: usize| {
                    r.get(i)
                        .map(str::to_string)
                        .with_context(|| format!("{source}:{line}: row has too few fields"))
                };
                let id = match idc {
                    Some(i) => get(i)?,
                    None => out.len().to_string(),
                };
                out.push(InputRow {
                    input: PredictInput {
                        id,
                        text: get(t)?,
                        text_pair: p.map(get).transpose()?,
                    },
                    task: taskc.map(get).transpose()?,
                    at: format!("{source}:{line}"),
                });
            }
        }
    }
    Ok(out)
}
