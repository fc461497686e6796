//! `propetl predict` on T5 runs: a single-task run answers each JSONL row in input order with
//! its label name and the generated text (the same as the library and as the model's own
//! prediction); a multi-task run takes each row's task from a task column, and rows of
//! different tasks in one file get exactly what each task's rows get alone; unknown tasks and
//! a missing task column are clear errors before any work.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use propetl::data::{GlueTask, TextExample};
use propetl::predict::{PredictInput, PredictOutput, Predictor};
use propetl::run::{self, RunConfig, Task};
use propetl::runtime::{Example, Prediction, TaskModel};
use propetl::train::Silent;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The paper's multi-task config on the tiny checkpoint and the GLUE fixtures, briefly.
fn config(tasks: &[GlueTask], epochs: usize) -> RunConfig {
    let mut cfg = RunConfig::from_toml_file(&root().join("configs/t5/propetl_glue.toml")).unwrap();
    cfg.model_dir = Some(root().join("tests/fixtures/tiny-t5"));
    cfg.data_dir = Some(root().join("tests/fixtures/glue"));
    cfg.tasks = tasks.to_vec();
    cfg.train.epochs = epochs;
    cfg.train.batch_size = 8;
    cfg.train.max_len = 48;
    cfg.train.lr = 3e-3;
    cfg.train.mask_lr = 3e-2;
    cfg.train.warmup_steps = Some(4);
    cfg.train.progress = false;
    cfg
}

/// A finished run, trained once per test binary.
fn trained(name: &str, cfg: RunConfig, cell: &'static OnceLock<PathBuf>) -> &'static Path {
    cell.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("predict_t5-{}", std::process::id()))
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        run::run(&cfg, &dir, &mut Silent).unwrap();
        dir
    })
}

fn single_task_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    let mut cfg = config(&[], 24);
    cfg.task = Task::Glue(GlueTask::Sst2);
    cfg.sampling_temperature = None;
    // one task: the single-task ProAdapter (share = "layers") with its own keep
    cfg.petl.keep = None;
    // all 64 training sentences, 24 epochs: enough steps for the tiny model (dropout on) to
    // answer with labels
    cfg.split = propetl::run::Split::Plain;
    trained("sst2", cfg, &RUN)
}

fn multi_task_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    trained(
        "glue",
        config(&[GlueTask::Sst2, GlueTask::Rte, GlueTask::Mrpc], 6),
        &RUN,
    )
}

/// `propetl predict RUN args…` with `stdin`: (success, JSON lines, stderr).
fn predict(run: &Path, args: &[&str], stdin: &str) -> (bool, Vec<serde_json::Value>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_propetl"))
        .arg("predict")
        .arg(run)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(run: &Path, args: &[&str], stdin: &str) -> Vec<serde_json::Value> {
    let (success, lines, err) = predict(run, args, stdin);
    assert!(success, "{err}");
    lines
}

fn fails(run: &Path, args: &[&str], stdin: &str) -> String {
    let (success, lines, err) = predict(run, args, stdin);
    assert!(!success && lines.is_empty(), "expected an error: {lines:?}");
    err
}

const SENTENCES: [&str; 6] = [
    "a gripping , beautifully shot film",
    "dull",
    "the plot goes nowhere and the actors seem to know it , scene after tedious scene",
    "superb lovely very bright",
    "it the awful sad story",
    "fine",
];

#[test]
fn single_task_run_answers_jsonl_in_order_with_generated_text() {
    let run = single_task_run();
    let body: String = SENTENCES
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "{}\n",
                serde_json::json!({"id": format!("r{i}"), "sentence": t})
            )
        })
        .collect();
    let args = [
        "--format",
        "jsonl",
        "--text-column",
        "sentence",
        "--id-column",
        "id",
        "--batch-size",
        "2",
    ];
    let lines = ok(run, &args, &body);
    assert_eq!(lines.len(), SENTENCES.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], format!("r{i}"), "output order is input order");
        assert!(l["generated"].is_string(), "{l}");
        assert!(l.get("task").is_none(), "a single-task run: {l}");
        assert!(l.get("probabilities").is_none(), "{l}");
        match l["label"].as_str() {
            Some(label) => assert!(label == "negative" || label == "positive", "{l}"),
            // a generation that is no label says so, with what was generated
            None => assert!(l["label"].is_null(), "{l}"),
        }
    }
    assert!(lines.iter().any(|l| l["label"].is_string()), "{lines:?}");
    // the batch size changes no output
    let mut args5 = args;
    args5[7] = "5";
    assert_eq!(ok(run, &args5, &body), lines);

    // the library call gives the same
    let predictor = Predictor::load(run, None).unwrap();
    assert!(predictor.is_text_to_text() && !predictor.is_multi_task());
    assert_eq!(predictor.tasks(), ["sst2"]);
    let lib = predictor.predict_texts(&SENTENCES, 3).unwrap();
    for (a, b) in lib.iter().zip(&lines) {
        assert_eq!(a.label.as_deref(), b["label"].as_str());
        assert_eq!(a.generated.as_deref(), b["generated"].as_str());
    }
    assert_eq!(
        predictor.predict_texts_for("sst2", &SENTENCES, 4).unwrap(),
        lib
    );

    // …and the model's own prediction (the run's evaluation path) on the same inputs
    let loaded = propetl::text_to_text::load_run(run, None).unwrap();
    let max_len = loaded.config.train.max_len;
    let examples: Vec<Example> = SENTENCES
        .iter()
        .map(|t| {
            let x = TextExample {
                text_a: t.to_string(),
                text_b: None,
                label: 0.0,
            };
            let input = propetl::text_to_text::input_text(Task::Glue(GlueTask::Sst2), &x);
            Example {
                ids: loaded.tokenizer.encode(&input, max_len).unwrap(),
                label: 0.0,
                target_ids: loaded.tokenizer.encode("0", max_len).unwrap(),
            }
        })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = loaded.model.collate(&refs, max_len, "sst2").unwrap();
    let names = ["negative", "positive"];
    for (p, l) in loaded.model.predict(&batch).unwrap().iter().zip(&lines) {
        let Prediction::Class { label, .. } = p else {
            panic!("sst2 is classification")
        };
        assert_eq!(names.get(*label).copied(), l["label"].as_str(), "{l}");
    }
}

#[test]
fn an_unanswered_generation_is_a_null_label_with_its_text() {
    let out = PredictOutput {
        id: "7".into(),
        task: Some("stsb".into()),
        label: None,
        probabilities: None,
        score: None,
        generated: Some("banana".into()),
    };
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"id": "7", "task": "stsb", "label": null, "generated": "banana"})
    );
    assert_eq!(serde_json::from_value::<PredictOutput>(json).unwrap(), out);
    // an answered regression row has its score and no label
    let scored = PredictOutput {
        score: Some(3.4),
        generated: Some("3.4".into()),
        ..out
    };
    let json = serde_json::to_value(&scored).unwrap();
    assert!(
        json.get("label").is_none() && json["score"].is_number(),
        "{json}"
    );
}

/// Mixed rows of the three tasks (pairs for RTE and STS-B) as JSONL, and each task's rows.
fn mixed_rows() -> Vec<serde_json::Value> {
    let pairs = [
        ("A man is eating.", "Someone eats."),
        ("The sky is green.", "The sky is blue."),
        (
            "plot sad is film it movie",
            "it the great bright is very bright the film",
        ),
        ("superb", "it was quite bad , very poor and sad"),
    ];
    let mut rows = Vec::new();
    for i in 0..12 {
        let (a, b) = pairs[i % pairs.len()];
        let row = match i % 3 {
            0 => {
                serde_json::json!({"id": format!("s{i}"), "task": "sst2", "text": SENTENCES[i % SENTENCES.len()]})
            }
            1 => serde_json::json!({"id": format!("r{i}"), "task": "rte", "text": a, "b": b}),
            _ => serde_json::json!({"id": format!("t{i}"), "task": "mrpc", "text": b, "b": a}),
        };
        rows.push(row);
    }
    // an uneven mix: a run of one task, then the others
    rows.rotate_left(5);
    rows
}

fn jsonl(rows: &[&serde_json::Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

#[test]
fn mixed_task_rows_equal_each_task_alone() {
    let run = multi_task_run();
    let rows = mixed_rows();
    let all: Vec<&serde_json::Value> = rows.iter().collect();
    let args = [
        "--format",
        "jsonl",
        "--text-pair-column",
        "b",
        "--id-column",
        "id",
        "--batch-size",
        "3",
    ];
    let mixed = ok(run, &args, &jsonl(&all));
    assert_eq!(mixed.len(), rows.len());
    for (o, r) in mixed.iter().zip(&rows) {
        assert_eq!(o["id"], r["id"], "output order is input order");
        assert_eq!(o["task"], r["task"]);
        assert!(o["generated"].is_string(), "{o}");
        assert!(o.get("score").is_none(), "{o}");
        let names: &[&str] = match r["task"].as_str().unwrap() {
            "sst2" => &["negative", "positive"],
            "rte" => &["entailment", "not_entailment"],
            _ => &["not_equivalent", "equivalent"],
        };
        assert!(
            o["label"].is_null() || names.contains(&o["label"].as_str().unwrap()),
            "{o}"
        );
    }
    // the trained model answers with labels (so equal outputs below are not all nulls)
    assert!(mixed.iter().any(|o| o["label"].is_string()), "{mixed:?}");
    // each task's rows alone (task column dropped, --task NAME) give the same lines
    for task in ["sst2", "rte", "mrpc"] {
        let only: Vec<serde_json::Value> = rows
            .iter()
            .filter(|r| r["task"] == task)
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("task");
                r
            })
            .collect();
        let refs: Vec<&serde_json::Value> = only.iter().collect();
        let mut with_task = args.to_vec();
        if task == "sst2" {
            // a single-text task alone: no second-text column
            with_task.drain(2..4);
        }
        with_task.extend(["--task", task]);
        let alone = ok(run, &with_task, &jsonl(&refs));
        let expected: Vec<&serde_json::Value> =
            mixed.iter().filter(|o| o["task"] == task).collect();
        assert_eq!(alone.iter().collect::<Vec<_>>(), expected, "{task}");
    }
    // the same from CSV with a renamed task column, and from the library
    let csv = std::iter::once("id,which,text,b\n".to_string())
        .chain(rows.iter().map(|r| {
            format!(
                "{},{},\"{}\",\"{}\"\n",
                r["id"].as_str().unwrap(),
                r["task"].as_str().unwrap(),
                r["text"].as_str().unwrap(),
                r["b"].as_str().unwrap_or("")
            )
        }))
        .collect::<String>();
    let mut csv_args = args.to_vec();
    csv_args[1] = "csv";
    csv_args.extend(["--task-column", "which"]);
    let from_csv = ok(run, &csv_args, &csv);
    // sst2 ignores a second text, so an empty cell changes nothing
    assert_eq!(from_csv, mixed);

    let predictor = Predictor::load(run, None).unwrap();
    assert!(predictor.is_multi_task());
    assert_eq!(predictor.tasks(), ["sst2", "rte", "mrpc"]);
    let inputs: Vec<PredictInput> = rows
        .iter()
        .map(|r| PredictInput {
            id: r["id"].as_str().unwrap().into(),
            text: r["text"].as_str().unwrap().into(),
            text_pair: r["b"].as_str().map(String::from),
        })
        .collect();
    let tasks: Vec<&str> = rows.iter().map(|r| r["task"].as_str().unwrap()).collect();
    let mut seen = Vec::new();
    let lib = predictor
        .predict_tasks(&inputs, &tasks, 3, &mut |n| seen.push(n))
        .unwrap();
    assert_eq!(seen.last(), Some(&rows.len()));
    // as JSON lines, as the command writes them
    let lib: Vec<serde_json::Value> = lib
        .iter()
        .map(|o| serde_json::from_str(&serde_json::to_string(o).unwrap()).unwrap())
        .collect();
    assert_eq!(lib, mixed);
}

#[test]
fn unknown_tasks_and_missing_task_columns_are_clear_errors() {
    let run = multi_task_run();
    let rows = mixed_rows();
    let mut bad = rows.clone();
    bad[1]["task"] = "cola".into();
    let all: Vec<&serde_json::Value> = bad.iter().collect();
    let args = ["--format", "jsonl", "--text-pair-column", "b"];
    // checked before any work: the device would fail to open, the task check comes first
    let mut on_a_gpu = args.to_vec();
    on_a_gpu.extend(["--device", "cuda:7"]);
    let err = fails(run, &on_a_gpu, &jsonl(&all));
    assert!(
        err.contains("<stdin>:2: unknown task `cola` (this run's tasks: sst2, rte, mrpc)"),
        "{err}"
    );
    // --task with a task the run does not have
    let mut with_task = args.to_vec();
    with_task.extend(["--task", "mnli"]);
    let err = fails(run, &with_task, &jsonl(&all));
    assert!(
        err.contains("unknown task `mnli` (this run's tasks: sst2, rte, mrpc)"),
        "{err}"
    );
    // a row without its task
    let mut missing = rows.clone();
    missing[3].as_object_mut().unwrap().remove("task");
    let all: Vec<&serde_json::Value> = missing.iter().collect();
    let err = fails(run, &args, &jsonl(&all));
    assert!(
        err.contains("<stdin>:4: no `task` field (the row's task"),
        "{err}"
    );
    // a CSV without the task column, and a renamed column that is not there
    let err = fails(run, &["--format", "csv"], "id,text\n0,fine\n");
    assert!(
        err.contains("the header has no `task` column") && err.contains("each row's task"),
        "{err}"
    );
    let err = fails(
        run,
        &["--format", "csv", "--task-column", "which"],
        "id,text,task\n0,fine,sst2\n",
    );
    assert!(err.contains("no `which` column"), "{err}");
    // plain lines carry no task: a multi-task run needs --task
    let err = fails(run, &[], "fine\n");
    assert!(
        err.contains("<stdin>:1: the row has no task, and this run has several (sst2, rte, mrpc)"),
        "{err}"
    );
    assert_eq!(ok(run, &["--task", "sst2"], "fine\n").len(), 1);

    // the library: unknown tasks name the input and its id; a multi-task run needs tasks
    let predictor = Predictor::load(run, None).unwrap();
    let inputs = [
        PredictInput::text("a", "fine"),
        PredictInput::text("b", "dull"),
    ];
    let err = predictor
        .predict_tasks(&inputs, &["sst2", "qqp"], 8, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("input 1 (id `b`): unknown task `qqp` (this run's tasks: sst2, rte, mrpc)"),
        "{err}"
    );
    let err = predictor
        .predict_texts(&["fine"], 8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("several tasks (sst2, rte, mrpc)"), "{err}");

    // a single-task run: a task column naming another task is refused too
    let single = single_task_run();
    let err = fails(
        single,
        &["--format", "jsonl", "--task-column", "task"],
        "{\"text\": \"fine\", \"task\": \"rte\"}\n",
    );
    assert!(
        err.contains("<stdin>:1: unknown task `rte` (this run's tasks: sst2)"),
        "{err}"
    );
}
