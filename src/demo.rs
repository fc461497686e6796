//! The embedded default job: ProAdapter on a tiny RoBERTa built in-process, trained on a
//! synthetic majority task, then compared with the unshared adapter baseline. Needs no files.

use anyhow::Result;
use candle_core::Device;
use candle_nn::VarMap;
use propetl_models::roberta::{self, Checkpoint, RobertaConfig};
use propetl_runtime::{Example, NumericOverrides, PetlRng, StorageReport, TaskKind, Variant};

use crate::train::{
    evaluate, train, EpochLog, EvalSettings, TrainConfig, TrainData, TrainObserver,
};

/// A tiny RoBERTa shape: 2 layers, hidden 64, 4 heads, FFN 128, vocabulary 100.
pub fn tiny_config() -> RobertaConfig {
    RobertaConfig {
        vocab_size: 100,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        max_position_embeddings: 66,
        ..RobertaConfig::roberta_base()
    }
}

/// Synthetic task: tokens come from two halves of the vocabulary; the label says which half
/// holds the majority. `<s>` = 0, `<pad>` = 1, `</s>` = 2.
pub fn majority_task(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = PetlRng::seed(seed);
    (0..n)
        .map(|_| {
            let len = 6 + rng.below(20);
            let p_low = if rng.uniform01() < 0.5 { 0.3 } else { 0.7 };
            let mut ids = vec![0u32];
            let mut low = 0;
            for _ in 0..len {
                let is_low = rng.uniform01() < p_low;
                low += usize::from(is_low);
                ids.push(if is_low {
                    5 + rng.below(45) as u32
                } else {
                    50 + rng.below(50) as u32
                });
            }
            ids.push(2);
            Example::new(ids, if 2 * low > len { 1.0 } else { 0.0 })
        })
        .collect()
}

/// Result of one demo run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoRun {
    /// Variant.
    pub variant: String,
    /// Epoch logs.
    pub epochs: Vec<EpochLog>,
    /// Accuracy on the held-out test split.
    pub test_accuracy: f64,
    /// Storage report.
    pub storage: StorageReport,
}

/// Train one variant on the synthetic task; `observer` sees the progress.
pub fn run_variant(
    variant: Variant,
    cfg: &TrainConfig,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<DemoRun> {
    let ckpt = Checkpoint::random(tiny_config(), 0.05, &mut PetlRng::seed(7), device)?;
    let data = majority_task(1200, cfg.seed);
    let (train_set, rest) = data.split_at(800);
    let (eval_set, test_set) = rest.split_at(200);
    let overrides = NumericOverrides {
        reduction: matches!(variant, Variant::ProAdapter | Variant::Adapter).then_some(4),
        ..Default::default()
    };
    let mut model = roberta::build(
        variant,
        &ckpt,
        TaskKind::Classification { num_labels: 2 },
        &overrides,
        &VarMap::new(),
        &mut PetlRng::seed(cfg.seed),
    )?;
    let data = TrainData {
        train: train_set,
        eval: eval_set,
        task: "default",
        glue: None,
    };
    let epochs = train(model.as_mut(), &data, cfg, observer)?;
    model.materialize_for_inference()?;
    let how = EvalSettings {
        batch_size: 64,
        max_len: cfg.max_len,
        task: "default",
        glue: None,
    };
    let test_accuracy = evaluate(model.as_ref(), test_set, &how)?.selection;
    Ok(DemoRun {
        variant: variant.name().into(),
        epochs,
        test_accuracy,
        storage: model.storage()?,
    })
}

/// The demo's training settings: `epochs` epochs, batch 32, at most 64 tokens, 10% warmup.
pub fn demo_config(epochs: usize, seed: u64, lr: f64, mask_lr: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        max_len: 64,
        lr,
        mask_lr,
        warmup_ratio: 0.1,
        seed,
        progress: false,
        ..Default::default()
    }
}
