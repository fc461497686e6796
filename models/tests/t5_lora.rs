//! LoRA on T5 (q and v of every attention module: each block's self-attention and each
//! decoder block's cross-attention, as PEFT's `target_modules = ["q", "v"]`): ProLoRA (one
//! pair shared by all modules and tasks, task masks `or` module masks) and the unshared
//! baseline. Their logits equal the plain backbone's with every module's effective update
//! folded into its q/v weights (`W + (α/r)·B·A`); generation with the key/value cache equals
//! recomputing; every trainable tensor of the batch's task gets a gradient; T5 refuses a
//! prefix.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use propetl_models::t5::{
    self, hf_tensors, GenerationConfig, Seq2Seq, T5Checkpoint, T5Config, T5Plain,
};
use propetl_models::TensorKind;
use propetl_runtime::{ForwardMode, LayerPetl, LoraTarget, NumericOverrides, PetlRng, Variant};

/// A small T5 with large random weights (outputs vary from input to input).
fn tensors(config: &T5Config, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = PetlRng::seed(seed);
    hf_tensors(config)
        .into_iter()
        .map(|t| {
            let v = match t.kind {
                TensorKind::Ones => {
                    Tensor::ones(t.shape.as_slice(), candle_core::DType::F32, &Device::Cpu)
                }
                _ => {
                    let std = if t.name == "shared.weight" {
                        1.0
                    } else if t.name.contains("relative_attention_bias") {
                        2.0
                    } else {
                        0.3
                    };
                    rng.normal(t.shape.as_slice(), std, &Device::Cpu)
                }
            };
            (t.name, v.unwrap())
        })
        .collect()
}

fn config() -> T5Config {
    T5Config::from_json(
        r#"{"model_type": "t5", "vocab_size": 120, "d_model": 32, "d_kv": 8, "d_ff": 64,
            "num_layers": 2, "num_decoder_layers": 3, "num_heads": 4,
            "relative_attention_num_buckets": 16, "relative_attention_max_distance": 24}"#,
    )
    .unwrap()
}

fn inputs() -> (Tensor, Tensor, Tensor) {
    let ids = Tensor::new(&[[5u32, 17, 33, 60, 1], [9, 8, 7, 1, 0]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 1, 0]], &Device::Cpu).unwrap();
    let dec = Tensor::new(&[[0u32, 12, 40], [0, 77, 2]], &Device::Cpu).unwrap();
    (ids, mask, dec)
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

fn build(variant: Variant, ckpt: &T5Checkpoint) -> Box<dyn Seq2Seq> {
    let model = t5::build(
        variant,
        ckpt,
        &["a", "b"],
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(3),
    )
    .unwrap();
    // B starts at zero (LoRA's init): give every prototype tensor large values so the update
    // matters
    let mut rng = PetlRng::seed(4);
    for (_, var) in model.petl().prototype_vars() {
        var.set(&rng.normal(var.dims(), 0.3, &Device::Cpu).unwrap())
            .unwrap();
    }
    model
}

#[test]
fn lora_equals_its_update_folded_into_q_and_v() {
    let cfg = config();
    let weights = tensors(&cfg, 1);
    let ckpt = T5Checkpoint::from_tensors(cfg.clone(), weights.clone(), &Device::Cpu).unwrap();
    let (ids, mask, dec) = inputs();
    for variant in [Variant::ProLora, Variant::Lora] {
        let model = build(variant, &ckpt);
        for task in ["a", "b"] {
            let ours = model.logits(&ids, &mask, &dec, task).unwrap();
            // fold each block's effective (masked) update into its self-attention q and v
            let mut merged = weights.clone();
            // the LoRA variants' layers: every block's self-attention, then every decoder
            // block's cross-attention (where PEFT's target_modules = ["q", "v"] puts LoRA)
            let modules = (0..cfg.num_layers)
                .map(|l| format!("encoder.block.{l}.layer.0.SelfAttention"))
                .chain(
                    (0..cfg.decoder_layers())
                        .map(|l| format!("decoder.block.{l}.layer.0.SelfAttention")),
                )
                .chain(
                    (0..cfg.decoder_layers())
                        .map(|l| format!("decoder.block.{l}.layer.1.EncDecAttention")),
                );
            assert_eq!(model.petl().layout().layers.len(), 2 + 3 + 3);
            for (index, module) in modules.enumerate() {
                let LayerPetl::Lora(parts) = model.effective_module(index, task).unwrap() else {
                    panic!("{variant}: block {index} has no LoRA");
                };
                assert_eq!(parts.len(), 2);
                for p in parts {
                    let name = match p.target {
                        LoraTarget::Q => "q",
                        LoraTarget::V => "v",
                        other => panic!("unexpected target {other}"),
                    };
                    let key = format!("{module}.{name}.weight");
                    let delta = (p.b.matmul(&p.a).unwrap() * p.scale).unwrap();
                    let w = merged[&key].add(&delta).unwrap();
                    merged.insert(key, w);
                }
            }
            let plain = T5Plain::from_checkpoint(
                &T5Checkpoint::from_tensors(cfg.clone(), merged, &Device::Cpu).unwrap(),
            )
            .unwrap();
            let folded = plain.logits(&ids, &mask, &dec).unwrap();
            let err = max_abs(&(&ours - &folded).unwrap());
            assert!(
                err <= 1e-4 * max_abs(&folded),
                "{variant} {task}: |lora − folded| = {err}"
            );
            // and the update matters
            let base = T5Plain::from_checkpoint(&ckpt)
                .unwrap()
                .logits(&ids, &mask, &dec)
                .unwrap();
            assert!(max_abs(&(&ours - &base).unwrap()) > 1e-2);
        }
    }
}

#[test]
fn cached_generation_equals_recomputing_and_tasks_differ() {
    let cfg = config();
    let ckpt = T5Checkpoint::from_tensors(cfg.clone(), tensors(&cfg, 2), &Device::Cpu).unwrap();
    let model = build(Variant::ProLora, &ckpt);
    let (ids, mask, _) = inputs();
    for gen in [GenerationConfig::greedy(12), GenerationConfig::beams(3, 10)] {
        let cached = model.generate(&ids, &mask, "a", &gen).unwrap();
        let recomputed = model
            .generate(
                &ids,
                &mask,
                "a",
                &GenerationConfig {
                    use_cache: false,
                    ..gen.clone()
                },
            )
            .unwrap();
        assert_eq!(cached, recomputed, "{gen:?}");
    }
    let greedy = GenerationConfig::greedy(12);
    let plain = T5Plain::from_checkpoint(&ckpt)
        .unwrap()
        .generate(&ids, &mask, &greedy)
        .unwrap();
    let a = model.generate(&ids, &mask, "a", &greedy).unwrap();
    assert_ne!(a, plain, "LoRA does not change the generations");
}

#[test]
fn every_trainable_of_the_task_gets_a_gradient() {
    let cfg = config();
    let ckpt = T5Checkpoint::from_tensors(cfg.clone(), tensors(&cfg, 3), &Device::Cpu).unwrap();
    let (ids, mask, dec) = inputs();
    for variant in [Variant::ProLora, Variant::Lora] {
        let model = build(variant, &ckpt);
        let labels = Tensor::new(&[[12u32, 40, 1], [77, 2, 1]], &Device::Cpu).unwrap();
        let logits = model
            .forward(
                &ids,
                &mask,
                &dec,
                "a",
                &mut ForwardMode::Train(&mut PetlRng::seed(5)),
            )
            .unwrap();
        let grads = model.loss(&logits, &labels).unwrap().backward().unwrap();
        let trainables = model.petl().trainables();
        assert!(!trainables.is_empty());
        for t in trainables {
            // the other task's mask takes no part in a batch of task `a`
            if t.name.contains(".task.b.") {
                continue;
            }
            let g = grads
                .get(t.var.as_tensor())
                .unwrap_or_else(|| panic!("{variant}: `{}` has no gradient", t.name));
            assert!(
                max_abs(g) > 0.0,
                "{variant}: `{}` has a zero gradient",
                t.name
            );
        }
    }
}

#[test]
fn t5_has_no_prefix_site() {
    let cfg = config();
    let ckpt = T5Checkpoint::from_tensors(cfg.clone(), tensors(&cfg, 4), &Device::Cpu).unwrap();
    for variant in [Variant::ProPrefix, Variant::Prefix] {
        let e = t5::build(
            variant,
            &ckpt,
            &["a"],
            &NumericOverrides::default(),
            &VarMap::new(),
            &mut PetlRng::seed(0),
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(e.contains("no prefix site"), "{e}");
    }
}
