//! Every committed fixture (from an independent PyTorch implementation over Hugging Face
//! transformers) is reproduced within its tolerance by `propetl parity --json`: masks exactly,
//! hidden states, logits, loss, every gradient, one AdamW step and the loss after it.

use std::path::PathBuf;

fn run(name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_propetl"))
        .args(["parity", "--json"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(checks.iter().all(|c| c["ok"] == true), "{name}: {stdout}");
    // every trainable tensor was compared: masks, forward, grads and the step
    if name.starts_with("roberta") {
        assert!(
            names.iter().any(|n| n.starts_with("grad:head.")),
            "{names:?}"
        );
        assert!(names.contains(&"hidden"), "{names:?}");
    }
    assert!(names.contains(&"logits") && names.contains(&"loss"));
    assert!(names.iter().any(|n| n.starts_with("grad:")));
    assert!(names.iter().any(|n| n.starts_with("step1:")));
}

#[test]
fn pro_adapter() {
    run("roberta-pro_adapter-s0");
}
#[test]
fn pro_lora() {
    run("roberta-pro_lora-s0");
}
#[test]
fn pro_prefix() {
    run("roberta-pro_prefix-s0");
}
#[test]
fn adapter_baseline() {
    run("roberta-adapter-s0");
}
#[test]
fn lora_baseline() {
    run("roberta-lora-s0");
}
#[test]
fn prefix_baseline() {
    run("roberta-prefix-s0");
}
#[test]
fn t5_pro_adapter_multi_task() {
    run("t5-pro_adapter-s0");
}
#[test]
fn t5_adapter_baseline() {
    run("t5-adapter-s0");
}
