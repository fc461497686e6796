//! Every committed fixture (from an independent PyTorch implementation over Hugging Face
//! transformers) is reproduced within its tolerance: masks exactly, hidden states, logits,
//! loss, every gradient, one AdamW step and the loss after it.

use std::path::Path;

fn run(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let report = propetl::parity::check_fixture(&dir).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    print!("{}", report.to_text());
    assert!(report.passed(), "{}", report.to_text());
    // every trainable tensor was compared: masks, forward, grads and the step
    if name.starts_with("roberta") {
        assert!(report
            .checks
            .iter()
            .any(|c| c.name.starts_with("grad:head.")));
    }
    assert!(report.checks.iter().any(|c| c.name.starts_with("grad:")));
    assert!(report.checks.iter().any(|c| c.name.starts_with("step1:")));
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
