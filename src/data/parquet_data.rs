//! Parquet data, as the Hugging Face Hub's datasets store it.
//!
//! - GLUE in the `nyu-mll/glue` layout: `<dir>/<task>/train-*.parquet`,
//!   `validation-*.parquet` (MNLI: `validation_matched-*.parquet`), `test-*.parquet`, with the
//!   Hub's columns (`sentence`; `sentence1`,`sentence2`; `question`,`sentence`;
//!   `premise`,`hypothesis`; `question1`,`question2`; an integer `label`, -1 in the unlabeled
//!   test split; STS-B a float score; `idx`). [`GlueTask::splits`] takes these files when the
//!   task has no `train.tsv`; the split protocol is the same.
//! - Custom data (`[custom]` with `.parquet` files) with named columns: text columns hold
//!   strings, the label column strings, integers, floats (or booleans with `labels` names).
//!
//! Rows go through the same checks as the text formats: a bad row is an error naming the file
//! and row (`train.parquet: row 7: …`, rows counted from 1) or is skipped and counted. A
//! missing column, a column of the wrong type or a file that is not parquet fails before any
//! row is read, naming the file, the column and the columns it has.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use super::{read_bytes, text_field, CustomData, Dataset, GlueTask, Rows, TextExample};

/// Whether `path` names a parquet file (by its extension).
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Where a row is, for messages: `file:line` for text files, `file: row N` for parquet files
/// (which have no lines).
pub(super) fn position(path: &Path, line: u64) -> String {
    if is_parquet(path) {
        format!("{}: row {line}", path.display())
    } else {
        format!("{}:{line}", path.display())
    }
}

/// One value of a column.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Str(String),
    Int(i64),
    /// A float and how it prints (as the file's type prints it: `0.1` for a float32 0.1).
    Float(f64, String),
    Bool(bool),
}

/// What a column must hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Text,
    Label,
}

fn is_text_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_text_type(v),
        _ => false,
    }
}

fn is_label_type(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, v) => is_label_type(v),
        t => is_text_type(t) || t.is_integer() || t.is_floating() || *t == DataType::Boolean,
    }
}

/// The values of an array whose type passed [`is_text_type`] or [`is_label_type`].
fn cells(array: &dyn Array) -> Vec<Cell> {
    macro_rules! ints {
        ($t:ty) => {
            array
                .as_primitive::<$t>()
                .iter()
                .map(|v| {
                    v.map_or(Cell::Null, |v| {
                        Cell::Int(i64::try_from(v).unwrap_or(i64::MAX))
                    })
                })
                .collect()
        };
    }
    macro_rules! floats {
        ($t:ty) => {
            array
                .as_primitive::<$t>()
                .iter()
                .map(|v| v.map_or(Cell::Null, |v| Cell::Float(v as f64, v.to_string())))
                .collect()
        };
    }
    fn strs<'a>(it: impl Iterator<Item = Option<&'a str>>) -> Vec<Cell> {
        it.map(|v| v.map_or(Cell::Null, |s| Cell::Str(s.to_string())))
            .collect()
    }
    match array.data_type() {
        DataType::Utf8 => strs(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strs(array.as_string::<i64>().iter()),
        DataType::Utf8View => strs(array.as_string_view().iter()),
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| v.map_or(Cell::Null, Cell::Bool))
            .collect(),
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Float32 => floats!(Float32Type),
        DataType::Float64 => floats!(Float64Type),
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            let values = cells(dict.values().as_ref());
            if values.is_empty() {
                return vec![Cell::Null; array.len()];
            }
            dict.normalized_keys()
                .into_iter()
                .enumerate()
                .map(|(i, k)| {
                    if array.is_null(i) {
                        Cell::Null
                    } else {
                        values[k].clone()
                    }
                })
                .collect()
        }
        // unreachable after the type checks; an unsupported type reads as nulls
        _ => vec![Cell::Null; array.len()],
    }
}

/// The named columns of a parquet file, read whole.
struct Table {
    rows: usize,
    columns: HashMap<String, Vec<Cell>>,
}

impl Table {
    fn column(&self, name: &str) -> &[Cell] {
        self.columns.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Read the `wanted` columns of the parquet file `path` (its bytes). Fails naming the file
/// when it is empty or not parquet, when a column is missing (`layout` says what the file
/// should hold) or holds the wrong type.
fn read_table(path: &Path, bytes: Vec<u8>, wanted: &[(&str, Want)], layout: &str) -> Result<Table> {
    if bytes.is_empty() {
        bail!(
            "{}: empty file (0 bytes): a parquet file holds at least a schema and a footer",
            path.display()
        );
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .map_err(|e| anyhow::anyhow!("{}: not a readable parquet file ({e})", path.display()))?;
    let schema = builder.schema().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut roots = Vec::new();
    for &(name, want) in wanted {
        let Some(i) = names.iter().position(|n| *n == name) else {
            bail!(
                "{}: no column `{name}` (the file has {}){layout}",
                path.display(),
                if names.is_empty() {
                    "no columns".to_string()
                } else {
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        };
        let t = schema.field(i).data_type();
        let ok = match want {
            Want::Text => is_text_type(t),
            Want::Label => is_label_type(t),
        };
        if !ok {
            let expected = match want {
                Want::Text => "strings (a text column)",
                Want::Label => "strings, integers, floats or booleans (a label column)",
            };
            bail!(
                "{}: column `{name}` holds {t} values, expected {expected}{layout}",
                path.display()
            );
        }
        roots.push(i);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut columns: HashMap<String, Vec<Cell>> = wanted
        .iter()
        .map(|(n, _)| (n.to_string(), Vec::new()))
        .collect();
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| anyhow::anyhow!("{}: reading: {e}", path.display()))?;
        rows += batch.num_rows();
        // one entry per distinct name (a column may be wanted twice)
        for (name, out) in columns.iter_mut() {
            if let Some(col) = batch.column_by_name(name) {
                out.extend(cells(col.as_ref()));
            }
        }
    }
    Ok(Table { rows, columns })
}

/// A text cell, or what is wrong with it.
fn text_cell(column: &str, cell: &Cell) -> Result<String, String> {
    match cell {
        Cell::Str(s) => text_field(&format!("`{column}`"), s),
        Cell::Null => Err(format!("no text in column `{column}` (null)")),
        // the column types are checked before any row
        other => Err(format!("column `{column}` holds {other:?}, not text")),
    }
}

/// The files of one split in a folder of the Hub's layout: `<split>.parquet` or
/// `<split>-*.parquet` (shards), sorted by name.
pub fn split_files(folder: &Path, split: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                return false;
            };
            is_parquet(p)
                && p.is_file()
                && (name.len() == split.len() + ".parquet".len() && name.starts_with(split)
                    || name.starts_with(&format!("{split}-")))
        })
        .collect();
    files.sort();
    files
}

/// How a list of split files is named in messages: the file, or `folder/split-*.parquet (N
/// files)`.
fn describe(files: &[PathBuf], folder: &Path, split: &str) -> String {
    match files {
        [one] => one.display().to_string(),
        _ => format!(
            "{} ({} files)",
            folder.join(format!("{split}-*.parquet")).display(),
            files.len()
        ),
    }
}

/// The message for a Hub row labelled -1.
const UNLABELED: &str = "label -1: the Hub marks unlabeled rows (its test split) with -1; \
                         training and validation rows need labels";

impl GlueTask {
    /// The Hub's (`nyu-mll/glue`) text columns of this task: first text and optional second.
    pub fn hub_text_columns(&self) -> (&'static str, Option<&'static str>) {
        match self {
            GlueTask::Cola | GlueTask::Sst2 => ("sentence", None),
            GlueTask::Mrpc | GlueTask::Stsb | GlueTask::Rte => ("sentence1", Some("sentence2")),
            GlueTask::Qqp => ("question1", Some("question2")),
            GlueTask::Mnli => ("premise", Some("hypothesis")),
            GlueTask::Qnli => ("question", Some("sentence")),
        }
    }

    /// The Hub's validation split name (MNLI: `validation_matched`).
    pub fn hub_validation_split(&self) -> &'static str {
        if *self == GlueTask::Mnli {
            "validation_matched"
        } else {
            "validation"
        }
    }

    /// The Hub's label encoding, for messages.
    fn hub_label_hint(&self) -> &'static str {
        match self {
            GlueTask::Cola => "0 (unacceptable) or 1 (acceptable)",
            GlueTask::Sst2 => "0 (negative) or 1 (positive)",
            GlueTask::Mrpc => "0 (not_equivalent) or 1 (equivalent)",
            GlueTask::Qqp => "0 (not_duplicate) or 1 (duplicate)",
            GlueTask::Stsb => "a score in [0, 5]",
            GlueTask::Mnli => "0 (entailment), 1 (neutral) or 2 (contradiction)",
            GlueTask::Qnli | GlueTask::Rte => "0 (entailment) or 1 (not_entailment)",
        }
    }

    /// The label of a Hub row: the class index (the Hub's `ClassLabel` order equals the
    /// TSV loader's), STS-B's score, or a label name as in the TSV files.
    fn hub_label(&self, cell: &Cell) -> Result<f32, String> {
        let bad = |shown: &str| format!("bad label `{shown}` (expected {})", self.hub_label_hint());
        match cell {
            Cell::Null => Err("no label (null)".to_string()),
            Cell::Int(-1) => Err(UNLABELED.to_string()),
            Cell::Float(v, _) if *v == -1.0 => Err(UNLABELED.to_string()),
            Cell::Str(s) => self
                .label(s.trim())
                .ok_or_else(|| format!("bad label `{s}` (expected {})", self.label_hint())),
            Cell::Bool(b) => Err(bad(&b.to_string())),
            Cell::Int(v) if *self == GlueTask::Stsb => {
                if (0..=5).contains(v) {
                    Ok(*v as f32)
                } else {
                    Err(bad(&v.to_string()))
                }
            }
            Cell::Float(v, shown) if *self == GlueTask::Stsb => {
                if (0.0..=5.0).contains(v) {
                    Ok(*v as f32)
                } else {
                    Err(bad(shown))
                }
            }
            Cell::Int(v) => {
                if (0..self.num_labels() as i64).contains(v) {
                    Ok(*v as f32)
                } else {
                    Err(bad(&v.to_string()))
                }
            }
            Cell::Float(v, shown) => {
                if v.fract() == 0.0 && *v >= 0.0 && *v < self.num_labels() as f64 {
                    Ok(*v as f32)
                } else {
                    Err(bad(shown))
                }
            }
        }
    }

    /// The folder of this task in the Hub's layout under `glue_dir` (`<glue_dir>/sst2`, or
    /// the distribution's `<glue_dir>/SST-2`) when it holds `train*.parquet` files.
    pub fn parquet_folder(&self, glue_dir: &Path) -> Option<PathBuf> {
        [self.name(), self.dir_name()]
            .into_iter()
            .map(|d| glue_dir.join(d))
            .find(|f| !split_files(f, "train").is_empty())
    }

    /// Load one parquet file of this task in the Hub's layout. A bad row is an error
    /// `file: row N: …`, or skipped and counted.
    pub fn load_parquet(&self, path: &Path, skip_bad_rows: bool) -> Result<Dataset> {
        Ok(self.parquet_rows(path, skip_bad_rows)?.into_dataset())
    }

    fn parquet_rows(&self, path: &Path, skip_bad_rows: bool) -> Result<Rows> {
        let (a, b) = self.hub_text_columns();
        let mut wanted = vec![(a, Want::Text)];
        wanted.extend(b.map(|b| (b, Want::Text)));
        wanted.push(("label", Want::Label));
        let layout = format!(
            "; the Hub's nyu-mll/glue {} files have {}{}, label and idx",
            self.name(),
            a,
            b.map(|b| format!(", {b}")).unwrap_or_default()
        );
        let table = read_table(path, read_bytes(path)?, &wanted, &layout)?;
        let (ta, tb, y) = (
            table.column(a),
            b.map(|b| table.column(b)),
            table.column("label"),
        );
        let mut rows = Rows::default();
        for i in 0..table.rows {
            let row = (|| {
                Ok(TextExample {
                    text_a: text_cell(a, &ta[i])?,
                    text_b: match (b, tb) {
                        (Some(b), Some(tb)) => Some(text_cell(b, &tb[i])?),
                        _ => None,
                    },
                    label: self.hub_label(&y[i])?,
                })
            })();
            rows.push(path, i as u64 + 1, row, skip_bad_rows)?;
        }
        Ok(rows)
    }

    /// Every file of one split, concatenated in name order.
    fn load_parquet_files(&self, files: &[PathBuf], skip_bad_rows: bool) -> Result<Dataset> {
        let mut all = Dataset::default();
        for f in files {
            let d = self.load_parquet(f, skip_bad_rows)?;
            all.examples.extend(d.examples);
            all.skipped += d.skipped;
        }
        Ok(all)
    }

    /// Train and validation data of this task from the Hub's parquet layout with the
    /// sources' descriptions, or `None` when `glue_dir` has no parquet files for it (or has
    /// the distribution's `train.tsv`). A `glue_dir` that is no local folder but a Hub
    /// dataset id (`nyu-mll/glue`) is the task's files in the Hugging Face cache
    /// ([`crate::hub::resolve_dataset`]).
    pub(super) fn parquet_train_dev(
        &self,
        glue_dir: &Path,
        skip_bad_rows: bool,
    ) -> Result<Option<(Dataset, String, Dataset, String)>> {
        // a Hub dataset id (`nyu-mll/glue`) that is not a local folder: its cached snapshot
        let resolved;
        let glue_dir = if !glue_dir.exists() && crate::hub::dataset_id(glue_dir).is_some() {
            let train = format!("{}/train", self.name());
            let dev = format!("{}/{}", self.name(), self.hub_validation_split());
            resolved = crate::hub::resolve_dataset(glue_dir, &[&train, &dev])?;
            resolved.as_path()
        } else {
            glue_dir
        };
        // the distribution's TSV files win when both are there
        if glue_dir.join(self.dir_name()).join("train.tsv").is_file() {
            return Ok(None);
        }
        let Some(folder) = self.parquet_folder(glue_dir) else {
            return Ok(None);
        };
        let dev_split = self.hub_validation_split();
        let train_files = split_files(&folder, "train");
        let dev_files = split_files(&folder, dev_split);
        if dev_files.is_empty() {
            bail!(
                "{}: train parquet files but no {dev_split}-*.parquet beside them (the Hub's \
                 nyu-mll/glue layout: <task>/train-*.parquet, {dev_split}-*.parquet, \
                 test-*.parquet)",
                folder.display()
            );
        }
        let train = self.load_parquet_files(&train_files, skip_bad_rows)?;
        let dev = self.load_parquet_files(&dev_files, skip_bad_rows)?;
        Ok(Some((
            train,
            describe(&train_files, &folder, "train"),
            dev,
            describe(&dev_files, &folder, dev_split),
        )))
    }
}

/// The rows of a custom parquet file (the bytes of `path`): the configured text columns
/// hold strings; the label column strings or numbers read as the text formats read them (or
/// booleans when `labels` names the classes).
pub(super) fn custom_rows(
    data: &CustomData,
    path: &Path,
    bytes: Vec<u8>,
    skip_bad_rows: bool,
) -> Result<Rows> {
    let a = data.text_column.as_str();
    let b = data.text_pair_column.as_deref();
    let k = data.label_column.as_str();
    let mut wanted = vec![(a, Want::Text)];
    wanted.extend(b.map(|b| (b, Want::Text)));
    wanted.push((k, Want::Label));
    let table = read_table(path, bytes, &wanted, "")?;
    let (ta, tb, y) = (table.column(a), b.map(|b| table.column(b)), table.column(k));
    let mut rows = Rows::default();
    for i in 0..table.rows {
        let row = (|| {
            let label_raw = match &y[i] {
                Cell::Str(s) => s.clone(),
                Cell::Int(v) => v.to_string(),
                Cell::Float(_, shown) => shown.clone(),
                Cell::Bool(v) if data.labels.is_some() => v.to_string(),
                Cell::Bool(v) => {
                    return Err(format!(
                        "column `{k}` holds a boolean ({v}): name the classes with `labels` \
                         (e.g. [\"false\", \"true\"]) to use it"
                    ))
                }
                Cell::Null => return Err(format!("no label in column `{k}` (null)")),
            };
            Ok(TextExample {
                text_a: text_cell(a, &ta[i])?,
                text_b: match (b, tb) {
                    (Some(b), Some(tb)) => Some(text_cell(b, &tb[i])?),
                    _ => None,
                },
                label: data.label(&label_raw)?,
            })
        })();
        rows.push(path, i as u64 + 1, row, skip_bad_rows)?;
    }
    Ok(rows)
}
