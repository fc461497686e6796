//! T5 v1.1 / FLAN-T5 shapes and training-mode dropout. A tiny random checkpoint with a gated
//! GELU FFN (`wi_0`, `wi_1`), an untied `lm_head.weight` and no d_model^-0.5 scaling
//! (`tests/fixtures/tiny-t5-v1_1`, made with transformers by its `make.py`) gives transformers'
//! logits; dropout is on in training mode only, reproducible from the seed, and off at rate 0.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use propetl_models::t5::{self, T5Checkpoint, T5Config, T5Plain};
use propetl_runtime::{ForwardMode, NumericOverrides, PetlRng, Variant};
use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-t5-v1_1")
}

fn tensor(v: &Value) -> Tensor {
    let rows: Vec<Vec<u32>> = serde_json::from_value(v.clone()).unwrap();
    let (b, s) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, s), &Device::Cpu).unwrap()
}

#[test]
fn gated_gelu_untied_head_matches_transformers() {
    let ckpt = T5Checkpoint::open(fixture(), &Device::Cpu).unwrap();
    assert!(ckpt.config.feed_forward().unwrap().0, "gated");
    assert!(!ckpt.config.scales_decoder_outputs());
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let model = T5Plain::from_checkpoint(&ckpt).unwrap();
    let logits = model
        .logits(
            &tensor(&expected["input_ids"]),
            &tensor(&expected["attention_mask"]),
            &tensor(&expected["decoder_input_ids"]),
        )
        .unwrap();
    let theirs: Vec<Vec<Vec<f32>>> = serde_json::from_value(expected["logits"].clone()).unwrap();
    let theirs = Tensor::new(theirs, &Device::Cpu).unwrap();
    let err = (logits - &theirs)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = theirs
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        err <= 1e-4 * scale,
        "max |ours − transformers| = {err} (max |logit| {scale})"
    );
    // the parameter count includes the gated FFN's third matrix and the untied head
    let c = &ckpt.config;
    let file: usize =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .values()
            .map(|t| t.elem_count())
            .sum();
    assert_eq!(c.backbone_params(), file);
}

#[test]
fn unknown_feed_forward_is_refused_with_the_choices() {
    let e = T5Config::from_json(
        r#"{"model_type": "t5", "vocab_size": 8, "d_model": 4, "d_kv": 2, "d_ff": 8,
            "num_layers": 1, "num_heads": 2, "feed_forward_proj": "gated-swish"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(
            "unsupported feed_forward_proj `gated-swish` (relu, gelu, gated-gelu, gated-relu)"
        ),
        "{e}"
    );
}

/// Logits (flattened) of a fixed batch through a ProAdapter on `ckpt`, in `mode`.
fn pro_adapter_logits(ckpt: &T5Checkpoint) -> impl Fn(&mut ForwardMode) -> Vec<f32> {
    let model = t5::build(
        Variant::ProAdapter,
        ckpt,
        &["a"],
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(0),
    )
    .unwrap();
    let ids = Tensor::new(&[[5u32, 17, 33, 60, 1]], &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 5), DType::U32, &Device::Cpu).unwrap();
    let dec = Tensor::new(&[[0u32, 12, 40]], &Device::Cpu).unwrap();
    move |mode: &mut ForwardMode| {
        model
            .forward(&ids, &mask, &dec, "a", mode)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}

#[test]
fn dropout_only_in_training_mode() {
    let ckpt = T5Checkpoint::open(fixture(), &Device::Cpu).unwrap();
    assert_eq!(ckpt.config.dropout_rate, 0.1);
    let run = pro_adapter_logits(&ckpt);
    let eval = run(&mut ForwardMode::Eval);
    assert_eq!(eval, run(&mut ForwardMode::Eval));
    let train = run(&mut ForwardMode::Train(&mut PetlRng::seed(1)));
    assert_ne!(train, eval, "dropout changed nothing in training mode");
    // reproducible from the seed, different for another seed
    assert_eq!(train, run(&mut ForwardMode::Train(&mut PetlRng::seed(1))));
    assert_ne!(train, run(&mut ForwardMode::Train(&mut PetlRng::seed(2))));
    // at rate 0 training mode is evaluation
    let mut cfg = ckpt.config.clone();
    cfg.dropout_rate = 0.0;
    let tensors = candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    let run0 = pro_adapter_logits(&T5Checkpoint::from_tensors(cfg, tensors, &Device::Cpu).unwrap());
    assert_eq!(
        run0(&mut ForwardMode::Train(&mut PetlRng::seed(1))),
        run0(&mut ForwardMode::Eval)
    );
}
