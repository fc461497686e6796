//! Hugging Face conventions without the network: models by Hub id from a Hugging Face cache
//! these tests build from the tiny fixtures (the exact `hf-hub` layout, offline mode), and
//! GLUE / custom data from parquet files in the Hub's layout that the tests write with the
//! Arrow writer: they load to the same examples as the TSV / JSONL files, a run on them by
//! Hub id equals the run on the local folder and the TSV files, and broken files fail with
//! messages naming the file, the row or column, and what was expected.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use propetl::data::{CustomData, GlueTask, Splits, TextExample};
use propetl::hub::{resolve_model, resolve_model_with, HubSettings};
use propetl::predict::Predictor;
use propetl::run::{run_with, RunConfig, RunOptions, Task};
use propetl::runtime::Variant;
use propetl::train::Silent;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The id under which the tiny RoBERTa fixture sits in the test cache.
const TINY_ID: &str = "propetl-test/tiny-roberta";
/// Its commit in the test cache.
const REV: &str = "0123456789abcdef0123456789abcdef01234567";

/// Put the files of `model` into `cache` as the Hugging Face cache holds a download of `id`:
/// `models--org--name/refs/main` (the commit, no newline), `snapshots/<commit>/<file>`
/// (relative symlinks on Unix, copies elsewhere) and `blobs/<hash>`.
fn add_to_cache(cache: &Path, id: &str, model: &Path, files: &[&str]) -> PathBuf {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(REV);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(repo.join("refs/main"), REV).unwrap();
    for f in files {
        let bytes = std::fs::read(model.join(f)).unwrap();
        // the Hub names blobs by their sha256 (LFS) or git hash; any content hash will do here
        let blob = format!(
            "{:016x}{:016x}",
            propetl::data::stable_hash(&String::from_utf8_lossy(&bytes), 1),
            bytes.len()
        );
        std::fs::write(repo.join("blobs").join(&blob), &bytes).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(f)).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(repo.join("blobs").join(&blob), snapshot.join(f)).unwrap();
    }
    snapshot
}

/// One Hugging Face cache for this test binary, holding the tiny RoBERTa as [`TINY_ID`];
/// `HF_HUB_CACHE` points at it and `HF_HUB_OFFLINE=1` (set once, before any test reads them,
/// the same for every test of this binary).
fn cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let cache = dir.join("hub");
        add_to_cache(
            &cache,
            TINY_ID,
            &fixtures().join("tiny-roberta"),
            &["config.json", "model.safetensors", "tokenizer.json"],
        );
        // the Hub's GLUE as a cached dataset: datasets--nyu-mll--glue/snapshots/<rev>/<task>/…
        let glue = cache.join("datasets--nyu-mll--glue");
        std::fs::create_dir_all(glue.join("refs")).unwrap();
        std::fs::write(glue.join("refs/main"), REV).unwrap();
        write_glue_dir(&glue.join("snapshots").join(REV));
        // Rust 2021: setting the environment is safe; every test of this binary sees the
        // same values
        std::env::set_var("HF_HUB_CACHE", &cache);
        std::env::set_var("HF_HUB_OFFLINE", "1");
        cache
    })
}

fn snapshot() -> PathBuf {
    cache()
        .join("models--propetl-test--tiny-roberta/snapshots")
        .join(REV)
}

#[test]
fn a_hub_id_resolves_to_its_cached_snapshot_offline() {
    cache();
    let dir = resolve_model(TINY_ID).unwrap();
    assert_eq!(dir, snapshot());
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(fixtures().join("tiny-roberta").join(f)).unwrap(),
            "{f}"
        );
    }
    // the settings are those of the environment
    let settings = HubSettings::from_env();
    assert_eq!(settings.cache_dir, cache());
    assert!(settings.offline);
    // a pinned commit resolves too (the Python client stores those without a ref)
    assert_eq!(
        resolve_model(format!("{TINY_ID}@{REV}")).unwrap(),
        snapshot()
    );
    // and the checkpoint opens from there
    propetl::models::roberta::Checkpoint::open(&dir, &candle_core::Device::Cpu).unwrap();
}

#[test]
fn an_existing_local_path_is_always_the_local_folder() {
    cache();
    let local = fixtures().join("tiny-roberta");
    assert_eq!(resolve_model(&local).unwrap(), local);
    // `tests/fixtures` reads like an `org/name` id, but it exists here (tests run in the
    // package root): the local folder wins
    assert_eq!(
        resolve_model("tests/fixtures").unwrap(),
        PathBuf::from("tests/fixtures")
    );
    let err = resolve_model("./no/such/model-folder")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model folder ./no/such/model-folder does not exist")
            && err.contains("config.json")
            && err.contains("or a Hugging Face Hub id"),
        "{err}"
    );
}

#[test]
fn an_uncached_id_offline_fails_naming_the_id_the_cache_and_the_fix() {
    let err = format!(
        "{:#}",
        resolve_model("FacebookAI/roberta-base").unwrap_err()
    );
    let searched = cache().join("models--FacebookAI--roberta-base");
    for needle in [
        "`FacebookAI/roberta-base` is not a local folder",
        &format!("searched {}", searched.display()),
        "HF_HUB_OFFLINE is set",
        "huggingface-cli download FacebookAI/roberta-base",
        "HF_HUB_CACHE or HF_HOME",
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    // a cached repository whose snapshot lacks the weights is not enough either
    let partial = tempfile::tempdir().unwrap();
    add_to_cache(
        partial.path(),
        "org/partial",
        &fixtures().join("tiny-roberta"),
        &["config.json"],
    );
    let settings = HubSettings {
        cache_dir: partial.path().to_path_buf(),
        ..HubSettings::from_env()
    };
    let err = format!(
        "{:#}",
        resolve_model_with(Path::new("org/partial"), &settings).unwrap_err()
    );
    assert!(err.contains("lacks model.safetensors"), "{err}");
}

#[test]
fn an_uncached_id_with_the_hub_unreachable_fails_naming_the_id_the_cache_and_the_fix() {
    // a loopback port nothing listens on stands for an unreachable Hub: no network is used
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let empty = tempfile::tempdir().unwrap();
    let settings = HubSettings {
        cache_dir: empty.path().to_path_buf(),
        offline: false,
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        token: None,
        progress: false,
    };
    let err = format!(
        "{:#}",
        resolve_model_with(Path::new("google-t5/t5-base"), &settings).unwrap_err()
    );
    for needle in [
        "`google-t5/t5-base` is not a local folder".to_string(),
        format!(
            "searched {}",
            empty.path().join("models--google-t5--t5-base").display()
        ),
        format!("fetching it from http://127.0.0.1:{port} failed"),
        "huggingface-cli download google-t5/t5-base".to_string(),
    ] {
        assert!(err.contains(&needle), "`{needle}` missing from: {err}");
    }
    // a cached model without its tokenizer: online, completing it is tried; when the Hub is
    // unreachable, the snapshot as it is
    let snapshot = add_to_cache(
        empty.path(),
        "org/no-tokenizer",
        &fixtures().join("tiny-roberta"),
        &["config.json", "model.safetensors"],
    );
    assert_eq!(
        resolve_model_with(Path::new("org/no-tokenizer"), &settings).unwrap(),
        snapshot
    );
}

// ---------------------------------------------------------------------------------------
// parquet

/// A column of a parquet file to write.
enum Col {
    Str(Vec<Option<String>>),
    I64(Vec<Option<i64>>),
    I32(Vec<i32>),
    F32(Vec<f32>),
}

fn write_parquet(path: &Path, cols: Vec<(&str, Col)>) {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (name, col) in cols {
        let (t, a): (DataType, ArrayRef) = match col {
            Col::Str(v) => (DataType::Utf8, Arc::new(StringArray::from(v))),
            Col::I64(v) => (DataType::Int64, Arc::new(Int64Array::from(v))),
            Col::I32(v) => (DataType::Int32, Arc::new(Int32Array::from(v))),
            Col::F32(v) => (DataType::Float32, Arc::new(Float32Array::from(v))),
        };
        fields.push(Field::new(name, t, true));
        arrays.push(a);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // snappy as the Hub writes; small row groups, so files span several
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(7))
        .build();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn texts(xs: &[TextExample], b: bool) -> Col {
    Col::Str(
        xs.iter()
            .map(|e| {
                Some(if b {
                    e.text_b.clone().unwrap()
                } else {
                    e.text_a.clone()
                })
            })
            .collect(),
    )
}

/// `examples` as one file of the Hub's `nyu-mll/glue` layout for `task`.
fn write_glue(task: GlueTask, path: &Path, xs: &[TextExample]) {
    let (a, b) = task.hub_text_columns();
    let mut cols = vec![(a, texts(xs, false))];
    if let Some(b) = b {
        cols.push((b, texts(xs, true)));
    }
    let label = if task == GlueTask::Stsb {
        Col::F32(xs.iter().map(|e| e.label).collect())
    } else {
        Col::I64(xs.iter().map(|e| Some(e.label as i64)).collect())
    };
    cols.push(("label", label));
    cols.push(("idx", Col::I32((0..xs.len() as i32).collect())));
    write_parquet(path, cols);
}

fn same_examples(a: &Splits, b: &Splits) {
    assert_eq!(a.train, b.train);
    assert_eq!(a.eval, b.eval);
    assert_eq!(a.test, b.test);
    assert_eq!(a.skipped, b.skipped);
}

/// The TSV fixtures of every GLUE task rewritten as the Hub's parquet files under `dir`
/// (`<task>/train-00000-of-00002.parquet` + `-00001-` shards, `validation-…`, MNLI
/// `validation_matched-…`, a `test-…` file labelled -1).
fn write_glue_dir(dir: &Path) {
    for task in GlueTask::ALL {
        let dev_file = if task == GlueTask::Mnli {
            "dev_matched.tsv"
        } else {
            "dev.tsv"
        };
        let train = task
            .load(&fixtures().join("glue"), "train.tsv", false)
            .unwrap();
        let dev = task
            .load(&fixtures().join("glue"), dev_file, false)
            .unwrap();
        let folder = dir.join(task.name());
        let half = train.examples.len() / 2;
        write_glue(
            task,
            &folder.join("train-00000-of-00002.parquet"),
            &train.examples[..half],
        );
        write_glue(
            task,
            &folder.join("train-00001-of-00002.parquet"),
            &train.examples[half..],
        );
        write_glue(
            task,
            &folder.join(format!(
                "{}-00000-of-00001.parquet",
                task.hub_validation_split()
            )),
            &dev.examples,
        );
        let mut test = dev.examples.clone();
        for e in &mut test {
            e.label = -1.0;
        }
        write_glue(task, &folder.join("test-00000-of-00001.parquet"), &test);
    }
}

#[test]
fn glue_parquet_in_the_hub_layout_loads_the_same_examples_as_the_tsv_files() {
    let dir = tempfile::tempdir().unwrap();
    write_glue_dir(dir.path());
    for task in GlueTask::ALL {
        for plain in [false, true] {
            let tsv = task
                .splits(&fixtures().join("glue"), 42, plain, false)
                .unwrap();
            let pq = task.splits(dir.path(), 42, plain, false).unwrap();
            same_examples(&tsv, &pq);
            assert!(!pq.train.is_empty(), "{task:?}");
            assert!(
                pq.sources.train.contains("train-*.parquet (2 files)"),
                "{:?}",
                pq.sources
            );
        }
        // the test split has no labels (-1): a clear error, or every row skipped
        {
            let test = dir
                .path()
                .join(task.name())
                .join("test-00000-of-00001.parquet");
            let err = task.load_parquet(&test, false).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{}: row 1: label -1", test.display()))
                    && err.contains("unlabeled"),
                "{err}"
            );
            let skipped = task.load_parquet(&test, true).unwrap();
            assert!(skipped.examples.is_empty());
            assert!(skipped.skipped > 0);
        }
    }
}

#[test]
fn glue_by_hub_dataset_id_reads_the_cached_parquet_files() {
    cache();
    let hub = Path::new("nyu-mll/glue");
    for task in [GlueTask::Sst2, GlueTask::Mnli, GlueTask::Stsb] {
        let tsv = task
            .splits(&fixtures().join("glue"), 42, false, false)
            .unwrap();
        let pq = task.splits(hub, 42, false, false).unwrap();
        same_examples(&tsv, &pq);
        assert!(
            pq.sources.train.contains("datasets--nyu-mll--glue"),
            "{:?}",
            pq.sources
        );
    }
    // an uncached dataset offline: the id, the cache folder searched, the files and the fix
    let err = GlueTask::Rte
        .splits(Path::new("someone/glue-copy"), 42, false, false)
        .unwrap_err()
        .to_string();
    for needle in [
        "`someone/glue-copy` is not a local folder".to_string(),
        format!(
            "searched {}",
            cache().join("datasets--someone--glue-copy").display()
        ),
        "rte/train-*.parquet, rte/validation-*.parquet".to_string(),
        "HF_HUB_OFFLINE is set".to_string(),
        "huggingface-cli download someone/glue-copy --repo-type dataset".to_string(),
    ] {
        assert!(err.contains(&needle), "`{needle}` missing from: {err}");
    }
    // a missing local folder that cannot be a dataset id stays the TSV loader's error
    let err = GlueTask::Rte
        .splits(Path::new("/no/such/glue"), 42, false, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/glue/RTE/train.tsv"), "{err}");
}

#[test]
fn glue_parquet_row_and_file_errors_name_the_file_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let sst2 = dir.path().join("sst2");
    let train = sst2.join("train-00000-of-00001.parquet");
    let dev = sst2.join("validation-00000-of-00001.parquet");
    let s = |v: &[&str]| Col::Str(v.iter().map(|s| Some(s.to_string())).collect());
    write_parquet(
        &dev,
        vec![
            ("sentence", s(&["fine", "poor"])),
            ("label", Col::I64(vec![Some(1), Some(0)])),
        ],
    );
    let load = |skip: bool| GlueTask::Sst2.splits(dir.path(), 42, true, skip);

    // a label outside the classes, a null text: `file: row N: …`, or skipped and counted
    write_parquet(
        &train,
        vec![
            (
                "sentence",
                Col::Str(vec![Some("good".into()), None, Some("ok".into())]),
            ),
            ("label", Col::I64(vec![Some(1), Some(0), Some(7)])),
        ],
    );
    let err = load(false).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}: row 2: no text in column `sentence` (null)",
            train.display()
        )),
        "{err}"
    );
    let splits = load(true).unwrap();
    assert_eq!((splits.train.len(), splits.skipped), (1, 2));
    write_parquet(
        &train,
        vec![
            ("sentence", s(&["good", "ok"])),
            ("label", Col::I64(vec![Some(1), Some(7)])),
        ],
    );
    let err = load(false).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}: row 2: bad label `7` (expected 0 (negative) or 1 (positive))",
            train.display()
        )),
        "{err}"
    );

    // a missing column: the file, the column, the columns it has and the Hub's layout
    write_parquet(
        &train,
        vec![("text", s(&["good"])), ("label", Col::I64(vec![Some(1)]))],
    );
    let err = load(false).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}: no column `sentence` (the file has `text`, `label`)",
            train.display()
        )) && err.contains("nyu-mll/glue sst2 files have sentence, label and idx"),
        "{err}"
    );

    // a column of the wrong type
    write_parquet(
        &train,
        vec![
            ("sentence", Col::I64(vec![Some(3)])),
            ("label", Col::I64(vec![Some(1)])),
        ],
    );
    let err = load(false).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}: column `sentence` holds Int64 values, expected strings",
            train.display()
        )),
        "{err}"
    );

    // an empty file, a file that is not parquet
    std::fs::write(&train, b"").unwrap();
    let err = load(false).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{}: empty file (0 bytes)", train.display())),
        "{err}"
    );
    std::fs::write(&train, b"sentence\tlabel\ngood\t1\n").unwrap();
    let err = load(false).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{}: not a readable parquet file", train.display())),
        "{err}"
    );

    // a parquet file without rows: the split is empty, named with its source
    write_parquet(
        &train,
        vec![("sentence", s(&[])), ("label", Col::I64(vec![]))],
    );
    let err = load(false).unwrap().validate().unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "the train split is empty (from {})",
            train.display()
        )),
        "{err}"
    );

    // train files without validation files
    std::fs::remove_file(&dev).unwrap();
    let err = load(false).unwrap_err().to_string();
    assert!(err.contains("no validation-*.parquet beside them"), "{err}");
}

fn custom(train: &Path, dev: &Path) -> CustomData {
    CustomData {
        train: train.to_path_buf(),
        dev: dev.to_path_buf(),
        test: None,
        text_column: "review".into(),
        text_pair_column: None,
        label_column: "verdict".into(),
        labels: Some(vec!["bad".into(), "good".into()]),
        regression: false,
    }
}

#[test]
fn custom_parquet_loads_the_same_examples_as_jsonl_and_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<(String, &str, i64)> = (0..20)
        .map(|i| {
            let good = i % 3 != 0;
            (
                format!(
                    "review number {i} is {}",
                    if good { "great" } else { "dull" }
                ),
                if good { "good" } else { "bad" },
                good as i64,
            )
        })
        .collect();
    let jsonl = |name: &str, numeric: bool| {
        let p = dir.path().join(name);
        let text: String = rows
            .iter()
            .map(|(t, v, n)| {
                if numeric {
                    format!("{}\n", serde_json::json!({"review": t, "verdict": n}))
                } else {
                    format!("{}\n", serde_json::json!({"review": t, "verdict": v}))
                }
            })
            .collect();
        std::fs::write(&p, text).unwrap();
        p
    };
    let parquet = |name: &str, numeric: bool| {
        let p = dir.path().join(name);
        let label = if numeric {
            Col::I64(rows.iter().map(|r| Some(r.2)).collect())
        } else {
            Col::Str(rows.iter().map(|r| Some(r.1.to_string())).collect())
        };
        write_parquet(
            &p,
            vec![
                ("id", Col::I32((0..rows.len() as i32).collect())),
                (
                    "review",
                    Col::Str(rows.iter().map(|r| Some(r.0.clone())).collect()),
                ),
                ("verdict", label),
            ],
        );
        p
    };
    // named classes (string labels), then numeric class indices
    let (jt, jd) = (jsonl("train.jsonl", false), jsonl("dev.jsonl", false));
    let (pt, pd) = (
        parquet("train.parquet", false),
        parquet("dev.parquet", false),
    );
    let a = custom(&jt, &jd).splits(7, false).unwrap();
    let b = custom(&pt, &pd).splits(7, false).unwrap();
    same_examples(&a, &b);
    assert_eq!(b.train.len(), 20);
    // one column for both texts of a pair
    let pair = |c: CustomData| CustomData {
        text_pair_column: Some("review".into()),
        ..c
    };
    let a = pair(custom(&jt, &jd)).splits(7, false).unwrap();
    let b = pair(custom(&pt, &pd)).splits(7, false).unwrap();
    same_examples(&a, &b);
    assert_eq!(b.train[3].text_b.as_ref(), Some(&b.train[3].text_a));
    let numeric = |c: CustomData| CustomData { labels: None, ..c };
    let (jt, jd) = (jsonl("train-n.jsonl", true), jsonl("dev-n.jsonl", true));
    let (pt, pd) = (
        parquet("train-n.parquet", true),
        parquet("dev-n.parquet", true),
    );
    let a = numeric(custom(&jt, &jd)).splits(7, false).unwrap();
    let b = numeric(custom(&pt, &pd)).splits(7, false).unwrap();
    same_examples(&a, &b);

    // a dev row whose class the training data does not have: `file: row N`
    let bad_dev = dir.path().join("dev-bad.parquet");
    write_parquet(
        &bad_dev,
        vec![
            ("review", Col::Str(vec![Some("x".into()), Some("y".into())])),
            ("verdict", Col::I64(vec![Some(0), Some(5)])),
        ],
    );
    let err = numeric(custom(&pt, &bad_dev))
        .splits(7, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "{}: row 2: label 5 is outside the 2 classes",
            bad_dev.display()
        )),
        "{err}"
    );
    // a label name that is not a class
    let named_train = dir.path().join("train.parquet");
    let err = custom(&named_train, &bad_dev)
        .splits(7, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}: row 1: bad label `0`", bad_dev.display())),
        "{err}"
    );
    // a missing column, the wrong type
    let err = CustomData {
        label_column: "stars".into(),
        ..custom(&pt, &pd)
    }
    .splits(7, false)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "{}: no column `stars` (the file has `id`, `review`, `verdict`)",
            pt.display()
        )),
        "{err}"
    );
    let err = CustomData {
        text_column: "id".into(),
        ..custom(&pt, &pd)
    }
    .splits(7, false)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "{}: column `id` holds Int32 values, expected strings",
            pt.display()
        )),
        "{err}"
    );
    // an empty file
    let empty = dir.path().join("empty.parquet");
    std::fs::write(&empty, b"").unwrap();
    let err = custom(&empty, &pd)
        .splits(7, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}: empty file (0 bytes)", empty.display())),
        "{err}"
    );
}

/// A short SST-2 run on the tiny model.
fn quick(model: &str, data: &Path) -> RunConfig {
    let mut c = RunConfig::new("sst2".parse::<Task>().unwrap(), Variant::ProAdapter);
    c.model_dir = Some(model.into());
    c.data_dir = Some(data.to_path_buf());
    c.train.epochs = 2;
    c.train.batch_size = 8;
    c.train.lr = 3e-3;
    c.train.progress = false;
    c
}

#[test]
fn a_run_by_hub_id_on_parquet_data_equals_the_run_on_the_local_folder_and_tsv() {
    cache();
    let dir = tempfile::tempdir().unwrap();
    let glue = dir.path().join("glue");
    write_glue_dir(&glue);
    let local = fixtures().join("tiny-roberta");
    let (hub_out, local_out) = (dir.path().join("hub"), dir.path().join("local"));
    let by_id = run_with(
        &quick(TINY_ID, &glue),
        &hub_out,
        RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let by_path = run_with(
        &quick(local.to_str().unwrap(), &fixtures().join("glue")),
        &local_out,
        RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(by_id.eval, by_path.eval);
    assert_eq!(by_id.test, by_path.test);
    // the run keeps the id, and predicting resolves it again
    let cfg = RunConfig::from_toml_file(&hub_out.join("config.toml")).unwrap();
    assert_eq!(cfg.model_dir, Some(PathBuf::from(TINY_ID)));
    let texts = ["a great warm story", "a dull sad film"];
    let a = Predictor::load(&hub_out, None)
        .unwrap()
        .predict_texts(&texts, 2)
        .unwrap();
    let b = Predictor::load(&local_out, None)
        .unwrap()
        .predict_texts(&texts, 2)
        .unwrap();
    assert_eq!(a, b);
    // `model = "org/name"` in a TOML configuration is the same key
    let toml_path = dir.path().join("run.toml");
    std::fs::write(
        &toml_path,
        format!("task = \"sst2\"\nvariant = \"pro_adapter\"\nmodel = \"{TINY_ID}\"\n"),
    )
    .unwrap();
    assert_eq!(
        RunConfig::from_toml_file(&toml_path).unwrap().model_dir,
        Some(PathBuf::from(TINY_ID))
    );
}
