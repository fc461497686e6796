//! Bad inputs, table-driven: every case writes some files into a fresh temporary directory
//! (configs, data, copies of checkpoints with an edited `config.json`, a run directory…), runs
//! the `propetl` binary on them and checks that
//!
//! - it exits with the expected code (1 for a refused input, 2 for a command-line usage error
//!   found by the argument parser; never a signal, never 101 = a panic);
//! - stderr holds every expected substring (the message names the problem: the key and its
//!   allowed range, the file and line, …);
//! - neither stream mentions `panicked` or `RUST_BACKTRACE`;
//! - the temporary directory is exactly as the setup left it: every file byte-identical, no
//!   file or directory added or removed (the command runs inside it, so a stray relative write
//!   is caught too).
//!
//! Cases are grouped by class, one `#[test]` per class; each test runs all its cases and
//! fails with a summary of every failing case and its stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_propetl");
/// A command still running after this long is killed and its case fails.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

fn glue() -> PathBuf {
    fixtures().join("glue")
}

// ---------------------------------------------------------------------------------------------
// the case table
// ---------------------------------------------------------------------------------------------

/// What a setup closure sees.
struct Env {
    /// The case's fresh temporary directory (also the command's working directory).
    t: PathBuf,
    /// A run directory written by one successful `propetl train` (for the classes that need
    /// one; copy it into `t` before editing).
    run: Option<PathBuf>,
}

impl Env {
    fn p(&self, rel: &str) -> PathBuf {
        self.t.join(rel)
    }

    /// A copy of the shared run directory at `t/<rel>`.
    fn copy_run(&self, rel: &str) -> PathBuf {
        let src = self.run.as_ref().expect("this class has no shared run");
        let dst = self.p(rel);
        copy_dir(src, &dst);
        dst
    }
}

type Setup = Box<dyn Fn(&Env)>;

struct Case {
    name: String,
    setup: Setup,
    /// Arguments; `{T}` is replaced by the temporary directory, `{G}` by the GLUE fixtures,
    /// `{F}` by `tests/fixtures`.
    args: Vec<String>,
    /// Substrings stderr must contain.
    expect: Vec<String>,
    /// Expected exit code.
    code: i32,
}

fn case(name: &str, args: Vec<String>, expect: &[&str]) -> Case {
    Case {
        name: name.to_string(),
        setup: Box::new(|_| {}),
        args,
        expect: expect.iter().map(|s| s.to_string()).collect(),
        code: 1,
    }
}

impl Case {
    fn setup(mut self, f: impl Fn(&Env) + 'static) -> Self {
        self.setup = Box::new(f);
        self
    }

    /// A usage error found by clap (exit code 2).
    fn usage(mut self) -> Self {
        self.code = 2;
        self
    }
}

fn args(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

fn has_flag(xs: &[&str], flag: &str) -> bool {
    xs.iter()
        .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
}

/// `propetl train …`: adds `--out {T}/out` (unless `--out` or `--resume` is given) and, for
/// flag-only runs, `--epochs 1 --batch-size 8` unless given; `--quiet` unless resuming.
/// With `--config`, epochs and batch size come from the TOML (see [`run_toml`]).
fn train(extra: &[&str]) -> Vec<String> {
    let mut v = vec!["train"];
    v.extend_from_slice(extra);
    let resume = has_flag(extra, "--resume");
    if !resume && !has_flag(extra, "--out") {
        v.extend(["--out", "{T}/out"]);
    }
    if !resume && !has_flag(extra, "--config") {
        if !has_flag(extra, "--epochs") {
            v.extend(["--epochs", "1"]);
        }
        if !has_flag(extra, "--batch-size") {
            v.extend(["--batch-size", "8"]);
        }
    }
    if !resume && !has_flag(extra, "--quiet") {
        v.push("--quiet");
    }
    args(&v)
}

/// `propetl train --task sst2 --data-dir {G} …`
fn train_sst2(extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--task", "sst2", "--data-dir", "{G}"];
    v.extend_from_slice(extra);
    train(&v)
}

/// `propetl train --config {T}/run.toml`
fn train_cfg() -> Vec<String> {
    train(&["--config", "{T}/run.toml"])
}

// ---------------------------------------------------------------------------------------------
// file helpers for setups
// ---------------------------------------------------------------------------------------------

fn write(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let e = entry.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A TOML basic string holding `path`.
fn toml_path(path: &Path) -> String {
    let s = path.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether a TOML fragment sets `key` (a line `key = …`).
fn sets(fragment: &str, key: &str) -> bool {
    fragment.lines().any(|l| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

/// Write `t/run.toml`: `top` (top-level keys; `task = "sst2"`, `variant = "pro_adapter"` and
/// `data_dir` = the GLUE fixtures unless set), a `[train]` table with `train` plus `epochs = 1`,
/// `batch_size = 8`, `progress = false` unless set, then `rest` (further tables).
fn run_toml(t: &Path, top: &str, train: &str, rest: &str) {
    let mut s = String::new();
    if !sets(top, "task") {
        s += "task = \"sst2\"\n";
    }
    if !sets(top, "variant") {
        s += "variant = \"pro_adapter\"\n";
    }
    if !sets(top, "data_dir") {
        s += &format!("data_dir = {}\n", toml_path(&glue()));
    }
    s += top;
    s += "\n[train]\n";
    for (key, default) in [
        ("epochs", "epochs = 1"),
        ("batch_size", "batch_size = 8"),
        ("progress", "progress = false"),
    ] {
        if !sets(train, key) {
            s += default;
            s.push('\n');
        }
    }
    s += train;
    s += "\n";
    s += rest;
    s += "\n";
    write(&t.join("run.toml"), s);
}

/// A case `propetl train --config {T}/run.toml` with the TOML of [`run_toml`].
fn toml_case(
    name: &str,
    top: &'static str,
    train: &'static str,
    rest: &'static str,
    expect: &[&str],
) -> Case {
    case(name, train_cfg(), expect).setup(move |e| run_toml(&e.t, top, train, rest))
}

/// A copy of `tests/fixtures/tiny-roberta` at `t/model` whose config.json has `edits` merged in
/// (a JSON object; `null` values remove the key).
fn tiny_model(t: &Path, edits: &str) -> PathBuf {
    let dst = t.join("model");
    copy_dir(&fixtures().join("tiny-roberta"), &dst);
    let path = dst.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let edits: Value = serde_json::from_str(edits).unwrap();
    for (k, v) in edits.as_object().unwrap() {
        if v.is_null() {
            cfg.as_object_mut().unwrap().remove(k);
        } else {
            cfg[k] = v.clone();
        }
    }
    write(&path, serde_json::to_string_pretty(&cfg).unwrap());
    dst
}

/// A case training on `t/model` = the tiny RoBERTa with `edits` in its config.json.
fn model_case(name: &str, edits: &'static str, expect: &[&str]) -> Case {
    case(name, train_sst2(&["--model-dir", "{T}/model"]), expect).setup(move |e| {
        tiny_model(&e.t, edits);
    })
}

/// A copy of the GLUE fixture folder `task` (e.g. `SST-2`) at `t/glue/<task>`.
fn glue_copy(t: &Path, task: &str) -> PathBuf {
    let dst = t.join("glue").join(task);
    copy_dir(&glue().join(task), &dst);
    dst
}

/// Replace line `n` (1-based) of a text file.
fn edit_line(path: &Path, n: usize, f: impl Fn(&str) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[n - 1] = f(&lines[n - 1]);
    write(path, lines.join("\n") + "\n");
}

/// `line` with its last tab-separated field replaced.
fn with_last_field(line: &str, value: &str) -> String {
    let (head, _) = line.rsplit_once('\t').unwrap();
    format!("{head}\t{value}")
}

/// `line` with its first tab-separated field replaced.
fn with_first_field(line: &str, value: &str) -> String {
    let (_, tail) = line.split_once('\t').unwrap();
    format!("{value}\t{tail}")
}

/// Ten JSONL rows `{"text": "...", "label": 0|1}`.
fn jsonl_rows() -> Vec<String> {
    (0..10)
        .map(|i| {
            format!(
                "{{\"text\": \"a {} film number {i}\", \"label\": {}}}",
                if i % 2 == 0 { "dull" } else { "fine" },
                i % 2
            )
        })
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    write(path, lines.join("\n") + "\n");
}

/// Custom data: `t/data/train.<ext>` and `t/data/dev.<ext>` from the given rows, and
/// `t/run.toml` with `task = "custom"` and a `[custom]` section (`text`, `label` columns) plus
/// `extra` lines in that section.
fn custom(t: &Path, ext: &str, train: &[String], dev: &[String], extra: &str) {
    let tr = t.join(format!("data/train.{ext}"));
    let dv = t.join(format!("data/dev.{ext}"));
    write_lines(&tr, train);
    write_lines(&dv, dev);
    let section = format!(
        "[custom]\ntrain = {}\ndev = {}\ntext_column = \"text\"\nlabel_column = \"label\"\n{extra}",
        toml_path(&tr),
        toml_path(&dv)
    );
    run_toml(t, "task = \"custom\"", "", &section);
}

/// A CSV header and ten rows; only the first row (line 2) is quoted, so a quote opened on a
/// later line never closes.
fn csv_rows() -> Vec<String> {
    let mut v = vec!["text,label".to_string(), "\"a film, quoted\",0".to_string()];
    v.extend((1..10).map(|i| format!("a film number {i},{}", i % 2)));
    v
}

/// Byte offset (in the file) where tensor `name`'s data starts, and the header's length.
fn safetensors_offsets(bytes: &[u8], name: &str) -> (usize, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("no tensor `{name}` in the header"));
    (8 + n + start as usize, n)
}

/// Position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// running and checking
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
}

/// Every path under `dir` (relative) and its content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let e = entry.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            let ty = e.file_type().unwrap();
            if ty.is_symlink() {
                out.insert(rel, Entry::Link(std::fs::read_link(&path).unwrap()));
            } else if ty.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(base, &path, out);
            } else {
                out.insert(rel, Entry::File(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What changed between two snapshots, one line per path.
fn diff(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in before {
        match after.get(p) {
            None => out.push(format!("removed: {}", p.display())),
            Some(a) if a != e => out.push(format!("changed: {}", p.display())),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        out.push(format!("new: {}", p.display()));
    }
    out
}

struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

fn exec(args: &[String], cwd: &Path, logs: &Path) -> Outcome {
    let out_path = logs.join("stdout");
    let err_path = logs.join("stderr");
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("starting propetl");
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > CASE_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal = None;
    Outcome {
        code: status.code(),
        signal,
        stdout: String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap()).into_owned(),
        timed_out,
    }
}

/// Run one case; the problems found (empty: it passed) and its stderr.
fn check(case: &Case, run: Option<&Path>) -> (Vec<String>, String, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("t");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    let env = Env {
        t: t.clone(),
        run: run.map(Path::to_path_buf),
    };
    (case.setup)(&env);
    let subst = |s: &str| {
        s.replace("{T}", &t.display().to_string())
            .replace("{G}", &glue().display().to_string())
            .replace("{F}", &fixtures().display().to_string())
    };
    let argv: Vec<String> = case.args.iter().map(|a| subst(a)).collect();
    let before = snapshot(&t);
    let out = exec(&argv, &t, &logs);
    let after = snapshot(&t);
    let mut problems = Vec::new();
    if out.timed_out {
        problems.push(format!("still running after {CASE_TIMEOUT:?}: killed"));
    }
    match (out.code, out.signal) {
        (Some(c), _) if c == case.code => {}
        (Some(0), _) => problems.push("exit code 0: the command succeeded".into()),
        (Some(101), _) => problems.push("exit code 101: a panic".into()),
        (Some(c), _) => problems.push(format!("exit code {c}, expected {}", case.code)),
        (None, Some(s)) => problems.push(format!("killed by signal {s}")),
        (None, None) => problems.push("no exit code".into()),
    }
    for want in &case.expect {
        if !out.stderr.contains(want.as_str()) {
            problems.push(format!("stderr lacks {want:?}"));
        }
    }
    for bad in ["panicked", "RUST_BACKTRACE"] {
        if out.stderr.contains(bad) || out.stdout.contains(bad) {
            problems.push(format!("output mentions {bad:?}"));
        }
    }
    let changes = diff(&before, &after);
    if !changes.is_empty() {
        problems.push(format!(
            "the temporary directory changed: {}",
            changes.join(", ")
        ));
    }
    (problems, out.stderr, argv)
}

/// Run every case; fail with a summary of every failing case.
fn run_all(class: &str, cases: Vec<Case>, run: Option<&Path>) {
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(
            names.insert(c.name.clone()),
            "duplicate case name {}",
            c.name
        );
    }
    let start = Instant::now();
    let mut failures = Vec::new();
    for c in &cases {
        let (problems, stderr, argv) = check(c, run);
        if problems.is_empty() {
            println!("ok   {class}/{}", c.name);
        } else {
            println!("FAIL {class}/{}", c.name);
            failures.push(format!(
                "--- {class}/{}\n    args: {}\n    problems:\n{}\n    stderr:\n{}",
                c.name,
                argv.join(" "),
                problems
                    .iter()
                    .map(|p| format!("      - {p}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                stderr
                    .lines()
                    .filter(|l| !l.contains("INFO"))
                    .map(|l| format!("      | {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
    println!(
        "{class}: {} cases, {} passed, {} failed ({:.1}s)",
        cases.len(),
        cases.len() - failures.len(),
        failures.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{class}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A run directory from one successful `propetl train` of the tiny model on SST-2.
fn shared_run(dir: &Path) -> PathBuf {
    let out = dir.join("run");
    let o = Command::new(BIN)
        .args([
            "train",
            "--task",
            "sst2",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--quiet",
        ])
        .arg("--data-dir")
        .arg(glue())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the shared run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for f in [
        "config.toml",
        "best.safetensors",
        "checkpoint.safetensors",
        "report.json",
    ] {
        assert!(out.join(f).is_file(), "the shared run has no {f}");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. run directories
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_run_directories_are_refused_and_left_untouched() {
    let shared = tempfile::tempdir().unwrap();
    let run = shared_run(shared.path());
    let cases = vec![
        case(
            "out_is_a_nonempty_directory",
            train_sst2(&["--out", "{T}/old"]),
            &["old", "not empty", "--overwrite", "--resume"],
        )
        .setup(|e| write(&e.p("old/notes.txt"), "keep me\n")),
        case(
            "out_is_an_existing_run",
            train_sst2(&["--out", "{T}/run"]),
            &["not empty", "--overwrite", "--resume"],
        )
        .setup(|e| {
            e.copy_run("run");
        }),
        case(
            "overwrite_with_a_bad_lr_keeps_the_old_run",
            train_sst2(&["--out", "{T}/run", "--overwrite", "--lr", "0"]),
            &["train.lr", "> 0"],
        )
        .setup(|e| {
            e.copy_run("run");
        }),
        case(
            "out_is_a_regular_file",
            train_sst2(&["--out", "{T}/file"]),
            &["file", "not a directory"],
        )
        .setup(|e| write(&e.p("file"), "not a run\n")),
        case(
            "resume_without_a_checkpoint",
            train(&["--resume", "{T}/run"]),
            &["checkpoint.safetensors", "nothing to resume"],
        )
        .setup(|e| {
            let d = e.copy_run("run");
            std::fs::remove_file(d.join("checkpoint.safetensors")).unwrap();
        }),
        case(
            "resume_of_a_dir_that_is_not_a_run",
            train(&["--resume", "{T}/notes"]),
            &["notes", "not a resumable run directory", "config.toml"],
        )
        .setup(|e| write(&e.p("notes/a.txt"), "hello\n")),
        case(
            "resume_of_a_missing_dir",
            train(&["--resume", "{T}/nowhere"]),
            &["nowhere", "not a resumable run directory"],
        ),
        case(
            "resume_of_a_run_whose_config_has_lr_0",
            train(&["--resume", "{T}/run"]),
            &["train.lr", "> 0"],
        )
        .setup(|e| {
            let d = e.copy_run("run");
            let cfg = std::fs::read_to_string(d.join("config.toml")).unwrap();
            let edited: Vec<String> = cfg
                .lines()
                .map(|l| {
                    if l.starts_with("lr = ") {
                        "lr = 0.0".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            assert_ne!(
                edited.join("\n"),
                cfg.trim_end(),
                "config.toml has no `lr = `"
            );
            write(&d.join("config.toml"), edited.join("\n") + "\n");
        }),
        case(
            "resume_with_task",
            args(&["train", "--resume", "{T}/run", "--task", "sst2"]),
            &["--resume", "--task", "cannot be used with"],
        )
        .usage()
        .setup(|e| {
            e.copy_run("run");
        }),
        case(
            "resume_with_config",
            args(&["train", "--resume", "{T}/run", "--config", "{T}/run.toml"]),
            &["--resume", "--config", "cannot be used with"],
        )
        .usage()
        .setup(|e| {
            e.copy_run("run");
            run_toml(&e.t, "", "", "");
        }),
        case(
            "resume_of_a_run_locked_by_a_live_pid",
            train(&["--resume", "{T}/run"]),
            &["in use by another propetl process", "pid 1"],
        )
        .setup(|e| {
            let d = e.copy_run("run");
            write(&d.join(".lock"), "1\n");
        }),
        case(
            "overwrite_of_a_run_locked_by_a_live_pid",
            train_sst2(&["--out", "{T}/run", "--overwrite"]),
            &["in use by another propetl process", "pid 1"],
        )
        .setup(|e| {
            let d = e.copy_run("run");
            write(&d.join(".lock"), "1\n");
        }),
    ];
    run_all("run-dir", cases, Some(&run));
}

// ---------------------------------------------------------------------------------------------
// 2. hyper-parameters, from flags and from a TOML
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_hyper_parameters_name_the_key_and_range() {
    let mut cases = vec![
        // flags
        case("flag_lr_negative", train_sst2(&["--lr=-1"]), &["train.lr", "> 0", "-1"]),
        case("flag_lr_zero", train_sst2(&["--lr", "0"]), &["train.lr", "> 0"]),
        case("flag_lr_nan", train_sst2(&["--lr", "nan"]), &["train.lr", "NaN"]),
        case("flag_lr_inf", train_sst2(&["--lr", "inf"]), &["train.lr", "inf"]),
        case(
            "flag_mask_lr_zero",
            train_sst2(&["--mask-lr", "0"]),
            &["train.mask_lr", "> 0"],
        ),
        case(
            "flag_batch_size_zero",
            train_sst2(&["--batch-size", "0"]),
            &["train.batch_size", "at least 1"],
        ),
        case(
            "flag_max_len_zero",
            train_sst2(&["--max-len", "0"]),
            &["train.max_len", "at least"],
        ),
        case(
            "flag_max_len_one",
            train_sst2(&["--max-len", "1"]),
            &["train.max_len", "at least 2"],
        ),
        case(
            "flag_epochs_zero",
            train_sst2(&["--epochs", "0"]),
            &["train.epochs", "at least 1"],
        ),
        case(
            "flag_max_train_examples_zero",
            train_sst2(&["--max-train-examples", "0"]),
            &["max_train_examples", "at least 1"],
        ),
        case(
            "flag_checkpoint_every_steps_zero",
            train_sst2(&["--checkpoint-every-steps", "0"]),
            &["checkpoint_every_steps", "at least 1"],
        ),
        case("flag_keep_zero", train_sst2(&["--keep", "0"]), &["keep", "(0, 1]"]),
        case("flag_keep_1_5", train_sst2(&["--keep", "1.5"]), &["keep", "(0, 1]", "1.5"]),
        case("flag_keep_nan", train_sst2(&["--keep", "nan"]), &["keep", "(0, 1]", "NaN"]),
        case(
            "flag_keep_on_unshared_adapter",
            train_sst2(&["--variant", "adapter", "--keep", "0.5"]),
            &["keep", "adapter", "no masks"],
        ),
        case(
            "flag_unknown_variant",
            train_sst2(&["--variant", "pro_adaptor"]),
            &["unknown variant `pro_adaptor`", "pro_adapter"],
        )
        .usage(),
        case(
            "flag_unknown_task",
            train(&["--task", "sst3", "--data-dir", "{G}"]),
            &["unknown task `sst3`", "sst2"],
        )
        .usage(),
        case(
            "flag_unknown_device",
            train_sst2(&["--device", "tpu"]),
            &["unknown device `tpu`", "cuda:N"],
        )
        .usage(),
        case(
            "flag_device_with_bad_ordinal",
            train_sst2(&["--device", "cuda:x"]),
            &["cuda:x", "ordinal"],
        )
        .usage(),
        // TOML
        toml_case("toml_lr_negative", "", "lr = -1.0", "", &["train.lr", "> 0"]),
        toml_case("toml_lr_nan", "", "lr = nan", "", &["train.lr", "NaN"]),
        toml_case("toml_mask_lr_zero", "", "mask_lr = 0.0", "", &["train.mask_lr", "> 0"]),
        toml_case(
            "toml_max_grad_norm_zero",
            "",
            "max_grad_norm = 0.0",
            "",
            &["train.max_grad_norm", "> 0"],
        ),
        toml_case(
            "toml_max_grad_norm_inf",
            "",
            "max_grad_norm = inf",
            "",
            &["train.max_grad_norm", "inf"],
        ),
        toml_case(
            "toml_warmup_ratio_1_5",
            "",
            "warmup_ratio = 1.5",
            "",
            &["train.warmup_ratio", "[0, 1]", "1.5"],
        ),
        toml_case(
            "toml_warmup_ratio_negative",
            "",
            "warmup_ratio = -0.1",
            "",
            &["train.warmup_ratio", "[0, 1]", "-0.1"],
        ),
        toml_case(
            "toml_weight_decay_negative",
            "",
            "weight_decay = -1.0",
            "",
            &["train.weight_decay", ">= 0"],
        ),
        toml_case(
            "toml_mask_weight_decay_nan",
            "",
            "mask_weight_decay = nan",
            "",
            &["train.mask_weight_decay", ">= 0"],
        ),
        toml_case(
            "toml_batch_size_zero",
            "",
            "batch_size = 0",
            "",
            &["train.batch_size", "at least 1"],
        ),
        toml_case("toml_max_len_one", "", "max_len = 1", "", &["train.max_len", "at least 2"]),
        toml_case("toml_epochs_zero", "", "epochs = 0", "", &["train.epochs", "at least 1"]),
        toml_case(
            "toml_max_train_examples_zero",
            "max_train_examples = 0",
            "",
            "",
            &["max_train_examples", "at least 1"],
        ),
        toml_case(
            "toml_max_eval_examples_zero",
            "max_eval_examples = 0",
            "",
            "",
            &["max_eval_examples", "at least 1"],
        ),
        toml_case(
            "toml_checkpoint_every_steps_zero",
            "",
            "checkpoint_every_steps = 0",
            "",
            &["train.checkpoint_every_steps", "at least 1"],
        ),
        toml_case("toml_keep_zero", "", "", "[petl]\nkeep = 0.0", &["keep", "(0, 1]"]),
        toml_case("toml_keep_nan", "", "", "[petl]\nkeep = nan", &["keep", "(0, 1]"]),
        toml_case(
            "toml_keep_on_unshared_lora",
            "variant = \"lora\"",
            "",
            "[petl]\nkeep = 0.3",
            &["keep", "lora", "no masks"],
        ),
        toml_case(
            "toml_lora_rank_on_pro_adapter",
            "",
            "",
            "[petl]\nr = 4",
            &["`r`", "adapter", "reduction"],
        ),
        toml_case(
            "toml_reduction_zero",
            "",
            "",
            "[petl]\nreduction = 0",
            &["reduction", "at least 1"],
        ),
        toml_case(
            "toml_reduction_and_bottleneck",
            "",
            "",
            "[petl]\nreduction = 4\nbottleneck = 8",
            &["reduction", "bottleneck", "not both"],
        ),
        toml_case(
            "toml_unknown_variant",
            "variant = \"pro_adaptor\"",
            "",
            "",
            &["run.toml", "unknown variant `pro_adaptor`", "pro_adapter"],
        ),
        toml_case(
            "toml_unknown_task",
            "task = \"sst3\"",
            "",
            "",
            &["run.toml", "unknown task `sst3`", "sst2"],
        ),
        toml_case(
            "toml_unknown_device",
            "device = \"tpu\"",
            "",
            "",
            &["run.toml", "unknown device `tpu`"],
        ),
        toml_case(
            "toml_unknown_top_level_key",
            "bogus_key = 1",
            "",
            "",
            &["run.toml", "unknown field `bogus_key`"],
        ),
        toml_case(
            "toml_unknown_train_key",
            "",
            "learning_rate = 0.1",
            "",
            &["run.toml", "unknown field `learning_rate`"],
        ),
        toml_case(
            "toml_unknown_petl_key",
            "",
            "",
            "[petl]\nrank = 4",
            &["run.toml", "unknown field `rank`"],
        ),
        toml_case(
            "toml_epochs_is_a_string",
            "",
            "epochs = \"ten\"",
            "",
            &["run.toml", "epochs", "invalid type"],
        ),
        toml_case(
            "toml_split_bogus",
            "split = \"bogus\"",
            "",
            "",
            &["run.toml", "bogus", "reference", "plain"],
        ),
        toml_case(
            "toml_syntax_error",
            "",
            "lr = ",
            "",
            &["run.toml", "line"],
        ),
        toml_case(
            "toml_custom_section_with_a_glue_task",
            "",
            "",
            "[custom]\ntrain = \"a.jsonl\"\ndev = \"b.jsonl\"\ntext_column = \"t\"\nlabel_column = \"l\"",
            &["[custom]", "task = \"custom\"", "sst2"],
        ),
        toml_case(
            "toml_custom_task_without_section",
            "task = \"custom\"",
            "",
            "",
            &["task = \"custom\"", "[custom]"],
        ),
        case(
            "toml_file_missing",
            train(&["--config", "{T}/missing.toml"]),
            &["missing.toml"],
        ),
    ];
    if !cfg!(feature = "cuda") {
        cases.push(case(
            "flag_device_cuda_on_a_cpu_build",
            train_sst2(&["--device", "cuda"]),
            &["`cuda` cargo feature", "--features cuda"],
        ));
        cases.push(toml_case(
            "toml_device_cuda_on_a_cpu_build",
            "device = \"cuda:1\"",
            "",
            "",
            &["`cuda` cargo feature"],
        ));
    }
    if !cfg!(feature = "metal") {
        cases.push(case(
            "flag_device_metal_on_a_cpu_build",
            train_sst2(&["--device", "metal"]),
            &["`metal` cargo feature"],
        ));
    }
    run_all("hyper", cases, None);
}

// ---------------------------------------------------------------------------------------------
// 3. config.json of --model-dir
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_model_configs_name_the_key() {
    let cases = vec![
        model_case(
            "hidden_dropout_prob_1_5",
            r#"{"hidden_dropout_prob": 1.5}"#,
            &["hidden_dropout_prob", "1.5"],
        ),
        model_case(
            "attention_probs_dropout_prob_negative",
            r#"{"attention_probs_dropout_prob": -0.1}"#,
            &["attention_probs_dropout_prob", "-0.1"],
        ),
        model_case(
            "pad_token_id_not_below_vocab_size",
            r#"{"pad_token_id": 1000}"#,
            &["pad_token_id", "vocab_size"],
        ),
        model_case("vocab_size_zero", r#"{"vocab_size": 0}"#, &["vocab_size"]),
        model_case(
            "hidden_size_not_a_multiple_of_heads",
            r#"{"hidden_size": 65}"#,
            &["hidden_size", "num_attention_heads"],
        ),
        model_case(
            "unknown_hidden_act",
            r#"{"hidden_act": "swishy"}"#,
            &["hidden_act", "swishy"],
        ),
        model_case(
            "model_type_unknown",
            r#"{"model_type": "gpt2"}"#,
            &["model_type", "gpt2"],
        ),
        // `t5` routes to the T5 loader, which names what a T5 config.json lacks
        model_case(
            "model_type_t5_with_roberta_keys",
            r#"{"model_type": "t5"}"#,
            &["config.json", "d_model"],
        ),
        model_case(
            "layer_norm_eps_negative",
            r#"{"layer_norm_eps": -1e-5}"#,
            &["layer_norm_eps"],
        ),
        model_case(
            "num_hidden_layers_zero",
            r#"{"num_hidden_layers": 0}"#,
            &["num_hidden_layers"],
        ),
        case(
            "malformed_config_json",
            train_sst2(&["--model-dir", "{T}/model"]),
            &["config.json"],
        )
        .setup(|e| {
            let d = tiny_model(&e.t, "{}");
            write(&d.join("config.json"), "{\"hidden_size\": 64,\n");
        }),
        case(
            "missing_model_safetensors",
            train_sst2(&["--model-dir", "{T}/model"]),
            &["model.safetensors"],
        )
        .setup(|e| {
            let d = tiny_model(&e.t, "{}");
            std::fs::remove_file(d.join("model.safetensors")).unwrap();
        }),
        case(
            "missing_tokenizer_json",
            train_sst2(&["--model-dir", "{T}/model"]),
            &["tokenizer.json"],
        )
        .setup(|e| {
            let d = tiny_model(&e.t, "{}");
            std::fs::remove_file(d.join("tokenizer.json")).unwrap();
        }),
        case(
            "missing_model_dir",
            train_sst2(&["--model-dir", "{T}/nowhere"]),
            &["nowhere", "config.json"],
        ),
    ];
    run_all("model-config", cases, None);
}

// ---------------------------------------------------------------------------------------------
// 4. data
// ---------------------------------------------------------------------------------------------

fn glue_case(name: &str, task: &str, expect: &[&str]) -> Case {
    case(
        name,
        train(&["--task", task, "--data-dir", "{T}/glue"]),
        expect,
    )
}

#[test]
fn bad_data_names_the_file_and_line() {
    let cases = vec![
        case(
            "missing_data_dir",
            train(&["--task", "sst2", "--data-dir", "{T}/nowhere"]),
            &["nowhere"],
        ),
        case(
            "no_data_dir_for_a_glue_task",
            train(&["--task", "sst2"]),
            &["--data-dir"],
        ),
        glue_case("missing_train_tsv", "sst2", &["SST-2", "train.tsv"]).setup(|e| {
            let d = glue_copy(&e.t, "SST-2");
            std::fs::remove_file(d.join("train.tsv")).unwrap();
        }),
        glue_case("missing_mnli_dev_matched", "mnli", &["dev_matched.tsv"]).setup(|e| {
            let d = glue_copy(&e.t, "MNLI");
            std::fs::remove_file(d.join("dev_matched.tsv")).unwrap();
        }),
        glue_case("bad_label_row", "sst2", &["train.tsv:5", "bad label `foo`"]).setup(|e| {
            let d = glue_copy(&e.t, "SST-2");
            edit_line(&d.join("train.tsv"), 5, |l| with_last_field(l, "foo"));
        }),
        glue_case(
            "bad_mrpc_quality",
            "mrpc",
            &["train.tsv:3", "bad label `x`"],
        )
        .setup(|e| {
            let d = glue_copy(&e.t, "MRPC");
            edit_line(&d.join("train.tsv"), 3, |l| with_first_field(l, "x"));
        }),
        glue_case("stsb_score_not_a_number", "stsb", &["train.tsv:4", "score"]).setup(|e| {
            let d = glue_copy(&e.t, "STS-B");
            edit_line(&d.join("train.tsv"), 4, |l| with_last_field(l, "high"));
        }),
        glue_case("empty_text_field", "sst2", &["train.tsv:4", "empty text"]).setup(|e| {
            let d = glue_copy(&e.t, "SST-2");
            edit_line(&d.join("train.tsv"), 4, |l| with_first_field(l, ""));
        }),
        glue_case(
            "glue_dev_label_outside_classes",
            "sst2",
            &["dev.tsv:3", "7"],
        )
        .setup(|e| {
            let d = glue_copy(&e.t, "SST-2");
            edit_line(&d.join("dev.tsv"), 3, |l| with_last_field(l, "7"));
        }),
        glue_case("glue_empty_dev", "sst2", &["split is empty", "dev.tsv"]).setup(|e| {
            let d = glue_copy(&e.t, "SST-2");
            let text = std::fs::read_to_string(d.join("dev.tsv")).unwrap();
            write(
                &d.join("dev.tsv"),
                format!("{}\n", text.lines().next().unwrap()),
            );
        }),
        case(
            "every_row_skipped",
            train(&[
                "--task",
                "sst2",
                "--data-dir",
                "{T}/glue",
                "--skip-bad-rows",
            ]),
            &["train split is empty", "malformed rows were skipped"],
        )
        .setup(|e| {
            let d = glue_copy(&e.t, "SST-2");
            let p = d.join("train.tsv");
            let n = std::fs::read_to_string(&p).unwrap().lines().count();
            for i in 2..=n {
                edit_line(&p, i, |l| with_last_field(l, "foo"));
            }
        }),
        // custom JSONL / CSV
        case(
            "custom_label_1e30",
            train_cfg(),
            &["train.jsonl:11", "MAX_CLASSES"],
        )
        .setup(|e| {
            let mut tr = jsonl_rows();
            tr.push("{\"text\": \"huge\", \"label\": 1e30}".into());
            custom(&e.t, "jsonl", &tr, &jsonl_rows(), "");
        }),
        case(
            "custom_text_is_a_number",
            train_cfg(),
            &["train.jsonl:3", "`text`", "a number"],
        )
        .setup(|e| {
            let mut tr = jsonl_rows();
            tr[2] = "{\"text\": 5, \"label\": 1}".into();
            custom(&e.t, "jsonl", &tr, &jsonl_rows(), "");
        }),
        case(
            "custom_text_is_null",
            train_cfg(),
            &["dev.jsonl:4", "`text`", "null"],
        )
        .setup(|e| {
            let mut dv = jsonl_rows();
            dv[3] = "{\"text\": null, \"label\": 1}".into();
            custom(&e.t, "jsonl", &jsonl_rows(), &dv, "");
        }),
        case(
            "custom_empty_text",
            train_cfg(),
            &["train.jsonl:2", "empty text"],
        )
        .setup(|e| {
            let mut tr = jsonl_rows();
            tr[1] = "{\"text\": \"\", \"label\": 1}".into();
            custom(&e.t, "jsonl", &tr, &jsonl_rows(), "");
        }),
        case(
            "custom_invalid_json_line",
            train_cfg(),
            &["train.jsonl:6", "invalid JSON"],
        )
        .setup(|e| {
            let mut tr = jsonl_rows();
            tr[5] = "{\"text\": \"cut\", \"label\": ".into();
            custom(&e.t, "jsonl", &tr, &jsonl_rows(), "");
        }),
        case(
            "custom_empty_dev",
            train_cfg(),
            &["eval split is empty", "dev.jsonl"],
        )
        .setup(|e| custom(&e.t, "jsonl", &jsonl_rows(), &[], "")),
        case(
            "custom_dev_label_outside_train_classes",
            train_cfg(),
            &["dev.jsonl:2", "outside the 2 classes"],
        )
        .setup(|e| {
            let mut dv = jsonl_rows();
            dv[1] = "{\"text\": \"a third kind\", \"label\": 5}".into();
            custom(&e.t, "jsonl", &jsonl_rows(), &dv, "");
        }),
        case(
            "custom_regression_target_nan",
            train_cfg(),
            &["train.jsonl:2", "nan"],
        )
        .setup(|e| {
            let mut tr = jsonl_rows();
            tr[1] = "{\"text\": \"x\", \"label\": \"nan\"}".into();
            custom(&e.t, "jsonl", &tr, &jsonl_rows(), "regression = true");
        }),
        case(
            "custom_labels_with_regression",
            train_cfg(),
            &["labels", "regression"],
        )
        .setup(|e| {
            custom(
                &e.t,
                "jsonl",
                &jsonl_rows(),
                &jsonl_rows(),
                "labels = [\"neg\", \"pos\"]\nregression = true",
            )
        }),
        case(
            "custom_unknown_extension",
            train_cfg(),
            &["train.txt", ".csv", ".jsonl"],
        )
        .setup(|e| custom(&e.t, "txt", &jsonl_rows(), &jsonl_rows(), "")),
        case("custom_missing_train_file", train_cfg(), &["train.jsonl"]).setup(|e| {
            custom(&e.t, "jsonl", &jsonl_rows(), &jsonl_rows(), "");
            std::fs::remove_file(e.p("data/train.jsonl")).unwrap();
        }),
        case(
            "csv_unterminated_quote",
            train_cfg(),
            &["train.csv:4", "unterminated quote"],
        )
        .setup(|e| {
            let mut tr = csv_rows();
            tr[3] = "\"an open quote, never closed,1".into();
            custom(&e.t, "csv", &tr, &csv_rows(), "");
        }),
        case(
            "csv_missing_label_column",
            train_cfg(),
            &["train.csv:1", "label"],
        )
        .setup(|e| {
            let mut tr = csv_rows();
            tr[0] = "text,class".into();
            custom(&e.t, "csv", &tr, &csv_rows(), "");
        }),
    ];
    run_all("data", cases, None);
}

// ---------------------------------------------------------------------------------------------
// 5. saved states: propetl eval of a (mutated) run directory
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_saved_states_are_refused_and_left_untouched() {
    let shared = tempfile::tempdir().unwrap();
    let run = shared_run(shared.path());
    let eval = || args(&["eval", "{T}/run"]);
    let cases = vec![
        case(
            "truncated_best_safetensors",
            eval(),
            &["best.safetensors", "truncated"],
        )
        .setup(|e| {
            let d = e.copy_run("run");
            let p = d.join("best.safetensors");
            let bytes = std::fs::read(&p).unwrap();
            write(&p, &bytes[..bytes.len() / 2]);
        }),
        case(
            "best_safetensors_cut_inside_the_header",
            eval(),
            &["best.safetensors"],
        )
        .setup(|e| {
            let d = e.copy_run("run");
            let p = d.join("best.safetensors");
            let bytes = std::fs::read(&p).unwrap();
            write(&p, &bytes[..100]);
        }),
        case(
            "flipped_bit_in_mask_data",
            eval(),
            &["best.safetensors", "checksum", "mask.1.up"],
        )
        .setup(|e| {
            let d = e.copy_run("run");
            let p = d.join("best.safetensors");
            let mut bytes = std::fs::read(&p).unwrap();
            let (at, _) = safetensors_offsets(&bytes, "mask.1.up");
            bytes[at] ^= 0x01;
            write(&p, bytes);
        }),
        case(
            "flipped_byte_in_head_weights",
            eval(),
            &["best.safetensors", "checksum", "head.dense.weight"],
        )
        .setup(|e| {
            let d = e.copy_run("run");
            let p = d.join("best.safetensors");
            let mut bytes = std::fs::read(&p).unwrap();
            let (at, _) = safetensors_offsets(&bytes, "head.dense.weight");
            bytes[at + 100] ^= 0x40;
            write(&p, bytes);
        }),
        case(
            "flipped_byte_in_the_manifest",
            eval(),
            &["best.safetensors", "checksum", "propetl.manifest"],
        )
        .setup(|e| {
            let d = e.copy_run("run");
            let p = d.join("best.safetensors");
            let mut bytes = std::fs::read(&p).unwrap();
            let (_, header_len) = safetensors_offsets(&bytes, "mask.0.up");
            // keep 0.5 -> 0.6 inside the (escaped) JSON manifest: still valid JSON
            let at = find(&bytes, b"keep\\\":0.5").expect("the manifest has no keep 0.5");
            assert!(at < 8 + header_len);
            bytes[at + 9] = b'6';
            write(&p, bytes);
        }),
        case("missing_best_safetensors", eval(), &["best.safetensors"]).setup(|e| {
            let d = e.copy_run("run");
            std::fs::remove_file(d.join("best.safetensors")).unwrap();
        }),
        case("missing_config_toml", eval(), &["config.toml"]).setup(|e| {
            let d = e.copy_run("run");
            std::fs::remove_file(d.join("config.toml")).unwrap();
        }),
        case("garbage_config_toml", eval(), &["config.toml", "line 1"]).setup(|e| {
            let d = e.copy_run("run");
            write(&d.join("config.toml"), "garbage = [\n");
        }),
        case(
            "split_bogus",
            args(&["eval", "{T}/run", "--split", "bogus"]),
            &["unknown split `bogus`", "test", "eval"],
        )
        .setup(|e| {
            e.copy_run("run");
        }),
        case(
            "eval_of_a_dir_that_is_not_a_run",
            args(&["eval", "{T}/notes"]),
            &["notes", "config.toml"],
        )
        .setup(|e| write(&e.p("notes/a.txt"), "hello\n")),
        case(
            "eval_of_a_missing_dir",
            args(&["eval", "{T}/nowhere"]),
            &["nowhere"],
        ),
    ];
    run_all("saved-state", cases, Some(&run));
}

// ---------------------------------------------------------------------------------------------
// 6. report, storage, parity, demo
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_inputs_of_report_storage_parity_and_demo() {
    let absurd = |e: &Env, edits: &str| {
        tiny_model(&e.t, edits);
    };
    let mut cases = vec![
        case(
            "report_of_a_dir_without_report_json",
            args(&["report", "{T}/notes", "--out", "{T}/plot.png"]),
            &["report.json", "notes"],
        )
        .setup(|e| write(&e.p("notes/a.txt"), "hello\n")),
        case(
            "report_json_is_garbage",
            args(&["report", "{T}/run"]),
            &["report.json", "not a run report"],
        )
        .setup(|e| write(&e.p("run/report.json"), "garbage{\n")),
        case(
            "report_json_is_an_empty_object",
            args(&["report", "{T}/run", "--out", "{T}/plot.png"]),
            &["report.json"],
        )
        .setup(|e| write(&e.p("run/report.json"), "{}\n")),
        case(
            "storage_absurd_shapes",
            args(&["storage", "--model-dir", "{T}/model"]),
            &["4294967296"],
        )
        .setup(move |e| {
            absurd(
                e,
                r#"{"hidden_size": 4294967296, "num_hidden_layers": 4294967296}"#,
            )
        }),
        case(
            "storage_absurd_hidden_size",
            args(&["storage", "--model-dir", "{T}/model"]),
            &["hidden_size", "4294967296"],
        )
        .setup(move |e| absurd(e, r#"{"hidden_size": 4294967296}"#)),
        case(
            "storage_absurd_num_hidden_layers",
            args(&["storage", "--model-dir", "{T}/model"]),
            &["num_hidden_layers", "4294967296"],
        )
        .setup(move |e| absurd(e, r#"{"num_hidden_layers": 4294967296}"#)),
        case(
            "storage_model_dir_without_config",
            args(&["storage", "--model-dir", "{T}/nowhere"]),
            &["nowhere", "config.json"],
        ),
        case(
            "storage_keep_zero",
            args(&["storage", "--keep", "0"]),
            &["keep", "(0, 1]"],
        ),
        case(
            "storage_keep_on_unshared_adapter",
            args(&["storage", "--variant", "adapter", "--keep", "0.5"]),
            &["keep", "no masks"],
        ),
        case(
            "parity_of_a_missing_dir",
            args(&["parity", "{T}/nowhere"]),
            &["nowhere", "settings.json"],
        ),
        case(
            "parity_of_a_dir_without_settings",
            args(&["parity", "{T}/fx"]),
            &["fx", "settings.json"],
        )
        .setup(|e| write(&e.p("fx/notes.txt"), "hello\n")),
        case(
            "parity_settings_json_is_garbage",
            args(&["parity", "{T}/fx"]),
            &["settings.json", "JSON"],
        )
        .setup(|e| write(&e.p("fx/settings.json"), "{\n")),
        case(
            "parity_fixture_without_its_checkpoint_weights",
            args(&["parity", "{T}/fx"]),
            &["fx", "model.safetensors"],
        )
        .setup(|e| {
            copy_dir(&fixtures().join("roberta-pro_adapter-s0"), &e.p("fx"));
            std::fs::remove_file(e.p("fx/ckpt/model.safetensors")).unwrap();
        }),
        case(
            "parity_fixture_with_truncated_grads",
            args(&["parity", "{T}/fx"]),
            &["fx", "grads.safetensors"],
        )
        .setup(|e| {
            copy_dir(&fixtures().join("roberta-pro_adapter-s0"), &e.p("fx"));
            let p = e.p("fx/grads.safetensors");
            let bytes = std::fs::read(&p).unwrap();
            write(&p, &bytes[..100]);
        }),
        case(
            "demo_epochs_zero",
            args(&["demo", "--epochs", "0"]),
            &["train.epochs", "at least 1"],
        ),
        case(
            "demo_lr_zero",
            args(&["demo", "--lr", "0"]),
            &["train.lr", "> 0"],
        ),
        case(
            "demo_mask_lr_nan",
            args(&["demo", "--mask-lr", "nan"]),
            &["train.mask_lr", "NaN"],
        ),
    ];
    if !cfg!(feature = "cuda") {
        cases.push(case(
            "demo_device_cuda_on_a_cpu_build",
            args(&["demo", "--device", "cuda"]),
            &["`cuda` cargo feature"],
        ));
        cases.push(case(
            "parity_device_cuda_on_a_cpu_build",
            args(&["parity", "{F}/roberta-pro_adapter-s0", "--device", "cuda"]),
            &["`cuda` cargo feature"],
        ));
    }
    run_all("other-commands", cases, None);
}

// ---------------------------------------------------------------------------------------------
// controls: the unedited inputs the cases start from are accepted, so a refusal above comes
// from the one edit of its case
// ---------------------------------------------------------------------------------------------

#[test]
fn the_unedited_inputs_are_accepted() {
    type Control = (&'static str, Box<dyn Fn(&Env)>, Vec<String>);
    let controls: Vec<Control> = vec![
        (
            "toml",
            Box::new(|e| run_toml(&e.t, "", "", "")),
            train_cfg(),
        ),
        (
            "tiny_model_copy",
            Box::new(|e| {
                tiny_model(&e.t, "{}");
            }),
            train_sst2(&["--model-dir", "{T}/model"]),
        ),
        (
            "glue_copy",
            Box::new(|e| {
                glue_copy(&e.t, "SST-2");
            }),
            train(&["--task", "sst2", "--data-dir", "{T}/glue"]),
        ),
        (
            "custom_jsonl",
            Box::new(|e| custom(&e.t, "jsonl", &jsonl_rows(), &jsonl_rows(), "")),
            train_cfg(),
        ),
        (
            "custom_csv",
            Box::new(|e| custom(&e.t, "csv", &csv_rows(), &csv_rows(), "")),
            train_cfg(),
        ),
        (
            "storage_of_the_tiny_model",
            Box::new(|e| {
                tiny_model(&e.t, "{}");
            }),
            args(&["storage", "--model-dir", "{T}/model"]),
        ),
    ];
    let mut failures = Vec::new();
    for (name, setup, argv) in controls {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().join("t");
        std::fs::create_dir_all(&t).unwrap();
        setup(&Env {
            t: t.clone(),
            run: None,
        });
        let argv: Vec<String> = argv
            .iter()
            .map(|a| {
                a.replace("{T}", &t.display().to_string())
                    .replace("{G}", &glue().display().to_string())
            })
            .collect();
        let out = exec(&argv, &t, tmp.path());
        if out.code != Some(0) {
            failures.push(format!("{name}: exit {:?}\n{}", out.code, out.stderr));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
