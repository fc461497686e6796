//! Run directories: a failed or refused run never touches what is on disk, `--overwrite`
//! swaps a finished run in, a lock refuses two writers, and a crashed run resumes to the
//! bit-identical result of an uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use propetl::run::{resume_with, run_with, RunConfig, RunOptions, Task, BEST_FILE};
use propetl::runtime::Variant;
use propetl::train::Silent;

fn glue_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/glue")
}

fn quick(epochs: usize) -> RunConfig {
    let mut c = RunConfig::new("sst2".parse::<Task>().unwrap(), Variant::ProAdapter);
    c.data_dir = Some(glue_dir());
    c.train.epochs = epochs;
    c.train.batch_size = 8;
    c.train.lr = 3e-3;
    c.train.progress = false;
    c
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn an_existing_run_is_refused_untouched_and_overwrite_swaps_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    run_with(&quick(1), &out, RunOptions::default(), &mut Silent).unwrap();
    let before = snapshot(&out);
    // a second run into it: refused, nothing changed
    let err = run_with(&quick(1), &out, RunOptions::default(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--overwrite") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(snapshot(&out), before);
    // an invalid configuration with --overwrite: refused before any work, nothing changed
    let mut bad = quick(1);
    bad.train.lr = -1.0;
    let overwrite = RunOptions {
        overwrite: true,
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        run_with(&bad, &out, overwrite, &mut Silent).unwrap_err()
    );
    assert!(err.contains("train.lr"), "{err}");
    assert_eq!(snapshot(&out), before);
    // a run that fails midway with --overwrite: the old run is still there, no leftovers
    let crash = RunOptions {
        overwrite: true,
        fail_after_epoch: Some(1),
    };
    assert!(run_with(&quick(2), &out, crash, &mut Silent).is_err());
    assert_eq!(snapshot(&out), before);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["run"], "staging directories left behind");
    // a successful --overwrite replaces it as a whole
    let report = run_with(&quick(2), &out, overwrite, &mut Silent).unwrap();
    assert_eq!(report.epochs.len(), 2);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
}

#[test]
fn a_lock_refuses_a_second_writer_and_a_stale_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    // pid 1 is always alive: another writer
    std::fs::write(out.join(".lock"), "1\n").unwrap();
    let err = run_with(&quick(1), &out, RunOptions::default(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use by another propetl process"), "{err}");
    // a lock whose process is gone is stale
    std::fs::write(out.join(".lock"), "4000000000\n").unwrap();
    let overwrite = RunOptions {
        overwrite: true,
        ..Default::default()
    };
    run_with(&quick(1), &out, overwrite, &mut Silent).unwrap();
    assert!(!out.join(".lock").exists(), "the lock is released");
    assert!(out.join("report.json").exists());
}

#[test]
fn a_crashed_run_resumes_bit_identical_to_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quick(3);
    cfg.train.checkpoint_every_steps = Some(2);
    let straight = dir.path().join("straight");
    let a = run_with(&cfg, &straight, RunOptions::default(), &mut Silent).unwrap();
    // the same run with a fault injected right after epoch 1's checkpoint
    let crashed = dir.path().join("crashed");
    let crash = RunOptions {
        fail_after_epoch: Some(1),
        ..Default::default()
    };
    let err = run_with(&cfg, &crashed, crash, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(!crashed.join("report.json").exists());
    let b = resume_with(&crashed, RunOptions::default(), &mut Silent).unwrap();
    assert_eq!(a.epochs.len(), b.epochs.len());
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert_eq!(x.step_losses, y.step_losses, "epoch {}", x.epoch);
        assert_eq!(x.eval, y.eval, "epoch {}", x.epoch);
    }
    assert_eq!(a.best_epoch, b.best_epoch);
    assert_eq!(a.test, b.test);
    let (x, y) = (
        std::fs::read(straight.join(BEST_FILE)).unwrap(),
        std::fs::read(crashed.join(BEST_FILE)).unwrap(),
    );
    let header = |b: &[u8]| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        String::from_utf8_lossy(&b[8..8 + n]).to_string()
    };
    assert_eq!(header(&x), header(&y), "best state manifests differ");
    assert!(x == y, "best state tensors differ");
    let lines = |d: &Path| {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(&crashed), 3);
    // a directory without a checkpoint cannot be resumed
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(resume_with(&empty, RunOptions::default(), &mut Silent).is_err());
}

#[test]
fn a_full_fine_tuning_run_trains_saves_restores_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quick(2);
    cfg.variant = Variant::Full;
    cfg.train.lr = 1e-4;
    cfg.train.checkpoint_every_steps = Some(2);
    let straight = dir.path().join("straight");
    let a = run_with(&cfg, &straight, RunOptions::default(), &mut Silent).unwrap();
    // storage: the whole backbone, no masks
    assert_eq!(a.storage.mask_entries, 0);
    assert!(a.storage.percent_of_backbone > 90.0, "{:?}", a.storage);
    assert_eq!(a.storage.ratio_to_baseline, 1.0);
    // the losses move: the backbone trains
    let losses: Vec<f64> = a
        .epochs
        .iter()
        .flat_map(|e| e.step_losses.clone())
        .collect();
    assert!(losses.iter().all(|l| l.is_finite()));
    // the saved state restores to the reported test metrics
    let again = propetl::run::evaluate_run(&straight, "test").unwrap();
    assert_eq!(again, a.test);
    // a crash after epoch 1 resumes bit-identically (backbone weights and their AdamW moments
    // are in the checkpoint)
    let crashed = dir.path().join("crashed");
    let crash = RunOptions {
        fail_after_epoch: Some(1),
        ..Default::default()
    };
    assert!(run_with(&cfg, &crashed, crash, &mut Silent).is_err());
    let b = resume_with(&crashed, RunOptions::default(), &mut Silent).unwrap();
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert_eq!(x.step_losses, y.step_losses, "epoch {}", x.epoch);
    }
    assert!(
        std::fs::read(straight.join(BEST_FILE)).unwrap()
            == std::fs::read(crashed.join(BEST_FILE)).unwrap(),
        "best states differ"
    );
    // a PETL override on `full` is refused before anything is written
    let mut bad = cfg.clone();
    bad.petl.keep = Some(0.5);
    let refused = dir.path().join("refused");
    let e = run_with(&bad, &refused, RunOptions::default(), &mut Silent).unwrap_err();
    assert!(
        format!("{e:#}").contains("does not apply to variant `full`"),
        "{e:#}"
    );
    assert!(!refused.exists());
}
