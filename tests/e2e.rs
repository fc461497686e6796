//! End to end on the built-in tiny RoBERTa and the small synthetic GLUE data of
//! `tests/fixtures/glue` (standard file names, headers and columns of every task).

use std::path::PathBuf;

use propetl::data::{CustomData, GlueTask};
use propetl::run::{prepare, run as run_with, RunConfig, RunReport, Task};
use propetl::runtime::Variant;
use propetl::train::{evaluate, predict_values, Silent};

fn glue_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/glue")
}

fn run(cfg: &RunConfig, out: &std::path::Path) -> anyhow::Result<RunReport> {
    run_with(cfg, out, &mut Silent)
}

fn quick(task: &str, variant: &str, epochs: usize) -> RunConfig {
    let mut c = RunConfig::new(
        task.parse::<Task>().unwrap(),
        variant.parse::<Variant>().unwrap(),
    );
    c.data_dir = Some(glue_dir());
    c.train.epochs = epochs;
    c.train.batch_size = 8;
    c.train.lr = 3e-3;
    c.train.progress = false;
    c
}

#[test]
fn every_glue_task_trains_and_reports_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for t in GlueTask::ALL {
        let report = run(
            &quick(t.name(), "pro_adapter", 1),
            &dir.path().join(t.name()),
        )
        .unwrap();
        let expect: &[&str] = match t {
            GlueTask::Cola => &["mcc"],
            GlueTask::Mrpc | GlueTask::Qqp => &["accuracy", "f1"],
            GlueTask::Stsb => &["pearson", "spearman"],
            _ => &["accuracy"],
        };
        let names = |m: &propetl::metrics::Metrics| -> Vec<&str> {
            m.numbers().into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(names(&report.test), expect, "{t:?} test: {:?}", report.test);
        assert_eq!(names(&report.eval), expect, "{t:?} eval: {:?}", report.eval);
        assert!(
            report.test.selection.is_finite() || t == GlueTask::Stsb,
            "{t:?}"
        );
        assert!(
            report.sizes.train > 0 && report.sizes.eval > 0 && report.sizes.test > 0,
            "{t:?}"
        );
        for f in [
            "config.toml",
            "metrics.jsonl",
            "best.safetensors",
            "report.json",
        ] {
            assert!(dir.path().join(t.name()).join(f).exists(), "{t:?}: no {f}");
        }
        runs.push(report.test);
    }
    // all eight tasks of one variant: the 11-number GLUE average
    let per_task = GlueTask::ALL.into_iter().zip(runs).collect();
    assert!(propetl::metrics::glue_average(&per_task).is_some());
}

#[test]
fn training_reduces_the_loss_and_the_best_state_reloads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = quick("sst2", "pro_adapter", 12);
    let out = dir.path().join("sst2");
    let report = run(&cfg, &out).unwrap();
    let first = report.epochs.first().unwrap().train_loss;
    let last = report.epochs.last().unwrap().train_loss;
    assert!(last < first, "train loss {first} -> {last}");
    // metrics.jsonl holds one line per epoch
    let lines = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 12);
    // reload the best state into a fresh model: identical test metrics and predictions
    let mut p = prepare(&cfg).unwrap();
    p.model.restore(&out.join("best.safetensors")).unwrap();
    let task = &p.tasks[0];
    let again = evaluate(p.model.as_ref(), &task.test, &task.eval_settings(&cfg)).unwrap();
    assert_eq!(again, report.test);
    let mut q = prepare(&cfg).unwrap();
    q.model.restore(&out.join("best.safetensors")).unwrap();
    assert_eq!(
        predict_values(p.model.as_ref(), &task.test, 8, 128, "default").unwrap(),
        predict_values(q.model.as_ref(), &q.tasks[0].test, 8, 128, "default").unwrap()
    );
    // the same seed reproduces the run exactly
    let twice = run(&cfg, &dir.path().join("again")).unwrap();
    assert_eq!(
        twice.epochs.last().unwrap().step_losses,
        report.epochs.last().unwrap().step_losses
    );
}

#[test]
fn every_variant_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    for v in [
        "pro_adapter",
        "pro_lora",
        "pro_prefix",
        "adapter",
        "lora",
        "prefix",
    ] {
        let report = run(&quick("rte", v, 1), &dir.path().join(v)).unwrap();
        assert!(report.test.accuracy.unwrap().is_finite(), "{v}");
        assert_eq!(
            report.storage.mask_entries == 0,
            !v.starts_with("pro_"),
            "{v}"
        );
    }
}

#[test]
fn a_malformed_row_names_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("SST-2");
    std::fs::create_dir_all(&task).unwrap();
    let good = std::fs::read_to_string(glue_dir().join("SST-2/train.tsv")).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines[4] = "a sentence without a label column";
    std::fs::write(task.join("train.tsv"), lines.join("\n")).unwrap();
    std::fs::copy(glue_dir().join("SST-2/dev.tsv"), task.join("dev.tsv")).unwrap();
    let mut cfg = quick("sst2", "pro_adapter", 1);
    cfg.data_dir = Some(dir.path().to_path_buf());
    let err = format!("{:#}", run(&cfg, &dir.path().join("out")).unwrap_err());
    assert!(err.contains("SST-2/train.tsv:5"), "{err}");
    // a bad label too
    lines[4] = "fine film\tmaybe";
    std::fs::write(task.join("train.tsv"), lines.join("\n")).unwrap();
    let err = format!("{:#}", run(&cfg, &dir.path().join("out")).unwrap_err());
    assert!(
        err.contains("train.tsv:5") && err.contains("bad label `maybe`"),
        "{err}"
    );
    // skipping is explicit and counted
    cfg.skip_bad_rows = true;
    let report = run(&cfg, &dir.path().join("out")).unwrap();
    assert_eq!(report.skipped_rows, 1);
}

#[test]
fn custom_csv_and_jsonl_with_quoted_newlines_and_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("train.csv");
    std::fs::write(
        &csv,
        "text,stars\n\"good, really\ngood\",pos\nawful,neg\n\"fine\",pos\n",
    )
    .unwrap();
    let jsonl = dir.path().join("dev.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"great\", \"stars\": \"pos\"}\n{\"text\": \"bad\", \"stars\": \"neg\"}\n",
    )
    .unwrap();
    let data = CustomData {
        train: csv.clone(),
        dev: jsonl.clone(),
        test: None,
        text_column: "text".into(),
        text_pair_column: None,
        label_column: "stars".into(),
        labels: Some(vec!["neg".into(), "pos".into()]),
        regression: false,
    };
    let ds = data.load_file(&csv, false).unwrap();
    assert_eq!(ds.examples.len(), 3);
    assert_eq!(ds.examples[0].text_a, "good, really\ngood");
    assert_eq!(ds.examples[1].label, 0.0);
    // a bad label on CSV line 5 (the quoted field spans lines 2–3)
    std::fs::write(
        &csv,
        "text,stars\n\"good, really\ngood\",pos\nawful,neg\nmeh,unknown\n",
    )
    .unwrap();
    let err = format!("{:#}", data.load_file(&csv, false).unwrap_err());
    assert!(
        err.contains("train.csv:5") && err.contains("bad label"),
        "{err}"
    );
    assert_eq!(data.load_file(&csv, true).unwrap().skipped, 1);
    std::fs::write(
        &jsonl,
        "{\"text\": \"great\", \"stars\": \"pos\"}\nnot json\n",
    )
    .unwrap();
    let err = format!("{:#}", data.load_file(&jsonl, false).unwrap_err());
    assert!(
        err.contains("dev.jsonl:2") && err.contains("invalid JSON"),
        "{err}"
    );
}

#[test]
fn a_diverging_run_stops_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quick("sst2", "pro_adapter", 3);
    cfg.train.lr = 1e30;
    cfg.train.max_grad_norm = 1e30;
    let err = format!("{:#}", run(&cfg, &dir.path().join("nan")).unwrap_err());
    // the step and the tensor are named
    assert!(
        err.contains("not finite") || (err.contains("NaN or infinite") && err.contains("step")),
        "{err}"
    );
    // an infinite clipping threshold is not a valid setting at all
    cfg.train.max_grad_norm = f64::INFINITY;
    let err = format!("{:#}", run(&cfg, &dir.path().join("inf")).unwrap_err());
    assert!(err.contains("train.max_grad_norm"), "{err}");
    assert!(
        !dir.path().join("inf").exists(),
        "nothing written for an invalid config"
    );
}
