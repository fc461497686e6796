//! Multi-task ProPETL-T5 trains through the same trainer as every other model: T5 is a
//! text-to-text `TaskModel` (targets are label strings, predictions are greedy generations
//! compared with the labels), the loss goes down for every task, evaluation runs by
//! generation, and switching the task switches only the masks.

use std::collections::BTreeMap;

use candle_core::Device;
use candle_nn::VarMap;
use propetl::models::t5::{self, LabelTarget, T5Checkpoint, T5Config, T5TextToText, TextTask};
use propetl::prelude::*;
use propetl::runtime::Variant;
use propetl::train::{evaluate, train, EvalSettings, Silent};

const CLASSES: TaskKind = TaskKind::Classification { num_labels: 2 };

fn tiny_config() -> T5Config {
    T5Config::from_json(
        r#"{"model_type": "t5", "vocab_size": 64, "d_model": 32, "d_kv": 8, "d_ff": 64,
            "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "pad_token_id": 0,
            "eos_token_id": 1, "feed_forward_proj": "relu"}"#,
    )
    .unwrap()
}

/// "0" is token 5, "1" is token 6, both followed by the end token 1.
fn labels() -> Vec<LabelTarget> {
    (0..2)
        .map(|i| LabelTarget {
            text: i.to_string(),
            ids: vec![5 + i as u32, 1],
            value: i as f32,
        })
        .collect()
}

/// Task `first`: the label says whether the first token is in the upper half; task `last`:
/// the same about the last token before the end token. Same inputs, different answers.
fn data(task: &str, n: usize, seed: u64) -> Vec<Example> {
    let mut rng = PetlRng::seed(seed);
    (0..n)
        .map(|_| {
            let len = 3 + rng.below(6);
            let mut ids: Vec<u32> = (0..len).map(|_| 10 + rng.below(50) as u32).collect();
            ids.push(1);
            let probe = if task == "first" {
                ids[0]
            } else {
                ids[len - 1]
            };
            let label = u32::from(probe >= 35);
            Example {
                ids,
                label: label as f32,
                target_ids: vec![5 + label, 1],
            }
        })
        .collect()
}

fn model() -> T5TextToText {
    let dev = Device::Cpu;
    let ckpt = T5Checkpoint::random(tiny_config(), 0.3, &mut PetlRng::seed(1), &dev).unwrap();
    let inner = t5::build(
        Variant::ProAdapter,
        &ckpt,
        &["first", "last"],
        &NumericOverrides {
            reduction: Some(2),
            ..Default::default()
        },
        &VarMap::new(),
        &mut PetlRng::seed(2),
    )
    .unwrap();
    let tasks: BTreeMap<String, TextTask> = ["first", "last"]
        .into_iter()
        .map(|t| {
            (
                t.to_string(),
                TextTask {
                    kind: CLASSES,
                    labels: labels(),
                },
            )
        })
        .collect();
    T5TextToText::new(inner, tasks).unwrap()
}

#[test]
fn multi_task_t5_trains_evaluates_by_generation_and_switches_tasks() {
    let mut model = model();
    // every trainable tensor comes from the PETL state: one adapter, task and block masks
    let groups = model.task_optimizer_groups(&GroupHyper::default());
    assert!(groups[0]
        .params
        .iter()
        .any(|(n, _)| n == "mask.task.first.down"));
    assert!(groups[0].params.iter().any(|(n, _)| n == "mask.dec.1.up"));
    let cfg = TrainConfig {
        epochs: 6,
        batch_size: 16,
        max_len: 16,
        lr: 3e-3,
        mask_lr: 3e-2,
        weight_decay: 0.0,
        mask_weight_decay: 0.0,
        warmup_ratio: 0.1,
        progress: false,
        ..Default::default()
    };
    let mut first_losses = Vec::new();
    for task in ["first", "last"] {
        let train_set = data(task, 192, 3);
        let eval_set = data(task, 64, 4);
        let logs = train(
            &mut model,
            &TrainData {
                train: &train_set,
                eval: &eval_set,
                task,
                glue: None,
            },
            &cfg,
            &mut Silent,
        )
        .unwrap();
        let (a, b) = (logs[0].train_loss, logs[logs.len() - 1].train_loss);
        assert!(b < a, "{task}: loss {a} -> {b}");
        // evaluation by greedy generation gives a real accuracy
        let acc = logs
            .last()
            .unwrap()
            .eval
            .as_ref()
            .unwrap()
            .accuracy
            .unwrap();
        assert!((0.0..=100.0).contains(&acc), "{task}: {acc}");
        first_losses.push(a);
    }
    // switching the task swaps masks only: the same inputs give other outputs
    model.materialize_for_inference().unwrap();
    let probe = data("first", 32, 9);
    let refs: Vec<&Example> = probe.iter().collect();
    let first = model.collate(&refs, 16, "first").unwrap();
    let last = model.collate(&refs, 16, "last").unwrap();
    let mut eval = ForwardMode::Eval;
    let l1 = model
        .loss(&first, &mut eval)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let l2 = model
        .loss(&last, &mut eval)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_ne!(l1, l2, "task masks must change the outputs");
    let how = |task| EvalSettings {
        batch_size: 16,
        max_len: 16,
        task,
        glue: None,
    };
    let m = evaluate(&model, &probe, &how("first")).unwrap();
    assert!(m.accuracy.is_some());
    // an unknown task is a clear error
    let e = model
        .collate(&refs, 16, "second")
        .and_then(|b| model.predict(&b));
    assert!(e.unwrap_err().to_string().contains("second"));
}

#[test]
fn an_unknown_task_or_missing_targets_are_refused() {
    let dev = Device::Cpu;
    let ckpt = T5Checkpoint::random(tiny_config(), 0.3, &mut PetlRng::seed(1), &dev).unwrap();
    let inner = t5::build(
        Variant::ProAdapter,
        &ckpt,
        &["first"],
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(2),
    )
    .unwrap();
    let tasks: BTreeMap<String, TextTask> = [(
        "other".to_string(),
        TextTask {
            kind: CLASSES,
            labels: labels(),
        },
    )]
    .into();
    let e = T5TextToText::new(inner, tasks).err().unwrap().to_string();
    assert!(e.contains("task `other` has no masks"), "{e}");
    let m = model();
    let no_targets = [Example::new(vec![10, 11, 1], 0.0)];
    let refs: Vec<&Example> = no_targets.iter().collect();
    let e = m.collate(&refs, 8, "first").unwrap_err().to_string();
    assert!(e.contains("target ids"), "{e}");
}
