//! `propetl::import`: PEFT LoRA adapter folders as unshared `lora` run directories.
//!
//! - RoBERTa, round trip: the deterministic fixture runs of `tests/export.rs` (unshared LoRA
//!   and ProLoRA on the tiny RoBERTa) exported with `propetl::export` (PEFT) and imported
//!   back: the LoRA run's logits, predictions and test metrics are bit-equal to the
//!   original's; the ProLoRA run's export (masked prototype per layer) imported as unshared
//!   LoRA gives its logits within 1e-6.
//! - T5, tiny: a PEFT folder written here in PEFT's T5 layout (self-attention q/v of every
//!   encoder and decoder block, decoder cross-attention q/v) imported onto the tiny T5 gives
//!   the logits and generations of the plain backbone with every update folded into the
//!   weight PEFT applies it to.
//! - T5, the real folder (`assets/bias-detector-lora`, fetched by `scripts/fetch-assets.sh`):
//!   every one of its 288 tensors maps onto the LoRA pair of the layer/target PEFT applies it
//!   to on a t5-large-shaped model (plan from the variant itself, no backbone allocated), with
//!   t5-large's shapes, bit-equal values, through propetl's save format and back.
//! - Refusals, before anything is written: options that change the math, other PEFT types,
//!   target modules without a site, missing / extra tensors, shape mismatches.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use propetl::export::{export, ExportFormat, ExportOptions};
use propetl::import::{
    import_peft, map_tensors, overrides_of, peft_key, placement, read_peft, t5_lora_plan, Factor,
    Family, ImportOptions, LoraPlacement, Placement, IMPORT_FILE,
};
use propetl::models::roberta::{self, Checkpoint};
use propetl::models::t5::{GenerationConfig, T5Checkpoint, T5Config, T5Plain};
use propetl::predict::{Predictor, TaskInfo};
use propetl::run::{evaluate_run, run_with, RunConfig, RunOptions, Task, BEST_FILE};
use propetl::runtime::{Example, ForwardMode, LayerPetl, LoraTarget, PetlRng, PetlState, Variant};
use propetl::train::Silent;
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_roberta() -> PathBuf {
    root().join("tests/fixtures/tiny-roberta")
}

fn tiny_t5() -> PathBuf {
    root().join("tests/fixtures/tiny-t5")
}

fn glue() -> PathBuf {
    root().join("tests/fixtures/glue")
}

/// A fixture run configuration of `tests/fixtures/peft-export` on the tiny RoBERTa.
fn fixture_config(variant: &str) -> RunConfig {
    let mut cfg = RunConfig::from_toml_file(
        &root().join(format!("tests/fixtures/peft-export/{variant}.toml")),
    )
    .expect("fixture run config");
    cfg.model_dir = Some(tiny_roberta());
    cfg.data_dir = Some(glue());
    cfg
}

/// The two fixture runs and their PEFT exports, made once for every test of this file.
struct Runs {
    _dir: tempfile::TempDir,
    lora: PathBuf,
    pro_lora: PathBuf,
    lora_peft: PathBuf,
    pro_lora_peft: PathBuf,
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let (lora, pro_lora) = (p("lora"), p("pro_lora"));
        for (v, out) in [("lora", &lora), ("pro_lora", &pro_lora)] {
            run_with(&fixture_config(v), out, RunOptions::default(), &mut Silent)
                .expect("training run");
        }
        let (lora_peft, pro_lora_peft) = (p("lora-peft"), p("pro_lora-peft"));
        for (run, out) in [(&lora, &lora_peft), (&pro_lora, &pro_lora_peft)] {
            export(run, ExportFormat::Peft, out, &ExportOptions::default()).expect("export");
        }
        Runs {
            _dir: dir,
            lora,
            pro_lora,
            lora_peft,
            pro_lora_peft,
        }
    })
}

const TEXTS: [&str; 5] = [
    "a warm and lovely film",
    "the plot is awful and the story is cold",
    "superb",
    "it was quite bad , very poor and sad",
    "an ordinary film with a few good moments",
];

/// The logits of a run's best state, loaded as `propetl predict` loads it.
fn run_logits(run: &Path) -> Vec<Vec<f32>> {
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
    let examples: Vec<Example> = TEXTS
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

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sst2() -> ImportOptions {
    ImportOptions {
        task: Some("sst2".parse::<Task>().unwrap()),
        data_dir: Some(glue()),
        overwrite: false,
    }
}

#[test]
fn roberta_lora_round_trip_is_bit_exact() {
    let r = runs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported");
    let s = import_peft(&r.lora_peft, &tiny_roberta(), &out, &sst2()).unwrap();
    assert_eq!(s.family, Family::Roberta);
    assert_eq!((s.r, s.alpha, s.tensors), (32, 256.0, 3 * 2 * 2 + 4));
    assert_eq!(s.layers, ["0", "1", "2"]);
    assert_eq!(s.targets, ["q", "v"]);
    assert_eq!(s.task, "sst2");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["best.safetensors", "config.toml", IMPORT_FILE, "task.json"]
    );
    // nothing left beside it
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let cfg = RunConfig::from_toml_file(&out.join("config.toml")).unwrap();
    assert_eq!(cfg.variant, Variant::Lora);
    assert_eq!((cfg.petl.r, cfg.petl.alpha), (Some(32), Some(256.0)));
    assert_eq!(
        cfg.model_dir.as_deref(),
        Some(tiny_roberta().canonicalize().unwrap().as_path())
    );

    // the tensors are copied: logits bit-equal
    let original = run_logits(&r.lora);
    let imported = run_logits(&out);
    assert_eq!(original, imported);

    // predict: the same labels and probabilities, the same label names
    let a = Predictor::load(&r.lora, None).unwrap();
    let b = Predictor::load(&out, None).unwrap();
    assert_eq!(a.task(), b.task());
    assert_eq!(
        a.predict_texts(&TEXTS, 2).unwrap(),
        b.predict_texts(&TEXTS, 2).unwrap()
    );
    // eval on the run's data: the same metrics
    let (ma, mb) = (
        evaluate_run(&r.lora, "test").unwrap(),
        evaluate_run(&out, "test").unwrap(),
    );
    assert_eq!(
        serde_json::to_value(&ma).unwrap(),
        serde_json::to_value(&mb).unwrap()
    );
    let record = json_file(&out.join(IMPORT_FILE));
    assert_eq!(record["adapter_config"]["peft_type"], "LORA");
    assert_eq!(record["summary"]["r"], 32);
}

#[test]
fn pro_lora_export_imports_as_unshared_lora() {
    let r = runs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported");
    let s = import_peft(&r.pro_lora_peft, &tiny_roberta(), &out, &sst2()).unwrap();
    assert_eq!((s.r, s.alpha), (8, 64.0));
    let cfg = RunConfig::from_toml_file(&out.join("config.toml")).unwrap();
    assert_eq!(cfg.variant, Variant::Lora);
    let (original, imported) = (run_logits(&r.pro_lora), run_logits(&out));
    let diff = max_abs_diff(&original, &imported);
    println!("ProLoRA run vs its export imported as unshared LoRA: max |Δlogit| = {diff:e}");
    assert!(diff <= 1e-6, "{diff}");
    // and the LoRA update matters: the logits are not the plain backbone's
    let plain = tempfile::tempdir().unwrap();
    let zeroed = plain.path().join("zeroed");
    copy_dir(&r.pro_lora_peft, &zeroed);
    let mut t = load_tensors(&zeroed);
    for (k, v) in t.iter_mut() {
        if k.contains("lora_B") {
            *v = v.zeros_like().unwrap();
        }
    }
    save_tensors(&zeroed, &t);
    let out2 = plain.path().join("imported");
    import_peft(&zeroed, &tiny_roberta(), &out2, &sst2()).unwrap();
    assert!(max_abs_diff(&original, &run_logits(&out2)) > 1e-3);
}

#[test]
fn default_task_is_custom_with_the_heads_classes() {
    let r = runs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported");
    let s = import_peft(
        &r.lora_peft,
        &tiny_roberta(),
        &out,
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(s.task, "custom");
    let p = Predictor::load(&out, None).unwrap();
    assert_eq!(p.task().labels, ["0", "1"]);
    assert_eq!(p.predict_texts(&TEXTS, 8).unwrap().len(), TEXTS.len());
    // a task whose classes differ from the head's is refused
    let e = import_peft(
        &r.lora_peft,
        &tiny_roberta(),
        &dir.path().join("mnli"),
        &ImportOptions {
            task: Some("mnli".parse().unwrap()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("--task mnli"), "{e:#}");
    assert!(!dir.path().join("mnli").exists());
    // an existing run directory is replaced only with overwrite
    let e = import_peft(
        &r.lora_peft,
        &tiny_roberta(),
        &out,
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--overwrite"), "{e}");
    let again = ImportOptions {
        overwrite: true,
        ..sst2()
    };
    import_peft(&r.lora_peft, &tiny_roberta(), &out, &again).unwrap();
    assert_eq!(run_logits(&out), run_logits(&r.lora));
}

#[test]
fn peft_config_variants_that_do_not_change_the_math_import() {
    // newer PEFT saves modules_to_save ["classifier", "score"]; target_modules may be a regex
    // (the tensors decide); lora_dropout, init options and unknown keys change nothing
    let dir = tempfile::tempdir().unwrap();
    let peft = dir.path().join("peft");
    copy_dir(&runs().lora_peft, &peft);
    edit_config(&peft, |c| {
        c.insert("modules_to_save".into(), json!(["classifier", "score"]));
        c.insert("target_modules".into(), json!(".*\\.(query|value)"));
        c.insert("lora_dropout".into(), json!(0.1));
        c.insert("init_lora_weights".into(), json!("gaussian"));
        c.insert("loftq_config".into(), json!({}));
        c.insert("some_future_option".into(), json!(null));
    });
    let out = dir.path().join("run");
    import_peft(&peft, &tiny_roberta(), &out, &sst2()).unwrap();
    assert_eq!(run_logits(&out), run_logits(&runs().lora));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
}

fn save_tensors(dir: &Path, t: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(t, dir.join("adapter_model.safetensors")).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("adapter_config.json");
    let mut v = json_file(&p);
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Import a modified copy of the LoRA export; the error text (nothing may be written).
fn refused(
    cfg: impl FnOnce(&mut serde_json::Map<String, Value>),
    tensors: impl FnOnce(&mut HashMap<String, Tensor>),
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let peft = dir.path().join("peft");
    copy_dir(&runs().lora_peft, &peft);
    edit_config(&peft, cfg);
    let mut t = load_tensors(&peft);
    tensors(&mut t);
    save_tensors(&peft, &t);
    let out = dir.path().join("out");
    let e = import_peft(&peft, &tiny_roberta(), &out, &sst2()).unwrap_err();
    assert!(!out.exists(), "a refused import wrote {}", out.display());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "a refused import left files beside --out"
    );
    format!("{e:#}")
}

/// An edit of `adapter_config.json`.
type ConfigEdit = Box<dyn FnOnce(&mut serde_json::Map<String, Value>)>;

const Q0_A: &str = "base_model.model.roberta.encoder.layer.0.attention.self.query.lora_A.weight";

#[test]
fn refusals_name_the_problem_before_anything_is_written() {
    let none = |_: &mut HashMap<String, Tensor>| {};
    let cases: Vec<(&str, ConfigEdit)> = vec![
        (
            "peft_type is `IA3`",
            Box::new(|c| {
                c.insert("peft_type".into(), json!("IA3"));
            }),
        ),
        (
            "`fan_in_fan_out` is true",
            Box::new(|c| {
                c.insert("fan_in_fan_out".into(), json!(true));
            }),
        ),
        (
            "`use_dora` is true",
            Box::new(|c| {
                c.insert("use_dora".into(), json!(true));
            }),
        ),
        (
            "`use_rslora` is true",
            Box::new(|c| {
                c.insert("use_rslora".into(), json!(true));
            }),
        ),
        (
            "`rank_pattern`",
            Box::new(|c| {
                c.insert("rank_pattern".into(), json!({"query": 4}));
            }),
        ),
        (
            "`alpha_pattern`",
            Box::new(|c| {
                c.insert("alpha_pattern".into(), json!({"value": 4}));
            }),
        ),
        (
            "bias is `lora_only`",
            Box::new(|c| {
                c.insert("bias".into(), json!("lora_only"));
            }),
        ),
        (
            "target module `key` has no LoRA site",
            Box::new(|c| {
                c.insert("target_modules".into(), json!(["query", "key", "value"]));
            }),
        ),
        (
            "task_type is `CAUSAL_LM`",
            Box::new(|c| {
                c.insert("task_type".into(), json!("CAUSAL_LM"));
            }),
        ),
        (
            "modules_to_save names `pooler`",
            Box::new(|c| {
                c.insert("modules_to_save".into(), json!(["classifier", "pooler"]));
            }),
        ),
    ];
    for (expect, cfg) in cases {
        let e = refused(cfg, none);
        assert!(e.contains(expect), "expected `{expect}` in: {e}");
    }

    // a tensor with no site: LoRA on key
    let e = refused(
        |_| {},
        |t| {
            let a = t[Q0_A].clone();
            t.insert(Q0_A.replace("query", "key"), a);
        },
    );
    assert!(e.contains("attention.self.key.lora_A.weight"), "{e}");
    assert!(e.contains("has no site"), "{e}");
    // a tensor that is nothing propetl knows
    let e = refused(
        |_| {},
        |t| {
            t.insert(
                "base_model.model.roberta.pooler.dense.weight".into(),
                Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap(),
            );
        },
    );
    assert!(
        e.contains(
            "`base_model.model.roberta.pooler.dense.weight` is no tensor propetl has a place for"
        ),
        "{e}"
    );
    // a missing factor, named with its PEFT key
    let e = refused(
        |_| {},
        |t| {
            t.remove(&Q0_A.replace("layer.0", "layer.2").replace("query", "value"));
        },
    );
    assert!(e.contains("lacks 1 of the"), "{e}");
    assert!(
        e.contains("base_model.model.roberta.encoder.layer.2.attention.self.value.lora_A.weight"),
        "{e}"
    );
    // a missing head
    let e = refused(
        |_| {},
        |t| {
            t.remove("base_model.model.classifier.dense.bias");
        },
    );
    assert!(e.contains("base_model.model.classifier.dense.bias"), "{e}");
    // r of the config does not fit the tensors
    let e = refused(
        |c| {
            c.insert("r".into(), json!(16));
        },
        none,
    );
    assert!(e.contains("has shape [32, 64]"), "{e}");
    assert!(e.contains("needs [16, 64]"), "{e}");
    // a tensor narrower than the base checkpoint's width
    let e = refused(
        |_| {},
        |t| {
            let a = t[Q0_A].narrow(1, 0, 32).unwrap();
            t.insert(Q0_A.into(), a);
        },
    );
    assert!(e.contains("has shape [32, 32]"), "{e}");
    // an adapter for another family
    let dir = tempfile::tempdir().unwrap();
    let e = import_peft(
        &runs().lora_peft,
        &tiny_t5(),
        &dir.path().join("o"),
        &sst2(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("task_type is `SEQ_CLS`"), "{e:#}");
    assert!(!dir.path().join("o").exists());
}

// ---------------------------------------------------------------- T5

/// The tiny T5's config.
fn tiny_t5_config() -> T5Config {
    T5Config::from_json(&std::fs::read_to_string(tiny_t5().join("config.json")).unwrap()).unwrap()
}

/// Every LoRA placement PEFT's `target_modules = ["q", "v"]` creates on a T5 of `n_enc` +
/// `n_dec` blocks: self-attention of every block, cross-attention of every decoder block.
fn t5_placements(n_enc: usize, n_dec: usize) -> Vec<LoraPlacement> {
    let mut layers: Vec<String> = (0..n_enc).map(|l| format!("enc.{l}")).collect();
    layers.extend((0..n_dec).map(|l| format!("dec.{l}")));
    layers.extend((0..n_dec).map(|l| format!("cross.{l}")));
    let mut out = Vec::new();
    for layer in layers {
        for target in [LoraTarget::Q, LoraTarget::V] {
            for factor in [Factor::A, Factor::B] {
                out.push(LoraPlacement {
                    layer: layer.clone(),
                    target,
                    factor,
                });
            }
        }
    }
    out
}

/// The Hugging Face weight PEFT adds a placement's update to.
fn t5_weight(p: &LoraPlacement) -> String {
    let (kind, l) = p.layer.split_once('.').unwrap();
    let module = match kind {
        "enc" => format!("encoder.block.{l}.layer.0.SelfAttention"),
        "dec" => format!("decoder.block.{l}.layer.0.SelfAttention"),
        _ => format!("decoder.block.{l}.layer.1.EncDecAttention"),
    };
    format!("{module}.{}.weight", p.target)
}

fn t5_adapter_config(r: usize, alpha: f64) -> Value {
    json!({
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": "tiny-t5",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.1,
        "target_modules": ["v", "q"],
        "fan_in_fan_out": false,
        "bias": "none",
        "use_dora": false,
        "use_rslora": false,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true
    })
}

/// A PEFT folder for the tiny T5 in PEFT's layout with random factors (B nonzero).
fn write_t5_peft(dir: &Path, r: usize, alpha: f64) -> HashMap<String, Tensor> {
    let c = tiny_t5_config();
    let (d, inner) = (c.d_model, c.num_heads * c.d_kv);
    let mut rng = PetlRng::seed(11);
    let mut tensors = HashMap::new();
    for p in t5_placements(c.num_layers, c.decoder_layers()) {
        let shape = match p.factor {
            Factor::A => vec![r, d],
            Factor::B => vec![inner, r],
        };
        let t = rng.normal(shape.as_slice(), 0.1, &Device::Cpu).unwrap();
        tensors.insert(peft_key(Family::T5, &p), t);
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string_pretty(&t5_adapter_config(r, alpha)).unwrap(),
    )
    .unwrap();
    save_tensors(dir, &tensors);
    tensors
}

#[test]
fn t5_adapter_lands_where_peft_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let peft = dir.path().join("peft");
    let (r, alpha) = (4, 8.0);
    let tensors = write_t5_peft(&peft, r, alpha);
    let out = dir.path().join("run");
    let s = import_peft(
        &peft,
        &tiny_t5(),
        &out,
        &ImportOptions {
            task: Some("sst2".parse().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.family, Family::T5);
    assert_eq!(s.tensors, tensors.len());
    assert_eq!(s.tensors, (2 + 2 + 2) * 2 * 2);

    // reference: the plain backbone with every update folded into the weight PEFT wraps
    let c = tiny_t5_config();
    let mut weights =
        candle_core::safetensors::load(tiny_t5().join("model.safetensors"), &Device::Cpu).unwrap();
    let scale = alpha / r as f64;
    for p in t5_placements(c.num_layers, c.decoder_layers()) {
        if p.factor != Factor::A {
            continue;
        }
        let a = &tensors[&peft_key(Family::T5, &p)];
        let b_key = peft_key(
            Family::T5,
            &LoraPlacement {
                factor: Factor::B,
                ..p.clone()
            },
        );
        let w_name = t5_weight(&p);
        let w = weights[&w_name].to_dtype(DType::F32).unwrap();
        let delta = (tensors[&b_key].matmul(a).unwrap() * scale).unwrap();
        weights.insert(w_name, (w + delta).unwrap());
    }
    let merged = T5Plain::from_checkpoint(
        &T5Checkpoint::from_tensors(c.clone(), weights, &Device::Cpu).unwrap(),
    )
    .unwrap();

    let run = propetl::text_to_text::load_run(&out, None).unwrap();
    let tok = &run.tokenizer;
    let rows: Vec<Vec<u32>> = ["sst2 sentence: a warm film", "sst2 sentence: cold and dull"]
        .iter()
        .map(|t| tok.encode(t, 64).unwrap())
        .collect();
    let (ids, mask) = tok.batch(&rows, &Device::Cpu).unwrap();
    let dec = Tensor::new(&[[0u32, 5, 9, 3], [0, 7, 2, 4]], &Device::Cpu).unwrap();
    let ours = run
        .model
        .inner()
        .logits(&ids, &mask, &dec, "sst2")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let theirs = merged
        .logits(&ids, &mask, &dec)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let plain = T5Plain::from_checkpoint(&T5Checkpoint::open(tiny_t5(), &Device::Cpu).unwrap())
        .unwrap()
        .logits(&ids, &mask, &dec)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max)
    };
    let (d_merged, d_plain) = (diff(&ours, &theirs), diff(&ours, &plain));
    println!("imported T5 vs folded weights: max |Δlogit| = {d_merged:e} (vs plain: {d_plain:e})");
    assert!(d_merged < 1e-4, "{d_merged}");
    assert!(d_plain > 1e-2, "the update must matter: {d_plain}");

    // generation (what `propetl generate --run` does) equals the folded model's
    let g = GenerationConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    assert_eq!(
        run.model.inner().generate(&ids, &mask, "sst2", &g).unwrap(),
        merged.generate(&ids, &mask, &g).unwrap()
    );
    // predict loads it
    let p = Predictor::load(&out, None).unwrap();
    assert!(p.is_text_to_text());
    assert_eq!(p.predict_texts(&["a warm film"], 4).unwrap().len(), 1);

    // without --task: a `custom` run answering "0"/"1", the same LoRA, the same generations
    let custom = dir.path().join("custom");
    let s = import_peft(&peft, &tiny_t5(), &custom, &ImportOptions::default()).unwrap();
    assert_eq!(s.task, "custom");
    let c = propetl::text_to_text::load_run(&custom, None).unwrap();
    assert_eq!(
        c.model.inner().generate(&ids, &mask, "custom", &g).unwrap(),
        merged.generate(&ids, &mask, &g).unwrap()
    );
    let p = Predictor::load(&custom, None).unwrap();
    assert_eq!(p.task().labels, ["0", "1"]);
}

#[test]
fn t5_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let peft = dir.path().join("peft");
    write_t5_peft(&peft, 4, 8.0);
    let out = dir.path().join("run");
    let import = || import_peft(&peft, &tiny_t5(), &out, &ImportOptions::default());
    // a target without a site: LoRA on the FFN
    edit_config(&peft, |c| {
        c.insert("target_modules".into(), json!(["q", "v", "wi"]));
    });
    let e = format!("{:#}", import().unwrap_err());
    assert!(e.contains("target module `wi` has no LoRA site"), "{e}");
    edit_config(&peft, |c| {
        c.insert("target_modules".into(), json!(["q", "v"]));
        c.insert("modules_to_save".into(), json!(["lm_head"]));
    });
    let e = format!("{:#}", import().unwrap_err());
    assert!(e.contains("modules_to_save names `lm_head`"), "{e}");
    edit_config(&peft, |c| {
        c.insert("modules_to_save".into(), Value::Null);
    });
    // a LoRA tensor on k
    let mut t = load_tensors(&peft);
    let k = "base_model.model.encoder.block.1.layer.0.SelfAttention.k.lora_A.weight";
    t.insert(k.into(), t[&k.replace(".k.", ".q.")].clone());
    save_tensors(&peft, &t);
    let e = format!("{:#}", import().unwrap_err());
    assert!(e.contains(k) && e.contains("has no site"), "{e}");
    assert!(!out.exists());
}

// ------------------------------------------------- the real PEFT folder (t5-large base)

fn bias_detector() -> PathBuf {
    let dir = root().join("assets/bias-detector-lora");
    assert!(
        dir.join("adapter_model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets.sh first",
        dir.display()
    );
    dir
}

/// t5-large's config (the folder's `base_model_name_or_path`), as on the Hub.
fn t5_large() -> T5Config {
    T5Config::from_json(
        r#"{"model_type": "t5", "vocab_size": 32128, "d_model": 1024, "d_kv": 64,
            "d_ff": 4096, "num_layers": 24, "num_decoder_layers": 24, "num_heads": 16,
            "feed_forward_proj": "relu", "relative_attention_num_buckets": 32,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
            "tie_word_embeddings": true}"#,
    )
    .unwrap()
}

#[test]
fn real_bias_detector_folder_maps_onto_t5_large() {
    let adapter = read_peft(&bias_detector()).unwrap();
    assert_eq!(adapter.base_model().as_deref(), Some("t5-large"));
    assert_eq!((adapter.r, adapter.alpha), (16, 32.0));
    assert_eq!(adapter.tensors.len(), 288);
    let large = t5_large();
    let plan = t5_lora_plan(&large, &overrides_of(&adapter), "custom").unwrap();
    adapter
        .check_for(Family::T5, &[LoraTarget::Q, LoraTarget::V])
        .unwrap();
    let shapes: BTreeMap<String, Vec<usize>> = plan
        .prototype
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let values = map_tensors(&adapter, Family::T5, &plan, &shapes).unwrap();
    assert_eq!(values.len(), 288);

    // every tensor: PEFT's module ↔ propetl's layer, target and factor, t5-large's shape,
    // bit-equal values
    let expected = t5_placements(24, 24);
    assert_eq!(expected.len(), 288);
    for p in &expected {
        let key = peft_key(Family::T5, p);
        assert_eq!(
            placement(Family::T5, &key),
            Some(Placement::Lora(p.clone()))
        );
        let src = adapter
            .tensors
            .get(&key)
            .unwrap_or_else(|| panic!("the folder has no `{key}`"));
        let f = match p.factor {
            Factor::A => "A",
            Factor::B => "B",
        };
        let name = format!("lora.{}.{}.{f}", p.layer, p.target);
        let ours = &values[&name];
        let shape = match p.factor {
            Factor::A => [16, 1024],
            Factor::B => [1024, 16],
        };
        assert_eq!(src.dims(), shape, "{key}");
        assert_eq!(ours.dims(), shape, "{name}");
        let (a, b) = (
            src.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{key} -> {name}"
        );
    }
    // through propetl's save format and back (the LoRA state alone: no backbone)
    let state = PetlState::new(
        &plan.config,
        &plan.layout,
        &VarMap::new(),
        &mut PetlRng::seed(0),
        &Device::Cpu,
    )
    .unwrap();
    for (name, var) in state.prototype_vars() {
        var.set(&values[&name]).unwrap();
    }
    let (_, bytes) = state
        .save_to_bytes(&BTreeMap::new(), large.backbone_params())
        .unwrap();
    let loaded =
        PetlState::load_from_bytes(&bytes, &plan.config, &plan.layout, &Device::Cpu).unwrap();
    let ctx = loaded.state.context("custom").unwrap();
    for (l, layer) in plan.layout.layers.iter().enumerate() {
        let LayerPetl::Lora(parts) = ctx.layer(l) else {
            panic!("layer {layer} has no LoRA");
        };
        for part in parts {
            assert!((part.scale - 2.0).abs() < 1e-12, "α/r = 32/16");
            for (f, t) in [(Factor::A, &part.a), (Factor::B, &part.b)] {
                let key = peft_key(
                    Family::T5,
                    &LoraPlacement {
                        layer: layer.clone(),
                        target: part.target,
                        factor: f,
                    },
                );
                let diff = (t - &adapter.tensors[&key])
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(diff, 0.0, "{layer} {}: {key}", part.target);
            }
        }
    }

    // onto a checkpoint of another width it is refused naming the shapes
    let dir = tempfile::tempdir().unwrap();
    let e = import_peft(
        &bias_detector(),
        &tiny_t5(),
        &dir.path().join("o"),
        &ImportOptions::default(),
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("has shape [16, 1024]"), "{e}");
    assert!(e.contains("needs [16, 64]"), "{e}");
    assert!(e.contains("base_model_name_or_path is `t5-large`"), "{e}");
    assert!(!dir.path().join("o").exists());
}
