//! `propetl::export`: LoRA / ProLoRA runs as PEFT adapter folders and as merged Hugging Face
//! checkpoints. Keys, shapes and config fields as PEFT and transformers write them; the
//! merged checkpoint reloads in propetl with the run's logits; the logits PEFT and
//! transformers computed on exports of the committed runs (`tests/fixtures/peft-export/runs/`;
//! `tests/fixtures/peft-export/expected_logits.json`, both written by
//! `scripts/make-peft-export-fixture.py`) are reproduced by `propetl predict` (1e-4);
//! adapter / prefix runs and unsafe output folders are refused before anything is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use propetl::export::{export, ExportFormat, ExportOptions, MergedClassifier};
use propetl::models::roberta::{self, Checkpoint};
use propetl::predict::{PredictInput, Predictor, TaskInfo};
use propetl::run::{run_with, RunConfig, RunOptions, Task, BEST_FILE};
use propetl::runtime::{Example, ForwardMode, PetlRng, Variant};
use propetl::train::Silent;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_roberta() -> PathBuf {
    root().join("tests/fixtures/tiny-roberta")
}

fn fixture_dir() -> PathBuf {
    root().join("tests/fixtures/peft-export")
}

/// The run configuration of a fixture run (`pro_lora` or `lora`) on the tiny RoBERTa.
fn fixture_config(variant: &str) -> RunConfig {
    let mut cfg = RunConfig::from_toml_file(&fixture_dir().join(format!("{variant}.toml")))
        .expect("fixture run config");
    cfg.model_dir = Some(tiny_roberta());
    cfg.data_dir = Some(root().join("tests/fixtures/glue"));
    cfg
}

/// A quick run of `variant` on the built-in tiny model.
fn builtin_config(variant: Variant) -> RunConfig {
    let mut c = RunConfig::new("sst2".parse::<Task>().unwrap(), variant);
    c.data_dir = Some(root().join("tests/fixtures/glue"));
    c.train.epochs = 1;
    c.train.batch_size = 16;
    c.train.lr = 3e-3;
    c.train.progress = false;
    c
}

fn train(cfg: &RunConfig, out: &Path) {
    run_with(cfg, out, RunOptions::default(), &mut Silent).expect("training run");
}

/// The two fixture runs (`tests/fixtures/peft-export/runs/`, trained by
/// `scripts/make-peft-export-fixture.py` with `pro_lora.toml` / `lora.toml`: the runs the
/// committed PEFT logits came from), copied once into a temporary folder for every test of
/// this file.
struct Runs {
    _dir: tempfile::TempDir,
    pro_lora: PathBuf,
    lora: PathBuf,
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let copy = |variant: &str| -> PathBuf {
            let to = dir.path().join(variant);
            std::fs::create_dir_all(&to).unwrap();
            for entry in std::fs::read_dir(fixture_dir().join("runs").join(variant)).unwrap() {
                let from = entry.unwrap().path();
                std::fs::copy(&from, to.join(from.file_name().unwrap())).unwrap();
            }
            to
        };
        let (pro_lora, lora) = (copy("pro_lora"), copy("lora"));
        Runs {
            _dir: dir,
            pro_lora,
            lora,
        }
    })
}

fn inputs(texts: &[&str]) -> Vec<PredictInput> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| PredictInput {
            id: i.to_string(),
            text: t.to_string(),
            text_pair: None,
        })
        .collect()
}

const TEXTS: [&str; 4] = [
    "a warm and lovely film",
    "the plot is awful and the story is cold",
    "superb",
    "it was quite bad , very poor and sad",
];

/// The logits of a run's best state (what `propetl predict` computes its probabilities from).
fn run_logits(run: &Path, texts: &[&str]) -> Vec<Vec<f32>> {
    let cfg = RunConfig::from_toml_file(&run.join("config.toml")).unwrap();
    let info: TaskInfo =
        serde_json::from_str(&std::fs::read_to_string(run.join("task.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open(cfg.model_dir.as_ref().unwrap(), &Device::Cpu).unwrap();
    let mut model = roberta::build(
        cfg.variant,
        &ckpt,
        info.kind,
        &cfg.petl,
        &VarMap::new(),
        &mut PetlRng::seed(cfg.train.seed),
    )
    .unwrap();
    model.restore(&run.join(BEST_FILE)).unwrap();
    let tok = ckpt.tokenizer().unwrap();
    let examples: Vec<Example> = texts
        .iter()
        .map(|t| Example::new(tok.encode(t).unwrap(), 0.0))
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = model.collate(&refs, cfg.train.max_len, "default").unwrap();
    model
        .logits(&batch, &mut ForwardMode::Eval)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn load_safetensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

/// Every entry name of a folder (hidden ones included).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn peft_export_has_peft_keys_shapes_and_config() {
    let dir = tempfile::tempdir().unwrap();
    for (run, r, alpha, masked) in [
        (&runs().pro_lora, 8, 64.0, true),
        (&runs().lora, 32, 256.0, false),
    ] {
        let out = dir.path().join(format!("peft-{r}"));
        let s = export(run, ExportFormat::Peft, &out, &ExportOptions::default()).unwrap();
        assert_eq!(
            (s.layers, s.r, s.alpha, s.tensors),
            (3, r, alpha, 3 * 2 * 2 + 4)
        );
        assert_eq!(s.target_modules, ["query", "value"]);
        assert_eq!(
            names(&out),
            ["adapter_config.json", "adapter_model.safetensors"]
        );
        let c = json(&out.join("adapter_config.json"));
        assert_eq!(c["peft_type"], "LORA");
        assert_eq!(c["task_type"], "SEQ_CLS");
        assert_eq!(c["r"], r);
        assert_eq!(c["lora_alpha"], alpha as i64);
        assert_eq!(c["target_modules"], serde_json::json!(["query", "value"]));
        assert_eq!(c["modules_to_save"], serde_json::json!(["classifier"]));
        assert_eq!(c["fan_in_fan_out"], false);
        assert_eq!(c["bias"], "none");
        assert_eq!(c["lora_dropout"], 0.0);
        assert_eq!(c["inference_mode"], true);
        assert_eq!(c["use_rslora"], false);
        assert_eq!(
            c["base_model_name_or_path"],
            tiny_roberta().canonicalize().unwrap().to_str().unwrap()
        );

        let t = load_safetensors(&out.join("adapter_model.safetensors"));
        let mut keys: Vec<&str> = t.keys().map(String::as_str).collect();
        keys.sort();
        let mut expected = vec![
            "base_model.model.classifier.dense.bias".to_string(),
            "base_model.model.classifier.dense.weight".into(),
            "base_model.model.classifier.out_proj.bias".into(),
            "base_model.model.classifier.out_proj.weight".into(),
        ];
        for l in 0..3 {
            for m in ["query", "value"] {
                for f in ["lora_A", "lora_B"] {
                    expected.push(format!(
                        "base_model.model.roberta.encoder.layer.{l}.attention.self.{m}.{f}.weight"
                    ));
                }
            }
        }
        expected.sort();
        assert_eq!(keys, expected);
        let p = "base_model.model.roberta.encoder.layer";
        for l in 0..3 {
            for m in ["query", "value"] {
                assert_eq!(
                    t[&format!("{p}.{l}.attention.self.{m}.lora_A.weight")].dims(),
                    [r, 64]
                );
                assert_eq!(
                    t[&format!("{p}.{l}.attention.self.{m}.lora_B.weight")].dims(),
                    [64, r]
                );
            }
        }
        assert_eq!(
            t["base_model.model.classifier.dense.weight"].dims(),
            [64, 64]
        );
        assert_eq!(
            t["base_model.model.classifier.out_proj.weight"].dims(),
            [2, 64]
        );
        // the factors trained: B moved away from its zero init
        let b0 = vec2(&t[&format!("{p}.0.attention.self.query.lora_B.weight")]);
        assert!(b0.iter().flatten().any(|x| x.abs() > 1e-3));

        // ProLoRA: every layer is the ONE prototype under its own mask (keep 0.5 of r·64);
        // unshared LoRA: dense, independent factors
        for m in ["query", "value"] {
            let a: Vec<Vec<f32>> = (0..3)
                .map(|l| vec2(&t[&format!("{p}.{l}.attention.self.{m}.lora_A.weight")]).concat())
                .collect();
            let zeros = |v: &Vec<f32>| v.iter().filter(|x| **x == 0.0).count();
            if masked {
                for v in &a {
                    assert_eq!(zeros(v), v.len() / 2, "{m}: keep 0.5 of the entries");
                }
                // where two layers both keep an entry it is the same prototype value
                for (x, y) in a[0].iter().zip(&a[1]) {
                    if *x != 0.0 && *y != 0.0 {
                        assert_eq!(x, y);
                    }
                }
                assert_ne!(a[0], a[1], "{m}: per-layer masks differ");
            } else {
                assert!(a.iter().all(|v| zeros(v) == 0));
                assert_ne!(a[0], a[1]);
            }
        }
    }
}

#[test]
fn merged_export_reloads_in_propetl_with_the_runs_logits() {
    let dir = tempfile::tempdir().unwrap();
    for (variant, run) in [("pro_lora", &runs().pro_lora), ("lora", &runs().lora)] {
        let out = dir.path().join(format!("merged-{variant}"));
        let s = export(run, ExportFormat::Merged, &out, &ExportOptions::default()).unwrap();
        assert_eq!(s.format, ExportFormat::Merged);
        assert_eq!(
            names(&out),
            [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );
        assert_eq!(
            std::fs::read(out.join("tokenizer.json")).unwrap(),
            std::fs::read(tiny_roberta().join("tokenizer.json")).unwrap()
        );
        let c = json(&out.join("config.json"));
        assert_eq!(
            c["architectures"],
            serde_json::json!(["RobertaForSequenceClassification"])
        );
        assert_eq!(
            c["id2label"],
            serde_json::json!({"0": "negative", "1": "positive"})
        );
        assert_eq!(
            c["label2id"],
            serde_json::json!({"negative": 0, "positive": 1})
        );
        assert_eq!(c["problem_type"], "single_label_classification");
        assert_eq!(c["model_type"], "roberta");
        assert_eq!(c["hidden_size"], 64);

        // keys: the backbone under roberta., the head under classifier., no LoRA left
        let t = load_safetensors(&out.join("model.safetensors"));
        let base = load_safetensors(&tiny_roberta().join("model.safetensors"));
        assert!(t
            .keys()
            .all(|k| k.starts_with("roberta.") || k.starts_with("classifier.")));
        assert!(!t.keys().any(|k| k.contains("lora")));
        for k in [
            "classifier.dense.weight",
            "classifier.dense.bias",
            "classifier.out_proj.weight",
            "classifier.out_proj.bias",
        ] {
            assert!(t.contains_key(k), "{k}");
        }
        assert_eq!(t["classifier.out_proj.weight"].dims(), [2, 64]);
        // q and v of every layer changed, everything else is the base checkpoint's
        for (k, v) in &t {
            if k.starts_with("classifier.") {
                continue;
            }
            let b = &base[k];
            assert_eq!(v.dims(), b.dims(), "{k}");
            let diff = (v - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let folded = k.ends_with("attention.self.query.weight")
                || k.ends_with("attention.self.value.weight");
            if folded {
                assert!(diff > 1e-4, "{k}: LoRA not folded in ({diff})");
            } else {
                assert_eq!(diff, 0.0, "{k}");
            }
        }

        // propetl opens it as a base checkpoint, and predicts the run's logits with the
        // plain backbone
        Checkpoint::open(&out, &Device::Cpu).unwrap();
        let merged = MergedClassifier::load(&out, &Device::Cpu).unwrap();
        assert_eq!(merged.labels(), ["negative", "positive"]);
        let got = merged.logits(&inputs(&TEXTS), 3).unwrap();
        let want = run_logits(run, &TEXTS);
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{variant}: merged vs run logits differ by {d}");
    }
}

/// `expected_logits.json`: what PEFT (adapter folder on the base checkpoint) and
/// transformers (merged folder) computed on exports of the fixture runs.
#[test]
fn propetl_predict_matches_peft_and_transformers_on_the_committed_logits() {
    let fx = json(&fixture_dir().join("expected_logits.json"));
    let texts: Vec<String> = fx["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    // the same token ids as the tokenizer the fixture script used
    let tok = Checkpoint::open(tiny_roberta(), &Device::Cpu)
        .unwrap()
        .tokenizer()
        .unwrap();
    for (t, ids) in texts.iter().zip(fx["input_ids"].as_array().unwrap()) {
        let want: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        assert_eq!(tok.encode(t).unwrap(), want, "{t}");
    }
    let logits = |v: &Value| -> Vec<Vec<f32>> { serde_json::from_value(v.clone()).unwrap() };
    let dir = tempfile::tempdir().unwrap();
    for (variant, run) in [("pro_lora", &runs().pro_lora), ("lora", &runs().lora)] {
        let want_peft = logits(&fx["runs"][variant]["peft_logits"]);
        let want_merged = logits(&fx["runs"][variant]["merged_logits"]);
        assert_eq!(want_peft.len(), texts.len());
        // the exported LoRA matters: without it (base + trained head) the logits move by
        // far more than the tolerance
        let without = logits(&fx["runs"][variant]["without_lora_logits"]);
        let effect = max_abs_diff(&want_peft, &without);
        assert!(
            effect > 2e-3,
            "{variant}: the LoRA update moves logits by only {effect}"
        );
        // the committed run the fixture logits came from
        let got = run_logits(run, &texts);
        let d = max_abs_diff(&got, &want_peft);
        eprintln!(
            "{variant}: |propetl - PEFT| {d:.2e}, |propetl - transformers merged| {:.2e}, LoRA effect {effect:.2e}",
            max_abs_diff(&got, &want_merged)
        );
        assert!(d < 1e-4, "{variant}: propetl vs PEFT logits differ by {d}");
        let d = max_abs_diff(&got, &want_merged);
        assert!(
            d < 1e-4,
            "{variant}: propetl vs transformers (merged) logits differ by {d}"
        );
        // `propetl predict`'s probabilities are the softmax of those logits
        let predictor = Predictor::load(run, None).unwrap();
        let out = predictor.predict_texts(&texts, 2).unwrap();
        for (o, l) in out.iter().zip(&want_peft) {
            let z: f32 = l.iter().map(|x| (x - l[0]).exp()).sum();
            let p = o.probabilities.as_ref().unwrap();
            for (name, x) in ["negative", "positive"].iter().zip(l) {
                let want = (x - l[0]).exp() / z;
                assert!((p[*name] - want).abs() < 1e-4, "{variant} {name}");
            }
        }
        // and the merged export of it, loaded by propetl
        let out = dir.path().join(variant);
        export(run, ExportFormat::Merged, &out, &ExportOptions::default()).unwrap();
        let merged = MergedClassifier::load(&out, &Device::Cpu).unwrap();
        let d = max_abs_diff(&merged.logits(&inputs(&texts), 8).unwrap(), &want_merged);
        assert!(d < 1e-4, "{variant}: merged propetl vs transformers: {d}");
    }
}

/// The same configuration and seed give the same run, bit for bit: exports are identical.
#[test]
fn training_is_bit_deterministic_so_exports_are_too() {
    let dir = tempfile::tempdir().unwrap();
    let (once, again) = (dir.path().join("once"), dir.path().join("again"));
    train(&fixture_config("pro_lora"), &once);
    train(&fixture_config("pro_lora"), &again);
    for (i, run) in [&once, &again].into_iter().enumerate() {
        let out = dir.path().join(format!("peft-{i}"));
        export(run, ExportFormat::Peft, &out, &ExportOptions::default()).unwrap();
    }
    let a = std::fs::read(dir.path().join("peft-0/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("peft-1/adapter_model.safetensors")).unwrap();
    assert!(a == b, "two runs of the same config differ");
}

#[test]
fn adapter_and_prefix_runs_are_refused_with_the_formats_that_work() {
    let dir = tempfile::tempdir().unwrap();
    for variant in [Variant::ProAdapter, Variant::ProPrefix] {
        let run = dir.path().join(variant.name());
        train(&builtin_config(variant), &run);
        for format in [ExportFormat::Peft, ExportFormat::Merged] {
            let out = dir.path().join(format!("out-{variant}-{format}"));
            let e = format!(
                "{:#}",
                export(&run, format, &out, &ExportOptions::default()).unwrap_err()
            );
            assert!(
                e.contains(&format!("`{variant}` run"))
                    && e.contains("`lora` and `pro_lora` runs only"),
                "{e}"
            );
            if format == ExportFormat::Merged {
                assert!(e.contains("cannot be folded"), "{e}");
            }
            assert!(!out.exists());
        }
    }
    // nothing but the runs themselves
    let mut left = names(dir.path());
    left.sort();
    assert_eq!(left, ["pro_adapter", "pro_prefix"]);
}

#[test]
fn output_folders_are_checked_first_and_replaced_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let run = &runs().pro_lora;
    let none = ExportOptions::default();
    let overwrite = ExportOptions {
        overwrite: true,
        ..Default::default()
    };
    // not a run directory: refused, nothing written
    let out = dir.path().join("out");
    let e = format!(
        "{:#}",
        export(&dir.path().join("nope"), ExportFormat::Peft, &out, &none).unwrap_err()
    );
    assert!(e.contains("does not exist"), "{e}");
    let empty = dir.path().join("empty-run");
    std::fs::create_dir(&empty).unwrap();
    let e = format!(
        "{:#}",
        export(&empty, ExportFormat::Merged, &out, &none).unwrap_err()
    );
    assert!(e.contains("run directory"), "{e}");
    assert!(!out.exists());

    // a non-empty folder is refused without --overwrite and left untouched
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let e = export(run, ExportFormat::Peft, &out, &none)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty") && e.contains("--overwrite"), "{e}");
    assert_eq!(names(&out), ["keep.txt"]);
    // an empty folder is fine; --overwrite replaces a full one as a whole
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    export(run, ExportFormat::Peft, &fresh, &none).unwrap();
    export(run, ExportFormat::Merged, &out, &overwrite).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").exists());
    export(run, ExportFormat::Peft, &out, &overwrite).unwrap();
    assert_eq!(
        names(&out),
        ["adapter_config.json", "adapter_model.safetensors"]
    );
    // a file where the folder should be
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = export(run, ExportFormat::Peft, &file, &overwrite)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a folder"), "{e}");
    // never over the run itself or a folder holding it, even with --overwrite
    let e = export(run, ExportFormat::Peft, run, &overwrite)
        .unwrap_err()
        .to_string();
    assert!(e.contains("run directory"), "{e}");
    let e = export(run, ExportFormat::Peft, run.parent().unwrap(), &overwrite)
        .unwrap_err()
        .to_string();
    assert!(e.contains("run directory"), "{e}");
    assert!(run.join(BEST_FILE).exists());
    // no staging folders left behind
    assert_eq!(
        names(dir.path()),
        ["empty-run", "file", "fresh", "out"],
        "hidden staging folders left behind"
    );
}

#[test]
fn a_builtin_model_run_needs_a_base_model_for_peft_but_merges_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&builtin_config(Variant::Lora), &run);
    let out = dir.path().join("peft");
    let e = export(&run, ExportFormat::Peft, &out, &ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--base-model") && e.contains("--format merged"),
        "{e}"
    );
    assert!(!out.exists());
    let opts = ExportOptions {
        base_model: Some("FacebookAI/roberta-base".into()),
        ..Default::default()
    };
    export(&run, ExportFormat::Peft, &out, &opts).unwrap();
    let c = json(&out.join("adapter_config.json"));
    assert_eq!(c["base_model_name_or_path"], "FacebookAI/roberta-base");
    // the merged checkpoint carries the built-in model's config and tokenizer
    let merged = dir.path().join("merged");
    export(
        &run,
        ExportFormat::Merged,
        &merged,
        &ExportOptions::default(),
    )
    .unwrap();
    assert_eq!(
        names(&merged),
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    let m = MergedClassifier::load(&merged, &Device::Cpu).unwrap();
    let texts = ["a warm film", "cold and bad"];
    let got = m.logits(&inputs(&texts), 2).unwrap();
    let predictor = Predictor::load(&run, None).unwrap();
    for (o, l) in predictor.predict_texts(&texts, 2).unwrap().iter().zip(&got) {
        let z: f32 = l.iter().map(|x| (x - l[0]).exp()).sum();
        let p = o.probabilities.as_ref().unwrap();
        assert!((p["positive"] - (l[1] - l[0]).exp() / z).abs() < 1e-4);
    }
}

#[test]
fn a_regression_run_merges_into_a_regression_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("stsb");
    let mut cfg = builtin_config(Variant::ProLora);
    cfg.task = "stsb".parse::<Task>().unwrap();
    train(&cfg, &run);
    let out = dir.path().join("merged");
    export(&run, ExportFormat::Merged, &out, &ExportOptions::default()).unwrap();
    let c = json(&out.join("config.json"));
    assert_eq!(c["problem_type"], "regression");
    assert_eq!(c["id2label"], serde_json::json!({"0": "LABEL_0"}));
    let pairs = [
        ("a man is playing", "a man plays"),
        ("the cat sat", "a dog ran"),
    ];
    let inputs: Vec<PredictInput> = pairs
        .iter()
        .enumerate()
        .map(|(i, (a, b))| PredictInput {
            id: i.to_string(),
            text: a.to_string(),
            text_pair: Some(b.to_string()),
        })
        .collect();
    let got = MergedClassifier::load(&out, &Device::Cpu)
        .unwrap()
        .logits(&inputs, 2)
        .unwrap();
    let want = Predictor::load(&run, None)
        .unwrap()
        .predict(&inputs, 2, &mut |_| {})
        .unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.len(), 1);
        assert!((g[0] - w.score.unwrap()).abs() < 1e-4, "{g:?} vs {w:?}");
    }
}

/// Rewrite the `model_dir` line of a run's `config.toml` to `to`.
fn point_model_dir(run: &Path, to: &Path) {
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let line = format!("model_dir = {:?}", to.to_str().unwrap());
    let mut found = false;
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("model_dir = ") {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no model_dir in {}", run.display());
    std::fs::write(run.join("config.toml"), text.join("\n") + "\n").unwrap();
}

#[test]
fn a_run_whose_model_folder_is_gone_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("moved");
    std::fs::create_dir(&run).unwrap();
    for f in ["config.toml", "task.json", BEST_FILE] {
        std::fs::copy(runs().pro_lora.join(f), run.join(f)).unwrap();
    }
    let gone = dir.path().join("no/such/model");
    point_model_dir(&run, &gone);
    let out = dir.path().join("out");
    let e = format!(
        "{:#}",
        export(&run, ExportFormat::Merged, &out, &ExportOptions::default()).unwrap_err()
    );
    assert!(
        e.contains("model_dir") && e.contains(gone.to_str().unwrap()),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn a_t5_run_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("t5");
    std::fs::create_dir(&run).unwrap();
    for f in ["config.toml", "task.json", BEST_FILE] {
        std::fs::copy(runs().lora.join(f), run.join(f)).unwrap();
    }
    point_model_dir(&run, &root().join("tests/fixtures/tiny-t5"));
    for format in [ExportFormat::Peft, ExportFormat::Merged] {
        let out = dir.path().join(format.name());
        let e = export(&run, format, &out, &ExportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is a T5 run") && e.contains("cannot be exported yet"),
            "{e}"
        );
        assert!(!out.exists());
    }
}

/// A `full` run (every backbone weight trained) exports as a merged checkpoint holding its own
/// backbone: propetl opens it as a base checkpoint and predicts the run's logits; PEFT export
/// is refused with a pointer to `--format merged`.
#[test]
fn a_full_run_exports_its_fine_tuned_backbone_as_a_merged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = builtin_config(Variant::Full);
    cfg.model_dir = Some(tiny_roberta());
    cfg.train.lr = 1e-3;
    let run = dir.path().join("full-run");
    run_with(&cfg, &run, RunOptions::default(), &mut Silent).unwrap();
    let out = dir.path().join("merged-full");
    let s = export(&run, ExportFormat::Merged, &out, &ExportOptions::default()).unwrap();
    assert!(s.target_modules.is_empty() && s.r == 0);
    let t = load_safetensors(&out.join("model.safetensors"));
    let base = load_safetensors(&tiny_roberta().join("model.safetensors"));
    // every backbone tensor is there, and training moved the weights
    let backbone: Vec<&String> = t.keys().filter(|k| k.starts_with("roberta.")).collect();
    let ckpt = Checkpoint::open(tiny_roberta(), &Device::Cpu).unwrap();
    assert_eq!(backbone.len(), roberta::hf_tensors(&ckpt.config).len());
    let moved = backbone
        .iter()
        .filter(|k| {
            let d = (&t[**k] - &base[**k])
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            d > 0.0
        })
        .count();
    assert!(
        moved > backbone.len() / 2,
        "{moved} of {} moved",
        backbone.len()
    );
    let merged = MergedClassifier::load(&out, &Device::Cpu).unwrap();
    let got = merged.logits(&inputs(&TEXTS), 3).unwrap();
    let want = run_logits(&run, &TEXTS);
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "merged vs full run logits differ by {d}");
    let e = export(
        &run,
        ExportFormat::Peft,
        &dir.path().join("peft-full"),
        &ExportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--format merged"), "{e}");
}
