//! Benchmarks, printed as JSON lines (`cargo bench --bench training`; add `-- quick` for one
//! repetition each):
//! - `binarize`: top-k binarization of every roberta-base score shape;
//! - `mask_overhead`: a roberta-base ProAdapter training step (batch 8 × 128) vs the same step
//!   with the shared prototype unmasked (the `mask = "none"` ablation), and their ratio;
//! - `train_step`: one training step (forward + backward + clip + AdamW) of each variant at
//!   roberta-base and MiniLM shapes: seconds/step, tokens/s, peak memory;
//! - `t5`: multi-task t5-base (8 tasks) ProAdapter and the unshared adapter: one training step
//!   (batch 8, source 128, target 32), greedy generation tokens/s (key/value cache), and the
//!   cost of switching tasks (first use of a task's masks, then cached).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use propetl::models::roberta::{self, Checkpoint, RobertaConfig};
use propetl::runtime::{
    clip_grad_norm, mask, AdamW, Batch, ForwardMode, GroupHyper, MaskKind, NumericOverrides,
    PetlConfig, PetlRng, PetlState, Schedule, TaskKind, TaskModel, Variant,
};
use serde_json::json;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64() / reps as f64
}

struct Step {
    model: Box<dyn TaskModel>,
    opt: AdamW,
    vars: Vec<candle_core::Var>,
    batch: Batch,
}

const CLASSES: TaskKind = TaskKind::Classification { num_labels: 2 };

fn build(variant: Variant, ckpt: &Checkpoint) -> Box<dyn TaskModel> {
    roberta::build(
        variant,
        ckpt,
        CLASSES,
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(4),
    )
    .unwrap()
}

impl Step {
    fn from_batch(model: Box<dyn TaskModel>, batch: Batch) -> Self {
        let groups = model.task_optimizer_groups(&GroupHyper::default());
        let opt = AdamW::new(groups, Schedule::Constant);
        let vars = opt.vars();
        Self {
            model,
            opt,
            vars,
            batch,
        }
    }

    fn new(model: Box<dyn TaskModel>, batch: usize, len: usize, vocab: usize) -> Self {
        let groups = model.task_optimizer_groups(&GroupHyper::default());
        let opt = AdamW::new(groups, Schedule::Constant);
        let vars = opt.vars();
        let mut rng = PetlRng::seed(3);
        let ids: Vec<u32> = (0..batch * len)
            .map(|i| {
                if i % len == 0 {
                    0
                } else {
                    3 + rng.below(vocab - 3) as u32
                }
            })
            .collect();
        let dev = Device::Cpu;
        Self {
            model,
            opt,
            vars,
            batch: Batch {
                input_ids: Tensor::from_vec(ids, (batch, len), &dev).unwrap(),
                attention_mask: Tensor::ones((batch, len), DType::U32, &dev).unwrap(),
                labels: Tensor::from_vec(
                    (0..batch as i64).map(|i| i % 2).collect::<Vec<_>>(),
                    batch,
                    &dev,
                )
                .unwrap(),
                decoder_input_ids: None,
                task: "default".into(),
            },
        }
    }

    fn run(&mut self) {
        let mut rng = PetlRng::seed(5);
        let loss = self
            .model
            .loss(&self.batch, &mut ForwardMode::Train(&mut rng))
            .unwrap();
        let mut grads = loss.backward().unwrap();
        clip_grad_norm(&mut grads, &self.vars, 1.0).unwrap();
        self.opt.step(&grads).unwrap();
    }
}

fn minilm_config() -> RobertaConfig {
    RobertaConfig {
        model_type: "bert".into(),
        vocab_size: 30522,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        ..RobertaConfig::roberta_base()
    }
}

fn main() {
    propetl::runtime::alloc::tune_for_training();
    let quick = std::env::args().any(|a| a == "quick");
    let only: Option<String> = std::env::args()
        .skip(1)
        .find(|a| a != "quick" && a != "--bench");
    let want = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let reps = if quick { 1 } else { 3 };
    let dev = Device::Cpu;
    println!(
        "{}",
        json!({"bench": "setup", "threads": candle_core::utils::get_num_threads(), "quick": quick})
    );

    if want("binarize") {
        let mut rng = PetlRng::seed(1);
        for (name, shape, keep) in [
            ("adapter.down", (64usize, 768usize), 0.5),
            ("adapter.up", (768, 64), 0.5),
            ("lora.A", (32, 768), 0.1),
            ("lora.B", (768, 32), 0.1),
            ("prefix", (64, 1536), 0.1),
        ] {
            let scores = rng.kaiming_uniform(shape, &dev).unwrap();
            let secs = time(if quick { 5 } else { 200 }, || {
                mask::binarize(&scores, keep, name).unwrap();
            });
            println!(
                "{}",
                json!({"bench": "binarize", "tensor": name, "shape": [shape.0, shape.1], "keep": keep, "micros": secs * 1e6})
            );
        }
    }

    let base = Checkpoint::random(
        RobertaConfig::roberta_base(),
        0.02,
        &mut PetlRng::seed(2),
        &dev,
    )
    .unwrap();
    if want("mask_overhead") {
        // masked ProAdapter vs the same shared prototype without masks (identical compute otherwise)
        let mut secs = Vec::new();
        for masked in [false, true, false, true] {
            let mut model = build(Variant::ProAdapter, &base);
            if !masked {
                // swap in an unmasked shared prototype: the `mask = "none"` ablation
                let cfg = PetlConfig {
                    mask: MaskKind::None,
                    ..model.petl().config().clone()
                };
                *model.petl_mut() = PetlState::new(
                    &cfg,
                    &base.config.layout(),
                    &VarMap::new(),
                    &mut PetlRng::seed(4),
                    &dev,
                )
                .unwrap();
            }
            let mut step = Step::new(model, 8, 128, 50265);
            secs.push(time(reps, || step.run()));
        }
        println!(
            "{}",
            json!({"bench": "mask_overhead", "shape": "roberta-base", "batch": 8, "len": 128, "masked_s": secs[3], "unmasked_s": secs[2], "ratio": secs[3] / secs[2], "first_pass": {"unmasked_s": secs[0], "masked_s": secs[1]}})
        );
    }

    if want("train_step") {
        let minilm =
            Checkpoint::random(minilm_config(), 0.02, &mut PetlRng::seed(2), &dev).unwrap();
        for (shape, ckpt) in [("roberta-base", &base), ("minilm", &minilm)] {
            for v in Variant::ALL {
                let mut step = Step::new(build(v, ckpt), 8, 128, ckpt.config.vocab_size);
                let s = time(reps, || step.run());
                println!(
                    "{}",
                    json!({"bench": "train_step", "shape": shape, "variant": v.name(), "batch": 8, "len": 128, "seconds_per_step": s, "tokens_per_s": 8.0 * 128.0 / s, "peak_rss_mb": peak_rss_mb()})
                );
            }
        }
    }
    if want("t5") {
        t5_bench(reps, &dev);
    }
}

fn t5_bench(reps: usize, dev: &Device) {
    use propetl::models::t5::{
        self, GenerationConfig, T5Checkpoint, T5Config, T5TextToText, TextTask,
    };
    use propetl::runtime::{Example, ProPetlModel};
    let config = T5Config::t5_base();
    let ckpt = T5Checkpoint::random(config, 0.02, &mut PetlRng::seed(2), dev).unwrap();
    let tasks = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"];
    let text_tasks = || -> std::collections::BTreeMap<String, TextTask> {
        tasks
            .iter()
            .map(|t| {
                let labels = (0..2u32)
                    .map(|i| t5::LabelTarget {
                        text: i.to_string(),
                        ids: vec![5 + i, 1],
                        value: i as f32,
                    })
                    .collect();
                (
                    t.to_string(),
                    TextTask {
                        kind: CLASSES,
                        labels,
                    },
                )
            })
            .collect()
    };
    let mut rng = PetlRng::seed(3);
    let (batch, src, tgt) = (8usize, 128usize, 32usize);
    let examples: Vec<Example> = (0..batch)
        .map(|_| {
            let mut ids: Vec<u32> = (0..src - 1).map(|_| 3 + rng.below(32000) as u32).collect();
            ids.push(1);
            let mut target_ids: Vec<u32> =
                (0..tgt - 1).map(|_| 3 + rng.below(32000) as u32).collect();
            target_ids.push(1);
            Example {
                ids,
                label: 0.0,
                target_ids,
            }
        })
        .collect();
    for variant in [Variant::ProAdapter, Variant::Adapter] {
        let inner = t5::build(
            variant,
            &ckpt,
            &tasks,
            &NumericOverrides::default(),
            &VarMap::new(),
            &mut PetlRng::seed(4),
        )
        .unwrap();
        let model = T5TextToText::new(inner, text_tasks()).unwrap();
        let refs: Vec<&Example> = examples.iter().collect();
        let b = model.collate(&refs, src, "sst2").unwrap();
        let mut step = Step::from_batch(Box::new(model), b);
        let s = time(reps, || step.run());
        println!(
            "{}",
            json!({"bench": "t5_train_step", "shape": "t5-base", "variant": variant.name(), "tasks": tasks.len(), "batch": batch, "source_len": src, "target_len": tgt, "seconds_per_step": s, "peak_rss_mb": peak_rss_mb()})
        );
    }
    // generation and task switching on the multi-task ProAdapter
    let inner = t5::build(
        Variant::ProAdapter,
        &ckpt,
        &tasks,
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(4),
    )
    .unwrap();
    let mut model = T5TextToText::new(inner, text_tasks()).unwrap();
    model.materialize_for_inference().unwrap();
    let refs: Vec<&Example> = examples.iter().collect();
    let b = model.collate(&refs, src, "sst2").unwrap();
    let start = Instant::now();
    let first = model.petl_context("rte").unwrap();
    let switch_first = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let again = model.petl_context("rte").unwrap();
    let switch_cached = start.elapsed().as_secs_f64();
    assert_eq!(first.len(), again.len());
    let cfg = GenerationConfig {
        max_new_tokens: 32,
        ..Default::default()
    };
    let mut tokens = 0usize;
    let s = time(reps, || {
        let out = model
            .inner()
            .generate(&b.input_ids, &b.attention_mask, "sst2", &cfg)
            .unwrap();
        tokens = out.iter().map(|r| t5::until_eos(r, 1).len()).sum();
    });
    println!(
        "{}",
        json!({"bench": "t5_generate", "shape": "t5-base", "variant": "pro_adapter", "batch": batch, "source_len": src, "max_new_tokens": 32, "generated_tokens": tokens, "seconds": s, "tokens_per_s": tokens as f64 / s, "task_switch_first_ms": switch_first * 1e3, "task_switch_cached_us": switch_cached * 1e6})
    );
}
