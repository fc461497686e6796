//! The `propetl` binary end to end: train from a config file, eval, report, parity (on the
//! built-in tiny RoBERTa, the synthetic GLUE data and the parity fixtures of `tests/fixtures`).

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn glue_dir() -> PathBuf {
    root().join("tests/fixtures/glue")
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
    let fixtures = root().join("tests/fixtures");
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

#[test]
fn a_gpu_device_on_a_cpu_build_names_the_cargo_feature() {
    if cfg!(feature = "cuda") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_propetl"))
        .args([
            "train", "--task", "sst2", "--device", "cuda", "--epochs", "1",
        ])
        .arg("--data-dir")
        .arg(glue_dir())
        .arg("--out")
        .arg(tempfile::tempdir().unwrap().path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`cuda` cargo feature") && err.contains("--features cuda"),
        "{err}"
    );
    // an unknown device is refused by the argument parser
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_propetl"))
        .args(["train", "--task", "sst2", "--device", "tpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown device `tpu`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The library crate does not pull the command line's dependencies into library users.
#[test]
fn the_library_crate_has_no_cli_dependencies() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "propetl",
            "-e",
            "normal",
            // direct dependencies: what the library itself pulls in (hf-hub's own download
            // progress bar, indicatif, is hf-hub's choice, not a CLI dependency of ours)
            "--depth",
            "1",
            "--prefix",
            "none",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("candle-core"), "{tree}");
    for cli_only in ["clap ", "plotters ", "indicatif ", "tracing-subscriber "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(cli_only)),
            "the library depends on {cli_only}"
        );
    }
}

/// Method page §6 for multi-task T5: all 8 GLUE tasks on t5-base cost ≈197k float32
/// equivalents against 2.38M for 24 unshared adapters; one more task costs its task masks.
#[test]
fn storage_of_multi_task_t5_reproduces_the_method_page() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_propetl"))
        .args(["storage", "--model", "t5-base", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["float32_equivalents"], 197_440.0);
    assert_eq!(v["baseline_floats"], 2_379_264);
    // two task masks (down, up) of 768 × 64 entries at one bit each
    assert_eq!(v["marginal_task_float32_equivalents"], 3072.0);
    let three = std::process::Command::new(env!("CARGO_BIN_EXE_propetl"))
        .args([
            "storage",
            "--model",
            "t5-base",
            "--tasks",
            "rte,sst2,cola",
            "--json",
        ])
        .output()
        .unwrap();
    let v3: serde_json::Value = serde_json::from_slice(&three.stdout).unwrap();
    assert_eq!(v3["float32_equivalents"], 197_440.0 - 5.0 * 3072.0);
    // T5 declares no prefix site
    let prefix = std::process::Command::new(env!("CARGO_BIN_EXE_propetl"))
        .args(["storage", "--model", "t5-base", "--variant", "pro_prefix"])
        .output()
        .unwrap();
    assert!(!prefix.status.success());
    let err = String::from_utf8_lossy(&prefix.stderr);
    assert!(err.contains("T5 has no variant `pro_prefix`"), "{err}");
}
