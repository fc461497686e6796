//! Benchmarks, printed as JSON lines (`cargo bench --bench training`; add `-- quick` for one
//! repetition each):
//! - `binarize`: top-k binarization of every roberta-base score shape;
//! - `mask_overhead`: a roberta-base ProAdapter training step (batch 8 × 128) vs the same step
//!   with the shared prototype unmasked (the `mask = "none"` ablation), and their ratio;
//! - `train_step`: one training step (forward + backward + clip + AdamW) of each variant at
//!   roberta-base and MiniLM shapes: seconds/step, tokens/s, peak memory;
//! - `t5`: multi-task t5-base (8 tasks) ProAdapter and the unshared adapter: one training step
//!   (batch 8, source 128, target 32), greedy generation tokens/s (key/value cache), and the
//!   cost of switching tasks (first use of a task's masks, then cached);
//! - `side --shape base|small --variant NAME [--mode train|infer] [--steps N] [--warmup N]
//!   [--batch B] [--seq S]`:
//!   one configuration exactly as `../shared/torch_bench/bench.py` runs it (same shapes,
//!   batch, steps and median), one JSON line with its own peak RSS — what
//!   `scripts/bench-vs-torch.sh` runs in a fresh process per configuration.

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
        self.timed_run();
    }

    /// `warmup` untimed steps, then `steps` timed ones; adds the median and minimum step
    /// seconds, the median forward / backward / optimizer seconds and the peak RSS to `line`.
    fn timings(&mut self, warmup: usize, steps: usize, line: &mut serde_json::Value) {
        let mut times = Vec::new();
        let mut parts = Vec::new();
        for i in 0..warmup + steps {
            let start = Instant::now();
            let p = self.timed_run();
            if i >= warmup {
                times.push(start.elapsed().as_secs_f64());
                parts.push(p);
            }
        }
        let part = |k: usize| median(parts.iter().map(|p| p[k]).collect());
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let fields = json!({"steps": steps, "warmup": warmup, "median_step_s": median(times), "min_step_s": min, "median_fwd_s": part(0), "median_bwd_s": part(1), "median_opt_s": part(2), "peak_rss_mb": peak_rss_mb()});
        if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
    }

    /// One step; returns the seconds of (forward, backward, clip + AdamW).
    fn timed_run(&mut self) -> [f64; 3] {
        let mut rng = PetlRng::seed(5);
        let a = Instant::now();
        let loss = self
            .model
            .loss(&self.batch, &mut ForwardMode::Train(&mut rng))
            .unwrap();
        let b = Instant::now();
        let mut grads = loss.backward().unwrap();
        let c = Instant::now();
        clip_grad_norm(&mut grads, &self.vars, 1.0).unwrap();
        self.opt.step(&grads).unwrap();
        drop(grads);
        drop(loss);
        let d = Instant::now();
        [
            (b - a).as_secs_f64(),
            (c - b).as_secs_f64(),
            (d - c).as_secs_f64(),
        ]
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

/// The shapes of `bench.py`: `base` = roberta-base, batch 8 × 128 (inference 32 × 128);
/// `small` = 4 layers × 256 (4 heads, FFN 1024), batch 8 × 64 (inference 32 × 64).
fn side_shape(name: &str) -> (RobertaConfig, usize) {
    match name {
        "base" => (RobertaConfig::roberta_base(), 128),
        "small" => (
            RobertaConfig {
                hidden_size: 256,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                intermediate_size: 1024,
                ..RobertaConfig::roberta_base()
            },
            64,
        ),
        other => panic!("--shape must be base or small, got {other}"),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// `side`: one configuration of the side-by-side comparison (see the module docs).
fn side(args: &[String]) {
    let opt = |key: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == key)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let shape = opt("--shape", "base");
    let variant_name = opt("--variant", "pro_adapter");
    let mode = opt("--mode", "train");
    let steps: usize = opt("--steps", "5").parse().expect("--steps");
    let warmup: usize = opt("--warmup", "2").parse().expect("--warmup");
    if let Some(t5_variant) = variant_name.strip_prefix("t5_") {
        return side_t5(&shape, t5_variant, &mode, steps, warmup);
    }
    let variant = variant_name
        .parse::<Variant>()
        .unwrap_or_else(|e| panic!("--variant: {e}"));
    let (config, shape_len) = side_shape(&shape);
    // --batch / --seq override the shape's (the scaling benchmark)
    let len: usize = opt("--seq", &shape_len.to_string()).parse().expect("--seq");
    let batch: usize = opt("--batch", if mode == "infer" { "32" } else { "8" })
        .parse()
        .expect("--batch");
    let vocab = config.vocab_size;
    let ckpt = Checkpoint::random(config, 0.02, &mut PetlRng::seed(2), &Device::Cpu).unwrap();
    let model = build(variant, &ckpt);
    // the random checkpoint holds every weight; the model keeps what it needs (a file-backed
    // checkpoint is read into the model the same way), so its copies do not count
    drop(ckpt);
    let threads = candle_core::utils::get_num_threads();
    let mut times = Vec::new();
    if mode == "infer" {
        // eval forward, no dropout, frozen masks materialized once (what `predict` runs)
        let mut step = Step::new(model, batch, len, vocab);
        step.model.materialize_for_inference().unwrap();
        for i in 0..warmup + steps {
            let start = Instant::now();
            let logits = step
                .model
                .logits(&step.batch, &mut ForwardMode::Eval)
                .unwrap();
            drop(logits);
            if i >= warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        let med = median(times);
        println!(
            "{}",
            json!({"side": "rust", "mode": "infer", "shape": shape, "variant": variant.name(), "batch": batch, "seq": len, "threads": threads, "median_batch_s": med, "tokens_per_s": (batch * len) as f64 / med, "peak_rss_mb": peak_rss_mb()})
        );
    } else {
        let mut step = Step::new(model, batch, len, vocab);
        let mut line = json!({"side": "rust", "mode": "train", "shape": shape, "variant": variant.name(), "batch": batch, "seq": len, "threads": threads});
        step.timings(warmup, steps, &mut line);
        println!("{line}");
    }
}

fn main() {
    propetl::runtime::alloc::tune_for_training();
    // on the compute pool, as the CLI runs its commands (propetl_runtime::parallel)
    propetl::runtime::parallel::on_compute_pool(benches);
}

fn benches() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "side") {
        side(&args[i + 1..]);
        return;
    }
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

    if want("gemm") {
        // the frozen linear's gemm (the `gemm` crate, bias folded in) at roberta-base's shapes:
        // rows = batch × sequence, [rows, in] · [out, in]ᵀ; GFLOP/s to compare with a BLAS
        let mut rng = PetlRng::seed(5);
        for (rows, inp, out) in [
            (1024usize, 768usize, 768usize),
            (1024, 768, 3072),
            (1024, 3072, 768),
            (4096, 768, 3072),
            // the adapter's down and up projections (bottleneck 64) at 32 × 128 rows
            (4096, 768, 64),
            (4096, 64, 768),
        ] {
            let x = rng.normal((rows, inp), 1.0, &dev).unwrap();
            let w = rng.normal((out, inp), 0.02, &dev).unwrap();
            let b = rng.normal(out, 0.02, &dev).unwrap();
            let secs = time(if quick { 2 } else { 10 }, || {
                propetl::runtime::ops::frozen_linear(&x, &w, Some(&b)).unwrap();
            });
            println!(
                "{}",
                json!({"bench": "gemm", "rows": rows, "in": inp, "out": out, "seconds": secs, "gflops": 2.0 * (rows * inp * out) as f64 / secs / 1e9})
            );
        }
    }

    if want("attention") {
        // the attention products of one roberta-base layer at inference (32 × 128, 12 heads):
        // Q·Kᵀ and P·V through ops::attention_scores / attention_context; GFLOP/s to compare
        // with the frozen linear's gemm above
        let mut rng = PetlRng::seed(6);
        for (batch, seq) in [(32usize, 128usize), (8, 128)] {
            let q = rng.normal((batch, seq, 768), 1.0, &dev).unwrap();
            let k = rng.normal((batch, seq, 768), 1.0, &dev).unwrap();
            let v = rng.normal((batch, seq, 768), 1.0, &dev).unwrap();
            let probs = propetl::runtime::ops::attention_scores(&q, &k, 12).unwrap();
            let scores_s = time(if quick { 2 } else { 10 }, || {
                propetl::runtime::ops::attention_scores(&q, &k, 12).unwrap();
            });
            let context_s = time(if quick { 2 } else { 10 }, || {
                propetl::runtime::ops::attention_context(&probs, &v).unwrap();
            });
            let flops = 2.0 * (batch * seq * seq * 768) as f64;
            println!(
                "{}",
                json!({"bench": "attention", "batch": batch, "seq": seq, "heads": 12, "scores_s": scores_s, "context_s": context_s, "scores_gflops": flops / scores_s / 1e9, "context_gflops": flops / context_s / 1e9})
            );
        }
    }

    if want("adapter_ops") {
        // the ops of one Pfeiffer adapter at inference (32 × 128 rows, bottleneck 64), each
        // timed alone: where an adapter's share of an inference batch goes
        let mut rng = PetlRng::seed(7);
        let rows = 4096usize;
        let x = rng.normal((rows, 768), 1.0, &dev).unwrap();
        let res = rng.normal((rows, 768), 1.0, &dev).unwrap();
        let lw = rng.normal(768, 0.02, &dev).unwrap();
        let lb = rng.normal(768, 0.02, &dev).unwrap();
        let dw = rng.normal((64, 768), 0.02, &dev).unwrap();
        let db = rng.normal(64, 0.02, &dev).unwrap();
        let uw = rng.normal((768, 64), 0.02, &dev).unwrap();
        let ub = rng.normal(768, 0.02, &dev).unwrap();
        let h = rng.normal((rows, 64), 1.0, &dev).unwrap();
        let reps = if quick { 2 } else { 20 };
        use propetl::runtime::ops;
        let t_ln = time(reps, || {
            ops::frozen_layer_norm(&x, &lw, &lb, 1e-5).unwrap();
        });
        let t_down = time(reps, || {
            ops::frozen_linear(&x, &dw, Some(&db)).unwrap();
        });
        let t_act = time(reps, || {
            ops::activate(&h, propetl::runtime::Activation::Relu).unwrap();
        });
        let t_up = time(reps, || {
            ops::frozen_linear(&h, &uw, Some(&ub)).unwrap();
        });
        let t_add = time(reps, || {
            x.add(&res).unwrap();
        });
        println!(
            "{}",
            json!({"bench": "adapter_ops", "rows": rows, "layer_norm_ms": t_ln * 1e3, "down_ms": t_down * 1e3, "activation_ms": t_act * 1e3, "up_ms": t_up * 1e3, "residual_add_ms": t_add * 1e3})
        );
    }

    if want("gelu") {
        // the FFN's GELU (exact, bias inside) forward and input gradient at 8 × 128 rows
        let mut rng = PetlRng::seed(8);
        let x =
            candle_core::Var::from_tensor(&rng.normal((1024, 3072), 1.0, &dev).unwrap()).unwrap();
        let b = rng.normal(3072, 0.02, &dev).unwrap();
        let gelu = propetl::runtime::Activation::Gelu;
        let reps = if quick { 2 } else { 20 };
        let forward_s = time(reps, || {
            propetl::runtime::ops::activate_with_bias(x.as_tensor(), Some(&b), gelu).unwrap();
        });
        let y = propetl::runtime::ops::activate_with_bias(x.as_tensor(), Some(&b), gelu).unwrap();
        let loss = y.sum_all().unwrap();
        let backward_s = time(reps, || {
            loss.backward().unwrap();
        });
        println!(
            "{}",
            json!({"bench": "gelu", "rows": 1024, "width": 3072, "forward_ms": forward_s * 1e3, "backward_ms": backward_s * 1e3})
        );
    }

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
            for v in Variant::PETL {
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

const T5_TASKS: [&str; 8] = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"];

/// Two-label text-to-text tasks for the T5 benches.
fn t5_text_tasks() -> std::collections::BTreeMap<String, propetl::models::t5::TextTask> {
    use propetl::models::t5::{LabelTarget, TextTask};
    T5_TASKS
        .iter()
        .map(|t| {
            let labels = (0..2u32)
                .map(|i| LabelTarget {
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
}

/// `batch` random source/target pairs (EOS-terminated) of the given lengths.
fn t5_examples(
    batch: usize,
    src: usize,
    tgt: usize,
    vocab: usize,
) -> Vec<propetl::runtime::Example> {
    let mut rng = PetlRng::seed(3);
    (0..batch)
        .map(|_| {
            let mut ids: Vec<u32> = (0..src - 1)
                .map(|_| 3 + rng.below(vocab - 3) as u32)
                .collect();
            ids.push(1);
            let mut target_ids: Vec<u32> = (0..tgt - 1)
                .map(|_| 3 + rng.below(vocab - 3) as u32)
                .collect();
            target_ids.push(1);
            propetl::runtime::Example {
                ids,
                label: 0.0,
                target_ids,
            }
        })
        .collect()
}

/// `side` for `t5_adapter` / `t5_pro_adapter`: the multi-task (8 tasks) training step of
/// `bench.py` (base: t5-base, batch 8, source 128, target 32; small: 4 + 4 blocks × 256,
/// source 64, target 16).
fn side_t5(shape: &str, variant: &str, mode: &str, steps: usize, warmup: usize) {
    use propetl::models::t5::{self, T5Checkpoint, T5Config, T5TextToText};
    assert_eq!(mode, "train", "the T5 side-by-side bench is training only");
    let (config, src, tgt) = match shape {
        "base" => (T5Config::t5_base(), 128, 32),
        "small" => (
            T5Config {
                d_model: 256,
                d_ff: 1024,
                num_layers: 4,
                num_decoder_layers: Some(4),
                num_heads: 4,
                ..T5Config::t5_base()
            },
            64,
            16,
        ),
        other => panic!("--shape must be base or small, got {other}"),
    };
    let variant: Variant = variant.parse().expect("--variant");
    let vocab = config.vocab_size;
    let ckpt = T5Checkpoint::random(config, 0.02, &mut PetlRng::seed(2), &Device::Cpu).unwrap();
    let inner = t5::build(
        variant,
        &ckpt,
        &T5_TASKS,
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(4),
    )
    .unwrap();
    // as the RoBERTa side: the model keeps what it needs (its stacked query/key/value
    // weights are copies, the rest shared), so the checkpoint's copies do not count
    drop(ckpt);
    let model = T5TextToText::new(inner, t5_text_tasks()).unwrap();
    let examples = t5_examples(8, src, tgt, vocab);
    let refs: Vec<&propetl::runtime::Example> = examples.iter().collect();
    let batch = model.collate(&refs, src, "sst2").unwrap();
    let mut step = Step::from_batch(Box::new(model), batch);
    let mut line = json!({"side": "rust", "mode": "train", "shape": shape, "variant": format!("t5_{}", variant.name()), "batch": 8, "seq": {"src": src, "tgt": tgt}, "threads": candle_core::utils::get_num_threads()});
    step.timings(warmup, steps, &mut line);
    println!("{line}");
}

fn t5_bench(reps: usize, dev: &Device) {
    use propetl::models::t5::{self, GenerationConfig, T5Checkpoint, T5Config, T5TextToText};
    use propetl::runtime::{Example, ProPetlModel};
    let config = T5Config::t5_base();
    let ckpt = T5Checkpoint::random(config, 0.02, &mut PetlRng::seed(2), dev).unwrap();
    let tasks = T5_TASKS;
    let text_tasks = t5_text_tasks;
    let (batch, src, tgt) = (8usize, 128usize, 32usize);
    let examples: Vec<Example> = t5_examples(batch, src, tgt, 32003);
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
