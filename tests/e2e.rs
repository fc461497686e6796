//! End to end on the built-in tiny RoBERTa and the small synthetic GLUE data of
//! `tests/fixtures/glue` (standard file names, headers and columns of every task).

use std::path::PathBuf;

use propetl::data::{CustomData, GlueTask};
use propetl::run::{prepare, restore, run, RunConfig};
use propetl::train::{evaluate, predict};

fn glue_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/glue")
}

fn quick(task: &str, variant: &str, epochs: usize) -> RunConfig {
    let mut c = RunConfig::new(task, variant);
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
        for k in expect.iter().chain(&["selection"]) {
            assert!(
                report.test.contains_key(*k),
                "{t:?} test lacks {k}: {:?}",
                report.test
            );
            assert!(report.eval.contains_key(*k), "{t:?} eval lacks {k}");
        }
        assert!(
            report.sizes["train"] > 0 && report.sizes["eval"] > 0 && report.sizes["test"] > 0,
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
        runs.push(dir.path().join(t.name()));
    }
    // all eight tasks of one variant: the report gives the 11-number GLUE average
    let loaded = propetl::report::load_runs(&runs).unwrap();
    let table = propetl::report::table(&loaded);
    assert!(
        table.contains("GLUE average (pro_adapter, 11 numbers)"),
        "{table}"
    );
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
    restore(p.model.as_mut(), &p.varmap, &out.join("best.safetensors")).unwrap();
    let again = evaluate(p.model.as_ref(), &p.test, p.glue, 8, 128, p.pad).unwrap();
    assert_eq!(again, report.test);
    let mut q = prepare(&cfg).unwrap();
    restore(q.model.as_mut(), &q.varmap, &out.join("best.safetensors")).unwrap();
    assert_eq!(
        predict(p.model.as_ref(), &p.test, 8, 128, p.pad).unwrap(),
        predict(q.model.as_ref(), &q.test, 8, 128, q.pad).unwrap()
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
        assert!(report.test["accuracy"].is_finite(), "{v}");
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
    cfg.train.max_grad_norm = f64::INFINITY;
    let err = format!("{:#}", run(&cfg, &dir.path().join("nan")).unwrap_err());
    assert!(err.contains("not finite"), "{err}");
}

#[test]
fn the_cli_trains_from_a_config_file_and_evaluates_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("run.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "task = \"mrpc\"\nvariant = \"pro_lora\"\ndata_dir = {:?}\n[train]\nepochs = 2\nbatch_size = 8\nprogress = false\n[petl]\nkeep = 0.3\nr = 4\n",
            glue_dir()
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    let bin = env!("CARGO_BIN_EXE_propetl");
    let status = std::process::Command::new(bin)
        .args(["train", "--config"])
        .arg(&cfg_path)
        .arg("--out")
        .arg(&out)
        .args(["--seed", "7"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["variant"], "pro_lora");
    assert!(report["test"]["f1"].is_number());
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        resolved.contains("seed = 7") && resolved.contains("keep = 0.3"),
        "{resolved}"
    );
    let eval = std::process::Command::new(bin)
        .arg("eval")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(m["f1"], report["test"]["f1"]);
    // the report PNG of the run
    let png = dir.path().join("report.png");
    let rep = std::process::Command::new(bin)
        .arg("report")
        .arg(&out)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        rep.status.success(),
        "{}",
        String::from_utf8_lossy(&rep.stderr)
    );
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    // a bad config is refused with the file named
    std::fs::write(
        &cfg_path,
        "task = \"mrpc\"\nvariant = \"pro_lora\"\nbogus = 1\n",
    )
    .unwrap();
    let bad = std::process::Command::new(bin)
        .args(["train", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("run.toml"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn the_cli_parity_command_checks_fixtures_and_fails_on_a_mismatch() {
    let bin = env!("CARGO_BIN_EXE_propetl");
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ok = std::process::Command::new(bin)
        .arg("parity")
        .arg(fixtures.join("roberta-pro_adapter-s0"))
        .arg(fixtures.join("t5-pro_adapter-s0"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("PASS") && out.contains("grad:adapter.down.weight"),
        "{out}"
    );
    // a fixture whose expected logits were altered must fail
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("fx");
    std::fs::create_dir_all(copy.join("ckpt")).unwrap();
    let src = fixtures.join("roberta-pro_lora-s0");
    for entry in std::fs::read_dir(&src).unwrap() {
        let e = entry.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join("ckpt").join(f), copy.join("ckpt").join(f)).unwrap();
    }
    let outputs =
        candle_core::safetensors::load(copy.join("outputs.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut outputs: std::collections::HashMap<String, candle_core::Tensor> =
        outputs.into_iter().collect();
    let logits = outputs["logits"].affine(1.001, 0.0).unwrap();
    outputs.insert("logits".into(), logits);
    candle_core::safetensors::save(&outputs, copy.join("outputs.safetensors")).unwrap();
    let bad = std::process::Command::new(bin)
        .arg("parity")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("FAIL   logits")
            || String::from_utf8_lossy(&bad.stdout).contains("FAIL logits"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
}
