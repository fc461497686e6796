//! Prediction with a trained run: load a run directory, run its best state on new text.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let predictor = propetl::predict::Predictor::load("runs/latest".as_ref(), None)?;
//! let out = predictor.predict_texts(&["a gripping, beautifully shot film"], 32)?;
//! println!("{} {:?}", out[0].label.as_deref().unwrap_or("?"), out[0].probabilities);
//! # Ok(()) }
//! ```
//!
//! Inputs come from JSONL (one object per line), CSV / TSV (a header row) or plain text (one
//! input per line); outputs keep the input order.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_nn::VarMap;
use propetl_models::roberta::{self, Checkpoint};
use propetl_models::tokenizer::EncoderTokenizer;
use propetl_runtime::{DeviceSpec, Example, PetlRng, Prediction, TaskKind, TaskModel};
use serde::{Deserialize, Serialize};

use crate::run::{builtin_tiny, RunConfig, BEST_FILE};

/// What a run predicts (`task.json` of a run directory).
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

/// One output line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictOutput {
    /// The input's id.
    pub id: String,
    /// The predicted class name (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Probability of every class by name (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<BTreeMap<String, f32>>,
    /// The predicted score (regression).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

/// A trained run, ready to predict.
pub struct Predictor {
    model: Box<dyn TaskModel>,
    tokenizer: EncoderTokenizer,
    info: TaskInfo,
    max_len: usize,
}

impl Predictor {
    /// Load the best state of a run directory (`device` overrides the run's).
    pub fn load(dir: &Path, device: Option<DeviceSpec>) -> Result<Self> {
        let cfg = RunConfig::from_toml_file(&dir.join("config.toml"))
            .with_context(|| format!("is {} a run directory?", dir.display()))?;
        let info: TaskInfo = serde_json::from_str(
            &std::fs::read_to_string(dir.join("task.json"))
                .with_context(|| format!("reading {}/task.json", dir.display()))?,
        )
        .with_context(|| format!("{}/task.json is malformed", dir.display()))?;
        let best = dir.join(BEST_FILE);
        if !best.exists() {
            bail!(
                "{} has no {BEST_FILE} (no epoch finished): nothing to predict with",
                dir.display()
            );
        }
        let dev = device.unwrap_or(cfg.device).open()?;
        let ckpt = match &cfg.model_dir {
            Some(d) => Checkpoint::open(crate::hub::resolve_model(d)?, &dev)?,
            None => builtin_tiny(&dev)?,
        };
        let mut model = roberta::build(
            cfg.variant,
            &ckpt,
            info.kind,
            &cfg.petl,
            &VarMap::new(),
            &mut PetlRng::seed(cfg.train.seed),
        )?;
        model.restore(&best)?;
        Ok(Self {
            model,
            tokenizer: ckpt.tokenizer()?,
            info,
            max_len: cfg.train.max_len,
        })
    }

    /// What the run predicts.
    pub fn task(&self) -> &TaskInfo {
        &self.info
    }

    /// Predict single texts (ids are their positions).
    pub fn predict_texts(&self, texts: &[&str], batch_size: usize) -> Result<Vec<PredictOutput>> {
        let inputs: Vec<PredictInput> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| PredictInput {
                id: i.to_string(),
                text: t.to_string(),
                text_pair: None,
            })
            .collect();
        self.predict(&inputs, batch_size, &mut |_| {})
    }

    /// Predict `inputs` in batches of similar lengths; outputs are in input order.
    /// `progress` is called with the number of inputs done after every batch.
    pub fn predict(
        &self,
        inputs: &[PredictInput],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<PredictOutput>> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let examples = inputs
            .iter()
            .map(|x| {
                let ids = match &x.text_pair {
                    Some(b) => self.tokenizer.encode_pair(&x.text, b)?,
                    None => self.tokenizer.encode(&x.text)?,
                };
                Ok(Example::new(ids, 0.0))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.sort_by_key(|&i| examples[i].ids.len());
        let mut out: Vec<Option<PredictOutput>> = vec![None; inputs.len()];
        let mut done = 0;
        for chunk in order.chunks(batch_size) {
            let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
            let batch = self.model.collate(&refs, self.max_len, "default")?;
            for (&i, p) in chunk.iter().zip(self.model.predict(&batch)?) {
                out[i] = Some(self.output(&inputs[i].id, p));
            }
            done += chunk.len();
            progress(done);
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every input predicted"))
            .collect())
    }

    fn output(&self, id: &str, p: Prediction) -> PredictOutput {
        match p {
            Prediction::Class { label, probs } => PredictOutput {
                id: id.to_string(),
                label: Some(self.class_name(label)),
                probabilities: Some(
                    probs
                        .iter()
                        .enumerate()
                        .map(|(i, &p)| (self.class_name(i), p))
                        .collect(),
                ),
                score: None,
            },
            Prediction::Score { score } => PredictOutput {
                id: id.to_string(),
                label: None,
                probabilities: None,
                score: Some(score),
            },
        }
    }

    fn class_name(&self, i: usize) -> String {
        self.info
            .labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| i.to_string())
    }
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

/// Which columns hold the id and the texts (JSONL / CSV / TSV).
#[derive(Debug, Clone)]
pub struct Columns {
    /// Id column (absent: the row number, from 0).
    pub id: Option<String>,
    /// Text column.
    pub text: String,
    /// Second text column (pair tasks).
    pub text_pair: Option<String>,
}

/// Parse inputs; `source` names the file in errors (`source:line: …`).
pub fn read_inputs(
    text: &str,
    format: InputFormat,
    columns: &Columns,
    source: &str,
) -> Result<Vec<PredictInput>> {
    let mut out = Vec::new();
    match format {
        InputFormat::Lines => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                out.push(PredictInput {
                    id: i.to_string(),
                    text: line.to_string(),
                    text_pair: None,
                });
            }
        }
        InputFormat::Jsonl => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let at = || format!("{source}:{}", i + 1);
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}: invalid JSON", at()))?;
                let field = |name: &str| -> Result<Option<String>> {
                    match v.get(name) {
                        None => Ok(None),
                        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                        Some(serde_json::Value::Number(n))
                            if Some(name) == columns.id.as_deref() =>
                        {
                            Ok(Some(n.to_string()))
                        }
                        Some(other) => {
                            bail!("{}: column `{name}` must be a string, found {other}", at())
                        }
                    }
                };
                let text = field(&columns.text)?
                    .with_context(|| format!("{}: no `{}` field", at(), columns.text))?;
                let text_pair = match &columns.text_pair {
                    Some(c) => {
                        Some(field(c)?.with_context(|| format!("{}: no `{c}` field", at()))?)
                    }
                    None => None,
                };
                let id = match &columns.id {
                    Some(c) => field(c)?.with_context(|| format!("{}: no `{c}` field", at()))?,
                    None => out.len().to_string(),
                };
                out.push(PredictInput {
                    id,
                    text,
                    text_pair,
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
                out.push(PredictInput {
                    id,
                    text: get(t)?,
                    text_pair: p.map(get).transpose()?,
                });
            }
        }
    }
    Ok(out)
}
