//! T5 runs through `propetl train`: the paper's multi-task config (`configs/t5/propetl_glue.toml`)
//! on the tiny T5 checkpoint and the synthetic GLUE fixtures writes a complete run directory
//! (per-task metrics, GLUE scores, best state), `eval` reproduces its test scores, `generate
//! --run --task` answers with the run's masks; a single-task T5 run resumes bit-identically;
//! configurations T5 cannot run are refused before anything is written.

use std::path::{Path, PathBuf};
use std::process::Command;

use propetl::run::{self, RunConfig, RunOptions, RunReport, Task};
use propetl::train::Silent;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The paper's config on the tiny checkpoint: three tasks (two classification, STS-B
/// regression), a few examples, larger learning rates.
fn multi_task_config() -> RunConfig {
    let mut cfg = RunConfig::from_toml_file(&root().join("configs/t5/propetl_glue.toml")).unwrap();
    cfg.model_dir = Some(root().join("tests/fixtures/tiny-t5"));
    cfg.data_dir = Some(root().join("tests/fixtures/glue"));
    cfg.tasks = vec![
        propetl::data::GlueTask::Sst2,
        propetl::data::GlueTask::Rte,
        propetl::data::GlueTask::Stsb,
    ];
    cfg.train.epochs = 3;
    cfg.train.batch_size = 8;
    cfg.train.max_len = 48;
    cfg.train.lr = 3e-3;
    cfg.train.mask_lr = 3e-2;
    cfg.train.warmup_steps = Some(4);
    cfg.train.progress = false;
    cfg
}

fn read_report(dir: &Path) -> RunReport {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

fn propetl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_propetl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn multi_task_run_directory_eval_and_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t5-glue");
    let cfg = multi_task_config();
    // the paper's recipe survives the round trip through the config file
    assert_eq!(cfg.task, Task::GlueMulti);
    assert_eq!(cfg.sampling_temperature, Some(10.0));
    assert_eq!(cfg.petl.keep, Some(0.3));
    let report = run::run(&cfg, &out, &mut Silent).unwrap();

    for file in [
        "config.toml",
        "tasks.json",
        "answers.json",
        "metrics.jsonl",
        "task_metrics.jsonl",
        "best.safetensors",
        "report.json",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    assert_eq!(
        report.tasks.keys().collect::<Vec<_>>(),
        ["rte", "sst2", "stsb"]
    );
    // every task has its own metrics (STS-B correlations, the others accuracy)
    assert!(report.tasks["stsb"].test.pearson.is_some());
    assert!(report.tasks["sst2"].test.accuracy.is_some());
    assert!(
        report.glue_average.is_none(),
        "only three of the eight tasks"
    );
    // STS-B's correlation of a model that answers no score is undefined; it counts as 0 in
    // the mean that selects the best epoch, which therefore stays a number
    assert!(report.eval.selection.is_finite(), "{:?}", report.eval);
    let per_epoch = std::fs::read_to_string(out.join("task_metrics.jsonl")).unwrap();
    assert_eq!(per_epoch.lines().count(), 3);
    assert!(per_epoch.contains("\"stsb\""));
    // the report as written is the report returned (compared as JSON: NaN is written null)
    assert_eq!(
        serde_json::to_value(&read_report(&out).tasks).unwrap(),
        serde_json::to_value(&report.tasks).unwrap()
    );
    // training works on every task: each task's mean loss falls from the first epoch to the last
    let epochs: Vec<serde_json::Value> = per_epoch
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for task in ["sst2", "rte", "stsb"] {
        let (first, last) = (
            epochs[0]["train_loss"][task].as_f64().unwrap(),
            epochs[epochs.len() - 1]["train_loss"][task]
                .as_f64()
                .unwrap(),
        );
        assert!(last < first, "{task}: {first} -> {last}");
    }

    // `propetl eval` restores the best state: the same test scores per task
    let eval = propetl(&["eval", out.to_str().unwrap()]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    for (task, scores) in &report.tasks {
        assert_eq!(
            eval["tasks"][task],
            serde_json::to_value(&scores.test).unwrap(),
            "{task}"
        );
    }

    // `propetl report` shows the run and one row per task, and draws PNG + SVG
    let png = tmp.path().join("report.png");
    let rep = propetl(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    let table = String::from_utf8_lossy(&rep.stdout);
    assert!(
        rep.status.success(),
        "{}",
        String::from_utf8_lossy(&rep.stderr)
    );
    assert!(table.contains("mean over tasks"), "{table}");
    for row in ["  rte ", "  sst2 ", "  stsb "] {
        assert!(table.contains(row), "{row}: {table}");
    }
    assert!(png.exists() && png.with_extension("svg").exists());

    // generation with the run's masks: one JSON line per input, per task
    let input = tmp.path().join("inputs.txt");
    std::fs::write(&input, "sentence: a fine film\nsentence: dull\n").unwrap();
    let mut outputs = Vec::new();
    for task in ["sst2", "rte"] {
        let g = propetl(&[
            "generate",
            "--run",
            out.to_str().unwrap(),
            "--task",
            task,
            "--input",
            input.to_str().unwrap(),
            "--max-new-tokens",
            "3",
        ]);
        assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&g.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["input"], "sentence: a fine film");
        outputs.push(lines);
    }
    // a task the run does not have, and a run with several tasks without --task
    let g = propetl(&[
        "generate",
        "--run",
        out.to_str().unwrap(),
        "--task",
        "cola",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!g.status.success());
    let err = String::from_utf8_lossy(&g.stderr);
    assert!(
        err.contains("has no task `cola` (its tasks: sst2, rte, stsb)"),
        "{err}"
    );
    let g = propetl(&[
        "generate",
        "--run",
        out.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&g.stderr).contains("pick one with --task"));

    // a finished run has nothing left to train: resume ends at once with the same report
    let again = run::resume(&out, &mut Silent).unwrap();
    assert_eq!(again.best_epoch, report.best_epoch);
}

/// Stops the run (a panic, as a crash would) when training reaches step `at`.
struct CrashAt {
    at: usize,
}

impl propetl::TrainObserver for CrashAt {
    fn on_step(&mut self, _epoch: usize, step: usize, _loss: f64, _tokens_per_s: f64) {
        if step == self.at {
            panic!("simulated crash at step {step}");
        }
    }
}

#[test]
fn multi_task_run_resumes_bit_identically_at_epoch_ends_and_mid_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = multi_task_config();
    cfg.train.checkpoint_every_steps = Some(5);
    let whole = tmp.path().join("whole");
    let report = run::run(&cfg, &whole, &mut Silent).unwrap();
    let steps_per_epoch = report.epochs[0].step_losses.len();
    assert!(steps_per_epoch > 10, "{steps_per_epoch}");

    // a failure after epoch 1's checkpoint
    let broken = tmp.path().join("after-epoch");
    let crash = RunOptions {
        fail_after_epoch: Some(1),
        ..Default::default()
    };
    let err = run::run_with(&cfg, &broken, crash, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    // a crash in the middle of epoch 2 (the last checkpoint: a multiple of 5 steps before it)
    let mid = tmp.path().join("mid-epoch");
    let at = steps_per_epoch + 7;
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run::run(&cfg, &mid, &mut CrashAt { at })
    }));
    assert!(crashed.is_err(), "the crash did not happen");
    for dir in [&broken, &mid] {
        let resumed = run::resume(dir, &mut Silent).unwrap();
        assert_eq!(
            std::fs::read(dir.join("best.safetensors")).unwrap(),
            std::fs::read(whole.join("best.safetensors")).unwrap(),
            "{}",
            dir.display()
        );
        assert_eq!(
            serde_json::to_value(&resumed.tasks).unwrap(),
            serde_json::to_value(&report.tasks).unwrap()
        );
        let losses = |r: &RunReport| -> Vec<Vec<f64>> {
            r.epochs.iter().map(|e| e.step_losses.clone()).collect()
        };
        assert_eq!(losses(&resumed), losses(&report), "{}", dir.display());
        for file in ["metrics.jsonl", "task_metrics.jsonl"] {
            let strip = |p: &Path| -> Vec<serde_json::Value> {
                std::fs::read_to_string(p.join(file))
                    .unwrap()
                    .lines()
                    .map(|l| {
                        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                        // wall-clock fields differ between runs
                        for k in ["seconds", "tokens_per_s"] {
                            v.as_object_mut().unwrap().remove(k);
                        }
                        v
                    })
                    .collect()
            };
            assert_eq!(strip(dir), strip(&whole), "{file} of {}", dir.display());
        }
    }
}

#[test]
fn single_task_t5_run_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = multi_task_config();
    cfg.task = Task::Glue(propetl::data::GlueTask::Sst2);
    cfg.tasks.clear();
    cfg.sampling_temperature = None;
    // one task: the single-task ProAdapter (share = "layers", no task mask to combine)
    cfg.petl.combine = None;
    cfg.train.epochs = 2;
    let whole = tmp.path().join("whole");
    let report = run::run(&cfg, &whole, &mut Silent).unwrap();
    assert!(report.tasks.is_empty());
    assert!(
        report.storage.description.contains("share=layers "),
        "the single-task form: {}",
        report.storage.description
    );
    assert!(report.test.accuracy.is_some());
    assert!(whole.join("task.json").exists() && whole.join("answers.json").exists());

    let broken = tmp.path().join("broken");
    let crash = RunOptions {
        fail_after_epoch: Some(1),
        ..Default::default()
    };
    let err = run::run_with(&cfg, &broken, crash, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    let resumed = run::resume(&broken, &mut Silent).unwrap();
    assert_eq!(resumed.test, report.test);
    assert_eq!(
        std::fs::read(broken.join("best.safetensors")).unwrap(),
        std::fs::read(whole.join("best.safetensors")).unwrap()
    );
}

#[test]
fn the_cli_runs_the_paper_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cli");
    let o = propetl(&[
        "train",
        "--config",
        root()
            .join("configs/t5/propetl_glue.toml")
            .to_str()
            .unwrap(),
        "--model-dir",
        root().join("tests/fixtures/tiny-t5").to_str().unwrap(),
        "--data-dir",
        root().join("tests/fixtures/glue").to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-len",
        "32",
        "--max-train-examples",
        "16",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // all eight tasks: every task's line and the 11-number GLUE average
    for task in ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"] {
        assert!(
            stdout.contains(&format!("  {task}: eval")),
            "{task}: {stdout}"
        );
    }
    assert!(
        stdout.contains("GLUE average (11 numbers, test)"),
        "{stdout}"
    );
    let report = read_report(&out);
    assert_eq!(report.tasks.len(), 8);
}

#[test]
fn t5_configurations_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let refuse = |cfg: &RunConfig| {
        let e = format!("{:#}", run::run(cfg, &out, &mut Silent).unwrap_err());
        assert!(!out.exists(), "a refused run wrote {}", out.display());
        e
    };
    // multi-task GLUE needs a text-to-text model
    let mut cfg = multi_task_config();
    cfg.model_dir = None;
    assert!(refuse(&cfg).contains("needs a T5 model"));
    // T5 blocks declare only the adapter site
    let mut cfg = multi_task_config();
    cfg.variant = propetl::runtime::Variant::ProPrefix;
    let e = refuse(&cfg);
    assert!(e.contains("T5"), "{e}");
    // `tasks` belongs to task = "glue"; no task twice
    let mut cfg = multi_task_config();
    cfg.task = Task::Glue(propetl::data::GlueTask::Rte);
    assert!(refuse(&cfg).contains("needs task = \"glue\""));
    let mut cfg = multi_task_config();
    cfg.tasks.push(propetl::data::GlueTask::Rte);
    assert!(refuse(&cfg).contains("lists `rte` twice"));
    let mut cfg = multi_task_config();
    cfg.sampling_temperature = Some(0.0);
    assert!(refuse(&cfg).contains("sampling_temperature must be a finite number > 0"));
    // `combine` is a run-time choice of multi-task masks only
    let mut cfg = multi_task_config();
    cfg.petl.combine = Some(propetl::runtime::Combine::And);
    cfg.variant = propetl::runtime::Variant::Adapter;
    cfg.petl.keep = None;
    let e = refuse(&cfg);
    assert!(
        e.contains("`combine` merges task masks with layer masks"),
        "{e}"
    );
}
