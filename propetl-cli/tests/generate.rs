//! `propetl generate`: input lines in (stdin or --input), one JSON object per line out, in
//! input order; the ids are transformers' greedy ids for the `t5-generate` fixture.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/t5-generate")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
        .unwrap()
}

fn generate(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_propetl"))
        .arg("generate")
        .arg("--model-dir")
        .arg(fixture())
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
    child.wait_with_output().unwrap()
}

fn records(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// transformers' greedy ids of the fixture inputs, cut after the first EOS.
fn greedy_ids(exp: &serde_json::Value) -> Vec<Vec<u64>> {
    exp["cases"][0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let r: Vec<u64> = r
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap())
                .collect();
            match r.iter().position(|&t| t == 1) {
                Some(i) => r[..=i].to_vec(),
                None => r,
            }
        })
        .collect()
}

#[test]
fn stdin_lines_in_json_lines_out_in_order() {
    let exp = expected();
    assert_eq!(exp["cases"][0]["name"], "greedy");
    let inputs: Vec<&str> = exp["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let want = greedy_ids(&exp);
    // the fixture's inputs twice, reversed the second time; batches of 3 cut through them
    let mut lines: Vec<&str> = inputs.clone();
    lines.extend(inputs.iter().rev());
    let out = generate(
        &["--max-new-tokens", "24", "--batch-size", "3"],
        &(lines.join("\n") + "\n"),
    );
    let recs = records(&out);
    assert_eq!(recs.len(), lines.len());
    for (i, (rec, line)) in recs.iter().zip(&lines).enumerate() {
        assert_eq!(rec["input"], *line, "order");
        let k = inputs.iter().position(|x| x == line).unwrap();
        let ids: Vec<u64> = rec["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want[k], "record {i}");
        assert!(rec["output"].is_string());
    }
    // the texts are the decoded ids (special tokens skipped): inputs whose ids differ differ
    assert_ne!(recs[0]["output"], recs[1]["output"]);
    assert!(!recs[0]["output"].as_str().unwrap().is_empty());
}

#[test]
fn input_file_beams_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, "hi\n\nsst2 sentence: fine\n").unwrap();
    let out = generate(
        &[
            "--input",
            path.to_str().unwrap(),
            "--num-beams",
            "3",
            "--max-new-tokens",
            "24",
        ],
        "ignored\n",
    );
    let recs = records(&out);
    let inputs: Vec<&str> = recs.iter().map(|r| r["input"].as_str().unwrap()).collect();
    assert_eq!(inputs, ["hi", "", "sst2 sentence: fine"]);
    assert!(recs
        .iter()
        .all(|r| (1..=24).contains(&r["ids"].as_array().unwrap().len())));
    // "hi": the fixture's beam-3 ids
    let exp = expected();
    let beam3 = exp["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "beam3")
        .unwrap();
    let hi = exp["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s == "hi")
        .unwrap();
    assert_eq!(recs[0]["ids"], beam3["ids"][hi]);

    let out = generate(&["--run", "runs/none", "--task", "sst2"], "hi\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // a run directory that is not there is named before any work
    assert!(
        err.contains("is runs/none a run directory?") && err.contains("config.toml"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_propetl"))
        .args(["generate", "--model-dir"])
        .arg(empty.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}
