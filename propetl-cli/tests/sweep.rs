//! `propetl sweep` end to end on the built-in tiny RoBERTa and the synthetic STS-B data of
//! `tests/fixtures/glue` (a regression task: its correlations differ from seed to seed, so the
//! standard deviations are not trivially 0): a keep × seed grid next to its unshared baseline, the summary's
//! n / mean / std against the cells' own reports, a half-done sweep continued without
//! rerunning complete cells, and bad grids refused before anything is written.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::SystemTime;

use propetl::sweep::{self, CellAction, SilentSweep, SweepConfig, SweepOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// ProAdapter at keep 0.1 and 0.5 and the unshared adapter (keep does not apply: one cell
/// per seed), seeds 1 and 2: six quick runs.
fn sweep_toml(epochs: usize) -> String {
    format!(
        "task = \"stsb\"\ndata_dir = {:?}\nmax_train_examples = 24\n\
         [train]\nepochs = {epochs}\nbatch_size = 8\nmax_len = 32\nlr = 3e-3\nprogress = false\n\
         [sweep]\nvariants = [\"pro_adapter\", \"adapter\"]\nseeds = [1, 2]\n\
         [sweep.petl]\nkeep = [0.1, 0.5]\n",
        root().join("tests/fixtures/glue")
    )
}

fn propetl(args: &[&str], extra: &[&Path]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_propetl"));
    cmd.args(args);
    for p in extra {
        cmd.arg(p);
    }
    cmd.output().unwrap()
}

fn sweep_cli(config: &Path, out: &Path) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_propetl"));
    cmd.arg("sweep")
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--quiet");
    cmd.output().unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const CELLS: [&str; 6] = [
    "pro_adapter-keep0.1-seed1",
    "pro_adapter-keep0.1-seed2",
    "pro_adapter-keep0.5-seed1",
    "pro_adapter-keep0.5-seed2",
    "adapter-seed1",
    "adapter-seed2",
];

/// mean and sample std by hand
fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64;
    (m, var.sqrt())
}

fn check_summary(out: &Path) {
    let summary = json(&out.join("summary.json"));
    let groups = summary["groups"].as_array().unwrap();
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["pro_adapter-keep0.1", "pro_adapter-keep0.5", "adapter"]
    );
    assert_eq!(summary["selection_metric"], "mean of pearson, spearman");
    let mut some_spread = false;
    for g in groups {
        let name = g["group"].as_str().unwrap();
        assert_eq!(g["n"], 2, "{name}");
        assert_eq!(g["seeds"], serde_json::json!([1, 2]), "{name}");
        let reports: Vec<serde_json::Value> = [1, 2]
            .iter()
            .map(|s| json(&out.join(format!("{name}-seed{s}")).join("report.json")))
            .collect();
        let sel: Vec<f64> = reports
            .iter()
            .map(|r| r["test"]["selection"].as_f64().unwrap())
            .collect();
        let (m, s) = mean_std(&sel);
        assert!(
            (g["selection"]["mean"].as_f64().unwrap() - m).abs() < 1e-9,
            "{name}"
        );
        assert!(
            (g["selection"]["std"].as_f64().unwrap() - s).abs() < 1e-9,
            "{name}"
        );
        some_spread |= s > 1e-6;
        for metric in ["pearson", "spearman"] {
            let v: Vec<f64> = reports
                .iter()
                .map(|r| r["test"][metric].as_f64().unwrap())
                .collect();
            let (m, s) = mean_std(&v);
            assert!((g["test"][metric]["mean"].as_f64().unwrap() - m).abs() < 1e-9);
            assert!((g["test"][metric]["std"].as_f64().unwrap() - s).abs() < 1e-9);
        }
        assert_eq!(g["test"].as_object().unwrap().len(), 2, "{name}");
        let f32eq = reports[0]["storage"]["float32_equivalents"]
            .as_f64()
            .unwrap();
        assert_eq!(g["storage"]["float32_equivalents"].as_f64().unwrap(), f32eq);
        assert_eq!(
            g["storage"]["percent_of_backbone"],
            reports[0]["storage"]["percent_of_backbone"]
        );
    }
    assert!(some_spread, "every group has std 0: the check is vacuous");
    // the unshared adapter of the same sizes is the masked groups' baseline
    let adapter = &groups[2];
    for g in &groups[..2] {
        assert_eq!(g["baseline"], "adapter");
        let delta = g["selection"]["mean"].as_f64().unwrap()
            - adapter["selection"]["mean"].as_f64().unwrap();
        assert!((g["selection_minus_baseline"].as_f64().unwrap() - delta).abs() < 1e-9);
        let ratio = g["storage"]["float32_equivalents"].as_f64().unwrap()
            / adapter["storage"]["float32_equivalents"].as_f64().unwrap();
        assert!((g["storage_over_baseline"].as_f64().unwrap() - ratio).abs() < 1e-12);
        assert!(ratio < 1.0);
    }
    // a mask costs one bit per entry whatever its keep ratio: the same storage
    assert_eq!(
        groups[0]["storage"]["float32_equivalents"],
        groups[1]["storage"]["float32_equivalents"]
    );
    // the CSV: a header and one row per group, the same numbers
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(row[col("group")], "pro_adapter-keep0.1");
    assert_eq!(row[col("overrides")], "keep=0.1");
    assert_eq!(row[col("n")], "2");
    assert_eq!(row[col("seeds")], "1 2");
    let csv_mean: f64 = row[col("test_spearman_mean")].parse().unwrap();
    assert_eq!(
        csv_mean,
        groups[0]["test"]["spearman"]["mean"].as_f64().unwrap()
    );
    let csv_std: f64 = row[col("selection_std")].parse().unwrap();
    assert_eq!(csv_std, groups[0]["selection"]["std"].as_f64().unwrap());
}

#[test]
fn a_sweep_runs_every_cell_and_summarizes_over_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sweep.toml");
    std::fs::write(&config, sweep_toml(2)).unwrap();
    let out = dir.path().join("sweep");
    let o = sweep_cli(&config, &out);
    ok(&o);
    for cell in CELLS {
        let cfg = std::fs::read_to_string(out.join(cell).join("config.toml")).unwrap();
        let seed = &cell[cell.len() - 1..];
        assert!(cfg.contains(&format!("seed = {seed}")), "{cell}: {cfg}");
        if cell.starts_with("adapter") {
            assert!(!cfg.contains("keep"), "{cell}: {cfg}");
        } else {
            assert!(
                cfg.contains(&format!("keep = {}", &cell[16..19])),
                "{cell}: {cfg}"
            );
        }
    }
    check_summary(&out);
    assert_eq!(
        std::fs::read_to_string(out.join("sweep.toml")).unwrap(),
        sweep_toml(2)
    );
    // the storage figure, and the keep figure (storage does not change with keep)
    for f in ["plot.png", "plot.svg", "plot-keep.png", "plot-keep.svg"] {
        assert!(out.join(f).exists(), "{f}");
    }
    for f in ["plot.png", "plot-keep.png"] {
        assert_eq!(
            &std::fs::read(out.join(f)).unwrap()[..8],
            b"\x89PNG\r\n\x1a\n"
        );
    }
    let svg = std::fs::read_to_string(out.join("plot-keep.svg")).unwrap();
    assert!(
        svg.contains("vs keep") && svg.contains("adapter"),
        "keep figure"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("pro_adapter-keep0.5") && stdout.contains("±"),
        "{stdout}"
    );
}

fn stamp(path: &Path) -> (SystemTime, Vec<u8>) {
    (
        std::fs::metadata(path).unwrap().modified().unwrap(),
        std::fs::read(path).unwrap(),
    )
}

#[test]
fn a_half_done_sweep_continues_without_rerunning_complete_cells() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sweep.toml");
    let text = sweep_toml(2);
    std::fs::write(&config, &text).unwrap();
    let out = dir.path().join("sweep");
    // first pass: one cell crashes after its first epoch's checkpoint
    let cfg = SweepConfig::from_toml_str(&text, "sweep.toml").unwrap();
    let crashed = "pro_adapter-keep0.5-seed1";
    let options = SweepOptions {
        fail_cell_after_epoch: Some((crashed.to_string(), 1)),
        ..Default::default()
    };
    let outcome =
        sweep::run_sweep(&cfg, &text, &out, &options, &mut SilentSweep::default()).unwrap();
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(outcome.failed[0].0, crashed);
    assert!(out.join(crashed).join("checkpoint.safetensors").exists());
    assert!(!out.join(crashed).join("report.json").exists());
    // the partial summary: the crashed cell's group has n = 1 and names what is missing
    let partial = json(&out.join("summary.json"));
    assert_eq!(partial["groups"][1]["n"], 1);
    assert_eq!(
        partial["groups"][1]["missing"],
        serde_json::json!([crashed])
    );
    assert!(partial["groups"][1]["selection"]["std"].is_null());
    // a cell removed altogether, and one half-done without a checkpoint
    let removed = "adapter-seed2";
    std::fs::remove_dir_all(out.join(removed)).unwrap();
    let no_ckpt = "pro_adapter-keep0.1-seed2";
    std::fs::remove_file(out.join(no_ckpt).join("report.json")).unwrap();
    std::fs::remove_file(out.join(no_ckpt).join("checkpoint.safetensors")).unwrap();
    let cells = cfg.cells().unwrap();
    let actions = sweep::plan(&cells, &out, &SweepOptions::default()).unwrap();
    let action = |name: &str| actions[cells.iter().position(|c| c.name == name).unwrap()];
    assert_eq!(action(crashed), CellAction::Resume);
    assert_eq!(action(removed), CellAction::Run);
    assert_eq!(action(no_ckpt), CellAction::Redo);
    assert_eq!(action("adapter-seed1"), CellAction::Skip);
    let complete = [
        "pro_adapter-keep0.1-seed1",
        "pro_adapter-keep0.5-seed2",
        "adapter-seed1",
    ];
    let before: Vec<_> = complete
        .iter()
        .map(|c| stamp(&out.join(c).join("report.json")))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // second pass, through the CLI: only the three unfinished cells run
    ok(&sweep_cli(&config, &out));
    let after: Vec<_> = complete
        .iter()
        .map(|c| stamp(&out.join(c).join("report.json")))
        .collect();
    assert_eq!(before, after, "complete cells were rerun");
    for cell in CELLS {
        assert!(out.join(cell).join("report.json").exists(), "{cell}");
    }
    check_summary(&out);
    // the resumed cell ends where an uninterrupted run of its configuration ends
    let resumed = json(&out.join(crashed).join("report.json"));
    let fresh = dir.path().join("fresh");
    let cell = cells.iter().find(|c| c.name == crashed).unwrap();
    let report = propetl::run::run(&cell.config, &fresh, &mut propetl::train::Silent).unwrap();
    assert_eq!(
        resumed["test"]["selection"].as_f64().unwrap(),
        report.test.selection
    );
    // a changed grid that contradicts the finished cells is refused, nothing touched
    std::fs::write(&config, sweep_toml(3)).unwrap();
    let o = sweep_cli(&config, &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another configuration") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("sweep.toml")).unwrap(),
        text
    );
}

#[test]
fn bad_grids_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sweep.toml");
    let out = dir.path().join("sweep");
    let base = sweep_toml(1);
    for (bad, expected) in [
        (
            base.replace("\"adapter\"]", "\"adaptor\"]"),
            "unknown variant `adaptor`",
        ),
        (base.replace("keep = [0.1, 0.5]", "keep = [0.1, 0]"), "keep"),
        (
            base.replace("keep = [0.1, 0.5]", "r = [4]"),
            "applies to none of the variants",
        ),
        (base.replace("seeds = [1, 2]", "seeds = [1, 1]"), "twice"),
        (base.replace("lr = 3e-3", "lr = -1.0"), "lr"),
    ] {
        std::fs::write(&config, &bad).unwrap();
        let o = sweep_cli(&config, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{bad}");
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
        assert!(!out.exists(), "{bad}: the sweep folder was created");
    }
    // the cell is named in a per-cell error
    std::fs::write(
        &config,
        base.replace("keep = [0.1, 0.5]", "keep = [0.1, 0]"),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&sweep_cli(&config, &out).stderr).to_string();
    assert!(err.contains("pro_adapter-keep0-seed1"), "{err}");
    // no [sweep] section
    std::fs::write(&config, "task = \"sst2\"\nvariant = \"adapter\"\n").unwrap();
    let o = propetl(&["sweep", "--config"], &[&config]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("[sweep]"));
}

/// The cells of a shipped sweep file (`configs/sweeps/<file>`), after checking its task; None
/// without the fetched assets (planning reads the model's config.json for its family).
fn shipped_sweep_cells(file: &str, task: &str) -> Option<Vec<sweep::Cell>> {
    let mut cfg = SweepConfig::from_toml_file(&root().join("configs/sweeps").join(file)).unwrap();
    assert_eq!(cfg.base.task.name(), task, "{file}");
    if !root().join("assets/all-MiniLM-L6-v2/config.json").exists() {
        return None;
    }
    cfg.base.model_dir = Some(root().join("assets/all-MiniLM-L6-v2"));
    cfg.base.data_dir = Some(root().join("assets/sentiment"));
    Some(cfg.cells().unwrap())
}

#[test]
fn the_keep_sweeps_parse_into_48_cells() {
    for (file, task) in [
        ("keep_pro_adapter.toml", "rotten-tomatoes"),
        ("keep_vader.toml", "vader-movies"),
    ] {
        let Some(cells) = shipped_sweep_cells(file, task) else {
            continue;
        };
        assert_eq!(cells.len(), 48, "{file}");
        assert_eq!(cells[0].name, "pro_adapter-keep0.05-seed42");
        assert_eq!(cells.last().unwrap().name, "lora-seed44");
    }
}

#[test]
fn the_variant_sweeps_parse_into_21_cells_with_full_fine_tunings_own_rate() {
    for (file, task) in [
        ("variants_rt.toml", "rotten-tomatoes"),
        ("variants_vader.toml", "vader-movies"),
    ] {
        let Some(cells) = shipped_sweep_cells(file, task) else {
            continue;
        };
        assert_eq!(cells.len(), 21, "{file}");
        for c in &cells {
            let lr = if c.name.starts_with("full-") {
                5e-5
            } else {
                1e-3
            };
            assert_eq!(c.config.train.lr, lr, "{file} {}", c.name);
        }
        assert_eq!(cells.last().unwrap().name, "full-seed44");
    }
}
