//! Multi-task ProPETL-T5 (method page §5) on the tiny T5 checkpoint and the synthetic GLUE
//! fixtures: one adapter for every encoder and decoder block and every task, a task mask per
//! task `or` a mask per block; GLUE as text-to-text (`sentence: …` → "1"; STS-B → "3.4"),
//! single-task batches drawn by temperature sampling (T = 10), label-smoothed summed loss, mask
//! lr 10× the weights'. Checks that every task's loss goes down and that switching the task
//! (masks only) changes the outputs.
//!
//! `cargo run --release --example pro_adapter_t5_multitask`

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{ensure, Result};
use candle_core::Device;
use candle_nn::VarMap;
use propetl::data::{t5_input, t5_target, GlueTask};
use propetl::models::t5::{self, text_to_text, T5Checkpoint, T5TextToText, T5Tokenizer, TextTask};
use propetl::prelude::*;
use propetl::runtime::Variant;
use propetl::train::{train_multi_task, Silent, TaskSplit};

const MAX_LEN: usize = 48;

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dev = Device::Cpu;
    let ckpt = T5Checkpoint::open(root.join("tests/fixtures/tiny-t5"), &dev)?;
    let tok = T5Tokenizer::from_file(
        &root.join("tests/fixtures/tiny-t5/tokenizer.json"),
        &ckpt.config,
    )?;
    let encode = |text: &str| tok.encode(text, 8);
    let glue = [GlueTask::Sst2, GlueTask::Rte, GlueTask::Stsb];
    let names: Vec<&str> = glue.iter().map(|t| t.name()).collect();

    // one adapter, task masks `or` block masks (the paper's T5ProAdapter, keep 0.3)
    let inner = t5::build(
        Variant::ProAdapter,
        &ckpt,
        &names,
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(42),
    )?;
    let mut text_tasks = BTreeMap::new();
    let mut data = Vec::new();
    for task in glue {
        let kind = match task.num_labels() {
            1 => TaskKind::Regression,
            n => TaskKind::Classification { num_labels: n },
        };
        let labels = match kind {
            TaskKind::Regression => text_to_text::score_targets(0.0, 5.0, &encode)?,
            TaskKind::Classification { num_labels } => {
                text_to_text::class_targets(num_labels, &encode)?
            }
        };
        text_tasks.insert(task.name().to_string(), TextTask { kind, labels });
        let splits = task.splits(&root.join("tests/fixtures/glue"), 42, false, false)?;
        let to_examples = |xs: &[propetl::data::TextExample]| -> Result<Vec<Example>> {
            xs.iter()
                .map(|x| {
                    Ok(Example {
                        ids: tok.encode(&t5_input(task, x), MAX_LEN)?,
                        label: x.label,
                        target_ids: encode(&t5_target(task, x.label))?,
                    })
                })
                .collect()
        };
        data.push((
            task,
            to_examples(&splits.train)?,
            to_examples(&splits.eval)?,
        ));
    }
    let mut model = T5TextToText::new(inner, text_tasks)?;
    println!("spec: {}", model.petl().config().describe());

    let splits: Vec<TaskSplit> = data
        .iter()
        .map(|(task, train, eval)| TaskSplit {
            task: task.name(),
            train,
            eval,
            glue: Some(*task),
        })
        .collect();
    let cfg = TrainConfig {
        epochs: 6,
        batch_size: 8,
        max_len: MAX_LEN,
        lr: 3e-3,
        mask_lr: 3e-2, // 10× the weights' (method page §5)
        weight_decay: 0.0,
        mask_weight_decay: 0.0,
        warmup_ratio: 0.1,
        max_grad_norm: 1.0,
        progress: false,
        ..Default::default()
    };
    let logs = train_multi_task(&mut model, &splits, 10.0, &cfg, &mut Silent)?;
    for log in &logs {
        let losses: Vec<String> = log
            .train_loss
            .iter()
            .map(|(t, l)| format!("{t} {l:.3} ({} batches)", log.batches[t]))
            .collect();
        println!("epoch {}: {}", log.epoch, losses.join(", "));
    }
    for task in &names {
        let first = logs.iter().find_map(|l| l.train_loss.get(*task)).copied();
        let last = logs
            .iter()
            .rev()
            .find_map(|l| l.train_loss.get(*task))
            .copied();
        let (Some(first), Some(last)) = (first, last) else {
            anyhow::bail!("task {task} was never sampled");
        };
        ensure!(
            last < first,
            "{task}: the loss did not go down ({first} -> {last})"
        );
        let eval = &logs.last().expect("epochs").eval[*task];
        println!(
            "{task}: loss {first:.3} -> {last:.3}; eval {}",
            eval.summary()
        );
    }

    // switching the task swaps masks only: same inputs, other outputs
    model.materialize_for_inference()?;
    let (_, _, sst2_eval) = &data[0];
    let refs: Vec<&Example> = sst2_eval.iter().take(8).collect();
    let mut losses = Vec::new();
    for task in &names[..2] {
        let batch = model.collate(&refs, MAX_LEN, task)?;
        losses.push(
            model
                .loss(&batch, &mut ForwardMode::Eval)?
                .to_scalar::<f32>()?,
        );
    }
    println!("same sst2 batch through the sst2 and rte masks: losses {losses:?}");
    ensure!(
        losses[0] != losses[1],
        "switching the task did not change the outputs"
    );
    println!("\n{}", model.storage()?.to_table());
    Ok(())
}
