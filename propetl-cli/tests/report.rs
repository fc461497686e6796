//! `propetl report` end to end on runs of the built-in tiny RoBERTa: a PNG and an SVG with
//! readable axes and labels, seeds aggregated to mean ± std with n.

use std::path::{Path, PathBuf};
use std::process::Command;

fn glue_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/glue")
}

/// Train the tiny model on the SST-2 fixture for three epochs.
fn train(out: &Path, variant: &str, seed: u64, keep: Option<f64>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_propetl"));
    cmd.args(["train", "--task", "sst2", "--data-dir"])
        .arg(glue_dir())
        .args(["--epochs", "3", "--variant", variant, "--quiet", "--seed"])
        .arg(seed.to_string())
        .arg("--out")
        .arg(out);
    if let Some(k) = keep {
        cmd.args(["--keep", &k.to_string()]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Run `propetl report` and return its standard output.
fn report(runs: &[PathBuf], out: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_propetl"))
        .arg("report")
        .args(runs)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The text contents of an SVG's `<text>` elements.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            let body = &body[..body.find("</text>")?];
            Some(
                body.trim()
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&"),
            )
        })
        .collect()
}

#[test]
fn report_of_two_runs_writes_a_png_and_an_svg_with_readable_labels() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("pro_adapter");
    let b = dir.path().join("adapter");
    train(&a, "pro_adapter", 1, None);
    train(&b, "adapter", 1, None);
    let png = dir.path().join("fig.png");
    let table = report(&[a.clone(), b.clone()], &png);
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(dir.path().join("fig.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    let texts = svg_texts(&svg);
    for want in [
        "train loss per epoch",
        "epoch",
        "train loss",
        "test score vs storage",
        "storage (float32-equivalents, log scale)",
        "test accuracy (×100)",
        "pro_adapter",
        "adapter",
    ] {
        assert!(texts.iter().any(|t| t == want), "no {want:?} in {texts:?}");
    }
    // labels do not repeat themselves, and no run directory names when variants differ
    assert!(!svg.contains("adapter (adapter)"), "{texts:?}");
    assert!(
        !texts
            .iter()
            .any(|t| t.contains("(pro_adapter)") || t.contains("sst2")),
        "{texts:?}"
    );
    // integer epoch ticks only
    for e in ["1", "2", "3"] {
        assert!(texts.iter().any(|t| t == e), "no epoch tick {e}: {texts:?}");
    }
    for frac in ["0.5", "1.5", "2.5", "3.5"] {
        assert!(!texts.iter().any(|t| t == frac), "tick {frac}: {texts:?}");
    }
    // storage ticks are SI-labelled (no `100000.0`-style labels)
    assert!(
        texts.iter().any(|t| t.ends_with('k')),
        "no SI storage tick: {texts:?}"
    );
    assert!(
        !texts.iter().any(|t| t.ends_with("000.0")),
        "raw storage tick: {texts:?}"
    );
    // the embedded font is named by its generic family in the SVG
    assert!(svg.contains("font-family=\"sans-serif\""));
    // single runs: no ± in the table
    assert!(
        table.contains("pro_adapter") && !table.contains('±'),
        "{table}"
    );

    // `--out x.svg` writes the SVG there and the PNG next to it
    let out = dir.path().join("other.svg");
    report(&[a, b], &out);
    assert!(std::fs::read_to_string(&out).unwrap().starts_with("<svg"));
    assert_eq!(
        &std::fs::read(dir.path().join("other.png")).unwrap()[..8],
        b"\x89PNG\r\n\x1a\n"
    );
}

#[test]
fn report_aggregates_seeds_and_names_only_the_distinguishing_override() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        ("k5-s1", "pro_adapter", 1, Some(0.5)),
        ("k5-s2", "pro_adapter", 2, Some(0.5)),
        ("k2-s1", "pro_adapter", 1, Some(0.2)),
        ("adapter", "adapter", 1, None),
    ]
    .map(|(name, variant, seed, keep)| {
        let d = dir.path().join(name);
        train(&d, variant, seed, keep);
        d
    });
    let png = dir.path().join("seeds.png");
    let table = report(&runs, &png);
    let row = |label: &str| {
        table
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .contains(label)
            })
            .unwrap_or_else(|| panic!("no row {label:?} in\n{table}"))
            .to_string()
    };
    // two seeds of keep=0.5: one row, n = 2, mean ± std
    let k5 = row("pro_adapter (keep=0.5) 2 ");
    assert!(k5.contains("accuracy") && k5.contains('±'), "{table}");
    let k2 = row("pro_adapter (keep=0.2) 1 ");
    assert!(!k2.contains('±'), "{table}");
    let ad = row("sst2 adapter 1 ");
    assert!(!ad.contains("(adapter") && !ad.contains("keep"), "{table}");
    assert_eq!(table.matches("pro_adapter").count(), 2, "{table}");
    assert!(table.contains("mean ± sample std"), "{table}");

    let svg = std::fs::read_to_string(dir.path().join("seeds.svg")).unwrap();
    let texts = svg_texts(&svg);
    for want in [
        "pro_adapter (keep=0.5), n=2",
        "pro_adapter (keep=0.2)",
        "adapter",
        "keep=0.2",
        "mean ± std over seeds",
    ] {
        assert!(texts.iter().any(|t| t == want), "no {want:?} in {texts:?}");
    }
    assert!(!svg.contains("adapter (adapter)"), "{texts:?}");
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
}
