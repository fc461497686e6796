//! `propetl predict`: a trained run on new text, from JSONL / CSV / TSV / plain lines, JSON lines
//! out in input order, identical to the library call and to the run's own evaluation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_propetl")
}

fn train(out: &Path, task: &str) {
    let st = Command::new(bin())
        .args([
            "train",
            "--task",
            task,
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--quiet",
        ])
        .arg("--data-dir")
        .arg(root().join("tests/fixtures/glue"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn predict(args: &[&str], stdin: &str) -> Vec<serde_json::Value> {
    let mut child = Command::new(bin())
        .arg("predict")
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn predictions_keep_input_order_and_match_across_formats_and_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("sst2");
    train(&run, "sst2");
    let run_s = run.to_str().unwrap();
    // lengths vary a lot so that batching by length reorders the inputs internally
    let texts = [
        "a gripping , beautifully shot film",
        "dull",
        "the plot goes nowhere and the actors seem to know it , scene after tedious scene",
        "fine",
        "an unexpected delight from start to finish",
    ];
    let lines = predict(&[run_s, "--batch-size", "2"], &texts.join("\n"));
    assert_eq!(lines.len(), texts.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], i.to_string());
        let label = l["label"].as_str().unwrap();
        assert!(label == "positive" || label == "negative", "{l}");
        let p = &l["probabilities"];
        let sum = p["positive"].as_f64().unwrap() + p["negative"].as_f64().unwrap();
        assert!((sum - 1.0).abs() < 1e-5, "{l}");
    }
    // batch size does not change a prediction
    assert_eq!(
        predict(&[run_s, "--batch-size", "5"], &texts.join("\n")),
        lines
    );
    // JSONL with ids, from a file
    let jsonl = dir.path().join("in.jsonl");
    let body: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "{}\n",
                serde_json::json!({"id": format!("r{i}"), "sentence": t})
            )
        })
        .collect();
    std::fs::write(&jsonl, body).unwrap();
    let from_jsonl = predict(
        &[
            run_s,
            "--input",
            jsonl.to_str().unwrap(),
            "--text-column",
            "sentence",
            "--id-column",
            "id",
        ],
        "",
    );
    for (i, (a, b)) in from_jsonl.iter().zip(&lines).enumerate() {
        assert_eq!(a["id"], format!("r{i}"));
        assert_eq!(a["probabilities"], b["probabilities"]);
    }
    // CSV with a quoted comma
    let csv = dir.path().join("in.csv");
    let body: String = std::iter::once("text\n".to_string())
        .chain(texts.iter().map(|t| format!("\"{t}\"\n")))
        .collect();
    std::fs::write(&csv, body).unwrap();
    let from_csv = predict(&[run_s, "--input", csv.to_str().unwrap()], "");
    assert_eq!(from_csv, lines);
    // the library call gives the same
    let predictor = propetl::predict::Predictor::load(&run, None).unwrap();
    let lib = predictor.predict_texts(&texts, 3).unwrap();
    for (a, b) in lib.iter().zip(&lines) {
        assert_eq!(a.label.as_deref(), b["label"].as_str());
    }
}

#[test]
fn pair_and_regression_tasks_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rte = dir.path().join("rte");
    train(&rte, "rte");
    let tsv = dir.path().join("pairs.tsv");
    std::fs::write(
        &tsv,
        "id\tsentence1\tsentence2\na\tA man is eating.\tSomeone eats.\nb\tThe sky is green.\tThe sky is blue.\n",
    )
    .unwrap();
    let out = predict(
        &[
            rte.to_str().unwrap(),
            "--input",
            tsv.to_str().unwrap(),
            "--text-column",
            "sentence1",
            "--text-pair-column",
            "sentence2",
            "--id-column",
            "id",
        ],
        "",
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["id"], "b");
    assert!(out[0]["probabilities"]["not_entailment"].is_number());
    let stsb = dir.path().join("stsb");
    train(&stsb, "stsb");
    let out = predict(
        &[
            stsb.to_str().unwrap(),
            "--format",
            "jsonl",
            "--text-pair-column",
            "b",
        ],
        "{\"text\": \"A cat sits.\", \"b\": \"A cat is sitting.\"}\n",
    );
    assert!(
        out[0]["score"].is_number() && out[0].get("label").is_none(),
        "{}",
        out[0]
    );
    // a missing column names the file and the line
    let bad = Command::new(bin())
        .args(["predict", stsb.to_str().unwrap(), "--format", "jsonl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bad = bad;
    bad.stdin
        .take()
        .unwrap()
        .write_all(b"{\"sentence\": \"x\"}\n")
        .unwrap();
    let o = bad.wait_with_output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("<stdin>:1") && err.contains("no `text` field"),
        "{err}"
    );
}
