//! Data is checked (issue 10): every malformed row of every loader is an error naming its
//! file and line, or is skipped and counted when skipping is asked for; splits report their
//! skipped rows, fail early when empty, and labels outside the task fail instead of scoring.

use std::path::{Path, PathBuf};

use propetl::data::{
    check_labels, hash_split, load_rotten_tomatoes_checked, load_vader_movies_checked, CustomData,
    GlueTask, SplitSources, Splits, TextExample, MAX_CLASSES,
};

/// Which loader reads a case's file.
#[derive(Clone, Copy)]
enum Loader {
    /// `GlueTask::load` of `<dir>/<Task>/train.tsv`.
    Glue(GlueTask),
    /// `CustomData::load_file` of a `.jsonl` / `.csv` file with columns `text`, `label`
    /// (and `text2` when `pair`), classes named by `labels` or numeric.
    Custom {
        ext: &'static str,
        labels: Option<&'static [&'static str]>,
        regression: bool,
        pair: bool,
    },
    /// `CustomData::splits` with the case as the dev file; train and test hold classes 0, 1.
    CustomDev,
    /// `load_rotten_tomatoes_checked`.
    Rotten,
    /// `load_vader_movies_checked`.
    Vader,
}

const JSONL: Loader = Loader::Custom {
    ext: "jsonl",
    labels: None,
    regression: false,
    pair: false,
};
const CSV: Loader = Loader::Custom {
    ext: "csv",
    labels: None,
    regression: false,
    pair: false,
};

enum Expect {
    /// Without skipping: an error containing `<path>:<line>` and the message. With
    /// skipping: `Some((skipped, kept))`, or `None` when the error is not a row's (fatal).
    Fails {
        line: u64,
        msg: &'static str,
        skipped: Option<(usize, usize)>,
    },
    /// Loads without skipping, keeping this many examples.
    Loads(usize),
}
use Expect::{Fails, Loads};

struct Case {
    name: &'static str,
    loader: Loader,
    contents: &'static [u8],
    expect: Expect,
}

const SST2_HEAD: &str = "sentence\tlabel\n";

fn cases() -> Vec<Case> {
    use GlueTask::*;
    let fails = |line, msg, skipped| Fails { line, msg, skipped };
    vec![
        // ---- GLUE TSV ----
        Case {
            name: "glue: too few columns",
            loader: Loader::Glue(Sst2),
            contents: b"sentence\tlabel\ngood film\t1\nno label column here\n",
            expect: fails(3, "expected at least 2 tab-separated columns, found 1", Some((1, 1))),
        },
        Case {
            name: "glue: bad label",
            loader: Loader::Glue(Sst2),
            contents: b"sentence\tlabel\ngood\t1\nfine film\tmaybe\n",
            expect: fails(3, "bad label `maybe` (expected 0 or 1)", Some((1, 1))),
        },
        Case {
            name: "glue: empty text",
            loader: Loader::Glue(Sst2),
            contents: b"sentence\tlabel\n\t1\ngood\t0\n",
            expect: fails(2, "empty text in column `sentence`", Some((1, 1))),
        },
        Case {
            name: "glue: blank second sentence",
            loader: Loader::Glue(Rte),
            contents: b"index\tsentence1\tsentence2\tlabel\n0\tA man\t \tentailment\n1\tA\tB\tnot_entailment\n",
            expect: fails(2, "empty text in column `sentence2`", Some((1, 1))),
        },
        Case {
            name: "glue: STS-B score outside [0, 5]",
            loader: Loader::Glue(Stsb),
            contents: b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n\
                        0\tg\tf\t2012\t0\ts\ts\tA\tB\t3.2\n\
                        1\tg\tf\t2012\t1\ts\ts\tA\tB\t7.5\n",
            expect: fails(3, "bad label `7.5` (expected a score in [0, 5])", Some((1, 1))),
        },
        Case {
            name: "glue: STS-B NaN score",
            loader: Loader::Glue(Stsb),
            contents: b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n\
                        0\tg\tf\t2012\t0\ts\ts\tA\tB\tNaN\n",
            expect: fails(2, "bad label `NaN`", Some((1, 0))),
        },
        Case {
            name: "glue: CoLA (no header) empty sentence",
            loader: Loader::Glue(Cola),
            contents: b"src\t1\t\t \nsrc\t0\t*\tgood\n",
            expect: fails(1, "empty text in column 4", Some((1, 1))),
        },
        Case {
            name: "glue: invalid UTF-8",
            loader: Loader::Glue(Sst2),
            contents: b"sentence\tlabel\n\xff\xfe bad\t1\ngood\t0\n",
            expect: fails(2, "invalid UTF-8", Some((1, 1))),
        },
        Case {
            name: "glue: QNLI unknown label",
            loader: Loader::Glue(Qnli),
            contents: b"index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailed\n",
            expect: fails(
                2,
                "bad label `entailed` (expected entailment or not_entailment)",
                Some((1, 0)),
            ),
        },
        // ---- custom JSONL ----
        Case {
            name: "jsonl: label 1e30 would wrap",
            loader: JSONL,
            contents: b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 1e30}\n",
            expect: fails(2, "bad label `1e+30`: class indices must be below MAX_CLASSES = 10000", Some((1, 1))),
        },
        Case {
            name: "jsonl: label 1e8 would ask for a huge head",
            loader: JSONL,
            contents: b"{\"text\": \"b\", \"label\": 100000000}\n",
            expect: fails(1, "bad label `100000000`: class indices must be below MAX_CLASSES", Some((1, 0))),
        },
        Case {
            name: "jsonl: negative class",
            loader: JSONL,
            contents: b"{\"text\": \"a\", \"label\": 1}\n\n{\"text\": \"b\", \"label\": -1}\n",
            expect: fails(3, "bad label `-1` (a class index is an integer 0 to 9999", Some((1, 1))),
        },
        Case {
            name: "jsonl: fractional class",
            loader: JSONL,
            contents: b"{\"text\": \"b\", \"label\": \"2.5\"}\n",
            expect: fails(1, "bad label `2.5` (a class index is an integer", Some((1, 0))),
        },
        Case {
            name: "jsonl: number as text",
            loader: JSONL,
            contents: b"{\"text\": 5, \"label\": 1}\n",
            expect: fails(1, "column `text` must be a string, found a number (5)", Some((1, 0))),
        },
        Case {
            name: "jsonl: null as text",
            loader: JSONL,
            contents: b"{\"text\": \"ok\", \"label\": 1}\n{\"text\": null, \"label\": 1}\n",
            expect: fails(2, "column `text` must be a string, found null", Some((1, 1))),
        },
        Case {
            name: "jsonl: array as text",
            loader: JSONL,
            contents: b"{\"text\": [\"a\", \"b\"], \"label\": 1}\n",
            expect: fails(1, "column `text` must be a string, found an array", Some((1, 0))),
        },
        Case {
            name: "jsonl: object as second text",
            loader: Loader::Custom {
                ext: "jsonl",
                labels: None,
                regression: false,
                pair: true,
            },
            contents: b"{\"text\": \"a\", \"text2\": {\"x\": 1}, \"label\": 0}\n",
            expect: fails(1, "column `text2` must be a string, found an object", Some((1, 0))),
        },
        Case {
            name: "jsonl: null label",
            loader: JSONL,
            contents: b"{\"text\": \"a\", \"label\": null}\n",
            expect: fails(1, "column `label` must be a string or a number, found null", Some((1, 0))),
        },
        Case {
            name: "jsonl: a line that is not an object",
            loader: JSONL,
            contents: b"{\"text\": \"a\", \"label\": 0}\n[1, 2]\n",
            expect: fails(2, "expected a JSON object, found an array", Some((1, 1))),
        },
        Case {
            name: "jsonl: blank text",
            loader: JSONL,
            contents: b"{\"text\": \"  \", \"label\": 0}\n",
            expect: fails(1, "empty text in column `text`", Some((1, 0))),
        },
        Case {
            name: "jsonl: missing text",
            loader: JSONL,
            contents: b"{\"label\": 0}\n",
            expect: fails(1, "missing field `text`", Some((1, 0))),
        },
        Case {
            name: "jsonl: invalid JSON",
            loader: JSONL,
            contents: b"{\"text\": \"a\", \"label\": 0}\nnot json\n",
            expect: fails(2, "invalid JSON", Some((1, 1))),
        },
        Case {
            name: "jsonl: non-finite regression target",
            loader: Loader::Custom {
                ext: "jsonl",
                labels: None,
                regression: true,
                pair: false,
            },
            contents: b"{\"text\": \"a\", \"label\": 0.5}\n{\"text\": \"b\", \"label\": \"inf\"}\n",
            expect: fails(2, "bad label `inf` (not a finite number)", Some((1, 1))),
        },
        Case {
            name: "jsonl: unknown class name",
            loader: Loader::Custom {
                ext: "jsonl",
                labels: Some(&["neg", "pos"]),
                regression: false,
                pair: false,
            },
            contents: b"{\"text\": \"a\", \"label\": \"meh\"}\n",
            expect: fails(1, "bad label `meh` (expected one of: neg, pos)", Some((1, 0))),
        },
        Case {
            name: "jsonl: numbers are fine as numeric labels",
            loader: JSONL,
            contents: b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 9999}\n{\"text\": \"c\", \"label\": \"1\"}\n",
            expect: Loads(3),
        },
        // ---- custom CSV ----
        Case {
            name: "csv: unterminated quote",
            loader: CSV,
            contents: b"text,label\ngood,1\n\"never closed,0\nfine,1\nok,0\n",
            expect: fails(3, "unterminated quote", None),
        },
        Case {
            name: "csv: unterminated quote after a closed multi-line one",
            loader: CSV,
            contents: b"text,label\n\"two\nlines\",1\nfine,0\nok,\"1\n",
            expect: fails(5, "unterminated quote", None),
        },
        Case {
            name: "csv: unquoted comma",
            loader: CSV,
            contents: b"text,label\ngood, really,1\nfine,0\n",
            expect: fails(2, "row has 3 fields, the header has 2 (an unquoted comma in a text?)", Some((1, 1))),
        },
        Case {
            name: "csv: short row",
            loader: CSV,
            contents: b"text,label\nonly text\nfine,0\n",
            expect: fails(2, "row has 1 fields, needs column 2", Some((1, 1))),
        },
        Case {
            name: "csv: class 10000 after a multi-line field",
            loader: CSV,
            contents: b"text,label\n\"multi\nline\",1\nbig,10000\n",
            expect: fails(4, "bad label `10000`", Some((1, 1))),
        },
        Case {
            name: "csv: label 1e30 would wrap",
            loader: CSV,
            contents: b"text,label\nfine,0\nhuge,1e30\n",
            expect: fails(3, "bad label `1e30`: class indices must be below MAX_CLASSES", Some((1, 1))),
        },
        Case {
            name: "csv: invalid UTF-8",
            loader: CSV,
            contents: b"text,label\n\xff,1\nfine,0\n",
            expect: fails(2, "invalid UTF-8", Some((1, 1))),
        },
        Case {
            name: "csv: empty text",
            loader: CSV,
            contents: b"text,label\n,1\nfine,0\n",
            expect: fails(2, "empty text in column `text`", Some((1, 1))),
        },
        Case {
            name: "csv: escaped and mid-field quotes are fine",
            loader: CSV,
            contents: b"text,label\n\"say \"\"hi\"\"\",1\na 5\" screen,0\n\"x\"\"\n\"\"y\",1\n",
            expect: Loads(3),
        },
        // ---- custom splits: dev labels must be classes of train ----
        Case {
            name: "dev label outside the training classes",
            loader: Loader::CustomDev,
            contents: b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 3}\n{\"text\": \"c\", \"label\": 1}\n",
            expect: fails(2, "label 3 is outside the 2 classes 0..=1 of the training data", Some((1, 2))),
        },
        // ---- Rotten Tomatoes ----
        Case {
            name: "rotten tomatoes: unknown category",
            loader: Loader::Rotten,
            contents: b"category,text,movie_name,has_plot_and_reviews\nfresh,Great,m,False\nstale,Meh,m,False\n",
            expect: fails(3, "unknown category `stale`", Some((1, 1))),
        },
        Case {
            name: "rotten tomatoes: missing fields",
            loader: Loader::Rotten,
            contents: b"category,text,movie_name,has_plot_and_reviews\nfresh,Great\nrotten,Bad,m,False\n",
            expect: fails(2, "row has 2 fields, the header has 4 (missing fields)", Some((1, 1))),
        },
        Case {
            name: "rotten tomatoes: empty text",
            loader: Loader::Rotten,
            contents: b"category,text,movie_name,has_plot_and_reviews\nrotten,  ,m,False\n",
            expect: fails(2, "empty text in column `text`", Some((1, 0))),
        },
        Case {
            name: "rotten tomatoes: unterminated quote",
            loader: Loader::Rotten,
            contents: b"category,text,movie_name,has_plot_and_reviews\nfresh,\"Great,m,False\nrotten,Bad,m,False\n",
            expect: fails(2, "unterminated quote", None),
        },
        Case {
            name: "rotten tomatoes: plot rows and duplicates are dropped, not bad",
            loader: Loader::Rotten,
            contents: b"category,text,movie_name,has_plot_and_reviews\nfresh,A,m,False\nplot,\"X,\ny\",m,True\nrotten,B,m,False\nfresh, A ,m,False\n",
            expect: Loads(2),
        },
        // ---- VADER movie snippets ----
        Case {
            name: "vader: bad score",
            loader: Loader::Vader,
            contents: b"1\t2.0\tgood\r\n2\tabc\tbad\r\n",
            expect: fails(2, "bad score `abc`", Some((1, 1))),
        },
        Case {
            name: "vader: score outside [-4, 4]",
            loader: Loader::Vader,
            contents: b"1\t9\tway too good\r\n",
            expect: fails(1, "bad score `9` (expected a number in [-4, 4])", Some((1, 0))),
        },
        Case {
            name: "vader: missing text",
            loader: Loader::Vader,
            contents: b"1\t2.0\tgood\r\n\r\n2\t-1.5\r\n",
            expect: fails(3, "missing fields: expected id<TAB>score<TAB>text", Some((1, 1))),
        },
        Case {
            name: "vader: blank text",
            loader: Loader::Vader,
            contents: b"1\t2.0\t \r\n",
            expect: fails(1, "empty text", Some((1, 0))),
        },
    ]
}

fn custom(
    dir: &Path,
    ext: &str,
    labels: Option<&[&str]>,
    regression: bool,
    pair: bool,
) -> CustomData {
    CustomData {
        train: dir.join(format!("train.{ext}")),
        dev: dir.join(format!("dev.{ext}")),
        test: None,
        text_column: "text".into(),
        text_pair_column: pair.then(|| "text2".to_string()),
        label_column: "label".into(),
        labels: labels.map(|l| l.iter().map(|s| s.to_string()).collect()),
        regression,
    }
}

/// Write the case's file; return its path.
fn write_case(dir: &Path, case: &Case) -> PathBuf {
    let path = match case.loader {
        Loader::Glue(t) => dir.join(t.dir_name()).join("train.tsv"),
        Loader::Custom { ext, .. } => dir.join(format!("train.{ext}")),
        Loader::CustomDev => dir.join("dev.jsonl"),
        Loader::Rotten => dir.join("rotten.csv"),
        Loader::Vader => dir.join("vader.txt"),
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, case.contents).unwrap();
    path
}

/// Run the case's loader: (skipped, kept).
fn load(dir: &Path, case: &Case, path: &Path, skip: bool) -> anyhow::Result<(usize, usize)> {
    Ok(match case.loader {
        Loader::Glue(t) => {
            let ds = t.load(dir, "train.tsv", skip)?;
            (ds.skipped, ds.examples.len())
        }
        Loader::Custom {
            ext,
            labels,
            regression,
            pair,
        } => {
            let ds = custom(dir, ext, labels, regression, pair).load_file(path, skip)?;
            (ds.skipped, ds.examples.len())
        }
        Loader::CustomDev => {
            let two = "{\"text\": \"x\", \"label\": 0}\n{\"text\": \"y\", \"label\": 1}\n";
            std::fs::write(dir.join("train.jsonl"), two)?;
            std::fs::write(dir.join("test.jsonl"), two)?;
            let mut c = custom(dir, "jsonl", None, false, false);
            c.test = Some(dir.join("test.jsonl"));
            let s = c.splits(7, skip)?;
            (s.skipped, s.eval.len())
        }
        Loader::Rotten => {
            let ds = load_rotten_tomatoes_checked(path, skip)?;
            (ds.skipped, ds.examples.len())
        }
        Loader::Vader => {
            let ds = load_vader_movies_checked(path, skip)?;
            (ds.skipped, ds.examples.len())
        }
    })
}

#[test]
fn every_malformed_row_names_its_file_and_line_or_is_skipped_and_counted() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join(format!("case{i}"));
        let path = write_case(&dir, case);
        let strict = load(&dir, case, &path, false);
        let lenient = load(&dir, case, &path, true);
        match (&case.expect, strict, lenient) {
            (Loads(n), Ok((0, kept)), _) if kept == *n => {}
            (Fails { line, msg, skipped }, Err(e), lenient) => {
                let e = format!("{e:#}");
                let at = format!("{}:{line}", path.display());
                if !e.contains(&at) || !e.contains(msg) {
                    failures.push(format!(
                        "{}: expected `{at}` and `{msg}` in: {e}",
                        case.name
                    ));
                }
                match (skipped, lenient) {
                    (Some(want), Ok(got)) if *want == got => {}
                    (None, Err(e2)) if format!("{e2:#}") == e => {}
                    (want, got) => failures.push(format!(
                        "{}: skipping: expected {want:?} (None: the same error), got {got:?}",
                        case.name
                    )),
                }
            }
            (_, strict, _) => failures.push(format!(
                "{}: unexpected result {:?}",
                case.name,
                strict.map_err(|e| format!("{e:#}"))
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn ex(text: &str, label: f32) -> TextExample {
    TextExample {
        text_a: text.into(),
        text_b: None,
        label,
    }
}

#[test]
fn custom_splits_count_the_skipped_rows_of_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("train.csv"),
        "text,label\na,0\nb,1\nbad,x\nc,1\nd,0\n",
    )
    .unwrap();
    std::fs::write(
        d.join("dev.jsonl"),
        "{\"text\": \"e\", \"label\": 0}\n{\"text\": 5, \"label\": 1}\n\
         {\"text\": \"f\", \"label\": 7}\n{\"text\": \"g\", \"label\": 1}\n\
         {\"text\": \"h\", \"label\": 0}\n",
    )
    .unwrap();
    let mut c = custom(d, "csv", None, false, false);
    c.dev = d.join("dev.jsonl");
    let s = c.splits(3, true).unwrap();
    assert_eq!(
        s.skipped, 3,
        "1 in train, 2 in dev (one outside the classes)"
    );
    assert_eq!((s.train.len(), s.eval.len() + s.test.len()), (4, 3));
    s.validate().unwrap();
    check_labels(&s, c.num_labels(&s.train), false).unwrap();
    assert!(s.sources.eval.contains("dev.jsonl") && s.sources.eval.contains("first half"));
    // without skipping, the first bad row fails
    let err = format!("{:#}", c.splits(3, false).unwrap_err());
    assert!(
        err.contains("train.csv:4") && err.contains("bad label `x`"),
        "{err}"
    );
}

#[test]
fn glue_splits_count_the_skipped_rows_of_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("SST-2");
    std::fs::create_dir_all(&task).unwrap();
    let rows = |n: usize| -> String {
        (0..n)
            .map(|i| format!("sentence {i}\t{}\n", i % 2))
            .collect()
    };
    std::fs::write(
        task.join("train.tsv"),
        format!("{SST2_HEAD}{}no label\n\t1\n", rows(10)),
    )
    .unwrap();
    std::fs::write(
        task.join("dev.tsv"),
        format!("{SST2_HEAD}{}good\tmaybe\n", rows(4)),
    )
    .unwrap();
    let s = GlueTask::Sst2.splits(dir.path(), 42, false, true).unwrap();
    assert_eq!(s.skipped, 3);
    assert_eq!((s.train.len(), s.eval.len(), s.test.len()), (5, 5, 4));
    s.validate().unwrap();
    check_labels(&s, GlueTask::Sst2.num_labels(), false).unwrap();
    let plain = GlueTask::Sst2.splits(dir.path(), 42, true, true).unwrap();
    assert_eq!(plain.skipped, 3);
}

#[test]
fn an_empty_split_fails_before_any_work_naming_split_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("train.jsonl"),
        "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 1}\n",
    )
    .unwrap();
    // one dev example: half of it (the eval split) is empty
    std::fs::write(d.join("dev.jsonl"), "{\"text\": \"c\", \"label\": 1}\n").unwrap();
    let c = custom(d, "jsonl", None, false, false);
    let s = c.splits(1, false).unwrap();
    let err = format!("{:#}", s.validate().unwrap_err());
    let dev = d.join("dev.jsonl");
    assert!(
        err.contains("the eval split is empty")
            && err.contains(&format!("from {}", dev.display()))
            && !err.contains("test split"),
        "{err}"
    );
    // a dev file with only bad rows, skipped: every held-out split is empty, and the
    // message says rows were skipped
    std::fs::write(d.join("dev.jsonl"), "{\"text\": null, \"label\": 1}\n").unwrap();
    let err = format!("{:#}", c.splits(1, true).unwrap().validate().unwrap_err());
    assert!(
        err.contains("the eval split is empty")
            && err.contains("the test split is empty")
            && err.contains("1 malformed rows were skipped"),
        "{err}"
    );
    // a GLUE task with a header-only dev file
    let task = d.join("RTE");
    std::fs::create_dir_all(&task).unwrap();
    let head = "index\tsentence1\tsentence2\tlabel\n";
    std::fs::write(
        task.join("train.tsv"),
        format!("{head}0\tA\tB\tentailment\n"),
    )
    .unwrap();
    std::fs::write(task.join("dev.tsv"), head).unwrap();
    let s = GlueTask::Rte.splits(d, 42, false, false).unwrap();
    let err = format!("{:#}", s.validate().unwrap_err());
    assert!(
        err.contains("the eval split is empty") && err.contains("RTE/dev.tsv"),
        "{err}"
    );
    // hand-made and hashed splits
    let err = format!("{:#}", Splits::default().validate().unwrap_err());
    assert!(
        err.contains("the train split is empty (source not recorded)"),
        "{err}"
    );
    let s = hash_split(vec![ex("only one", 1.0)], 42).with_source("reviews.csv");
    let err = format!("{:#}", s.validate().unwrap_err());
    assert!(
        err.contains("from reviews.csv, hash split (seed 42)"),
        "{err}"
    );
}

#[test]
fn labels_outside_the_task_fail_naming_split_and_label() {
    let splits = Splits {
        train: vec![ex("a", 0.0), ex("b", 1.0)],
        eval: vec![ex("c", 1.0), ex("d", 3.0), ex("e", 2.0)],
        test: vec![ex("f", 0.0)],
        skipped: 0,
        sources: SplitSources {
            eval: "dev.jsonl".into(),
            ..SplitSources::default()
        },
    };
    let err = format!("{:#}", check_labels(&splits, 2, false).unwrap_err());
    assert!(
        err.contains(
            "eval split (from dev.jsonl): example 2 has label 3, outside the 2 classes 0..=1"
        ) && err.contains("\"d\"")
            && err.contains("1 more example is off"),
        "{err}"
    );
    check_labels(&splits, 4, false).unwrap();
    // a fractional or negative class
    let mut s = splits.clone();
    s.test[0].label = -1.0;
    let err = format!("{:#}", check_labels(&s, 4, false).unwrap_err());
    assert!(err.contains("test split: example 1 has label -1"), "{err}");
    // regression: any finite target, but not NaN / inf
    check_labels(&splits, 1, true).unwrap();
    let mut s = splits.clone();
    s.test.push(ex("g", f32::NAN));
    let err = format!("{:#}", check_labels(&s, 1, true).unwrap_err());
    assert!(
        err.contains("test split: example 2 has a non-finite regression target NaN"),
        "{err}"
    );
    // the class count itself
    for n in [0, 1, MAX_CLASSES + 1] {
        let err = format!("{:#}", check_labels(&splits, n, false).unwrap_err());
        assert!(err.contains("MAX_CLASSES"), "{n}: {err}");
    }
}

#[test]
fn numeric_classes_are_bounded_by_max_classes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = custom(d, "jsonl", None, false, false);
    let top = MAX_CLASSES - 1;
    std::fs::write(
        d.join("train.jsonl"),
        format!("{{\"text\": \"a\", \"label\": {top}}}\n"),
    )
    .unwrap();
    let ds = c.load_file(&d.join("train.jsonl"), false).unwrap();
    assert_eq!(c.num_labels(&ds.examples), MAX_CLASSES);
    // hand-made examples never overflow the class count
    assert_eq!(c.num_labels(&[ex("x", 1e30)]), usize::MAX);
}

#[test]
fn custom_data_configuration_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("train.jsonl"),
        "{\"text\": \"a\", \"label\": \"x\"}\n",
    )
    .unwrap();
    let path = d.join("train.jsonl");
    let err = |c: CustomData| format!("{:#}", c.load_file(&path, false).unwrap_err());
    let e = err(custom(d, "jsonl", Some(&["x"]), false, false));
    assert!(e.contains("`labels` must name 2 to 10000 classes"), "{e}");
    let e = err(custom(d, "jsonl", Some(&["x", "y", "x"]), false, false));
    assert!(e.contains("names class `x` twice"), "{e}");
    let e = err(custom(d, "jsonl", Some(&["x", "y"]), true, false));
    assert!(e.contains("`regression = true`"), "{e}");
    let mut c = custom(d, "jsonl", None, false, false);
    c.text_column = "label".into();
    let e = err(c);
    assert!(
        e.contains("text_column and label_column are both `label`"),
        "{e}"
    );
    let mut c = custom(d, "jsonl", None, false, false);
    c.dev = d.join("dev.tsv");
    let e = err(c);
    assert!(
        e.contains("dev.tsv: custom data must be `.csv` or `.jsonl`"),
        "{e}"
    );
}
