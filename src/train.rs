//! A small trainer for the RoBERTa/BERT variants: per-group AdamW (mask lr separate),
//! linear warmup + decay, gradient clipping, evaluation every epoch, best-epoch selection, and
//! an early stop with a clear error on a non-finite loss. Reproducible from a seed (init,
//! dropout and shuffling all draw from [`PetlRng`]).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};
use propetl_models::roberta::RobertaPetl;
use propetl_runtime::{
    clip_grad_norm, reference_groups, AdamW, GroupHyper, PetlError, PetlRng, Schedule,
};
use serde::{Deserialize, Serialize};

use crate::data::GlueTask;

/// One example: token ids (with special tokens) and a label (class index, or a score for
/// regression).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Class index or regression target.
    pub label: f32,
}

/// Optimization settings (method page §4 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Maximum sequence length (longer inputs are truncated).
    pub max_len: usize,
    /// Learning rate of prototype weights and head.
    pub lr: f64,
    /// Learning rate of mask scores.
    pub mask_lr: f64,
    /// Weight decay of weights.
    pub weight_decay: f64,
    /// Weight decay of mask scores.
    pub mask_weight_decay: f64,
    /// Fraction of steps used for linear warmup.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Seed of init, dropout and shuffling.
    pub seed: u64,
    /// Show progress bars.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            max_len: 128,
            lr: 1e-4,
            mask_lr: 3e-3,
            weight_decay: 0.1,
            mask_weight_decay: 0.1,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            seed: 42,
            progress: true,
        }
    }
}

/// What happened in one epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Loss of each step of the epoch.
    pub step_losses: Vec<f64>,
    /// The selection metric on the eval split (×100).
    pub eval_metric: f64,
    /// Every eval metric (×100).
    pub eval: BTreeMap<String, f64>,
    /// Seconds spent in the epoch.
    pub seconds: f64,
    /// Training tokens per second (padded).
    pub tokens_per_s: f64,
}

/// Batch examples into `(ids, mask, labels)`: padded to the longest sequence (≤ `max_len`,
/// keeping the final separator on truncation).
pub fn collate(
    batch: &[&Example],
    max_len: usize,
    pad: u32,
    regression: bool,
    dev: &Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    let seqs: Vec<&[u32]> = batch.iter().map(|e| e.ids.as_slice()).collect();
    let (ids, mask) = propetl_models::tokenizer::pad_batch(&seqs, max_len, pad, dev)?;
    let labels = if regression {
        Tensor::from_vec(
            batch.iter().map(|e| e.label).collect::<Vec<_>>(),
            batch.len(),
            dev,
        )?
    } else {
        Tensor::from_vec(
            batch.iter().map(|e| e.label as i64).collect::<Vec<_>>(),
            batch.len(),
            dev,
        )?
    };
    Ok((ids, mask, labels))
}

/// Predictions (class index, or the regression value) of a model on `data`.
pub fn predict(
    model: &dyn RobertaPetl,
    data: &[Example],
    batch_size: usize,
    max_len: usize,
    pad: u32,
) -> Result<Vec<f32>> {
    let dev = model.state().device().clone();
    let regression = model.head().num_labels == 1;
    // batch by length (less padding), then put predictions back in input order
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data[i].ids.len());
    let mut out = vec![0f32; data.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().map(|&i| &data[i]).collect();
        let (ids, mask, _) = collate(&refs, max_len, pad, regression, &dev)?;
        let logits = model.logits(&ids, &mask, None)?;
        let preds: Vec<f32> = if regression {
            logits.squeeze(1)?.to_vec1::<f32>()?
        } else {
            logits
                .argmax(1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|x| x as f32)
                .collect()
        };
        for (&i, p) in chunk.iter().zip(preds) {
            out[i] = p;
        }
    }
    Ok(out)
}

/// The task metrics (×100) of a model on `data`, including `selection` (see
/// [`crate::metrics::task_metrics`]).
pub fn evaluate(
    model: &dyn RobertaPetl,
    data: &[Example],
    task: Option<GlueTask>,
    batch_size: usize,
    max_len: usize,
    pad: u32,
) -> Result<BTreeMap<String, f64>> {
    if data.is_empty() {
        bail!("cannot evaluate on an empty split");
    }
    let preds = predict(model, data, batch_size, max_len, pad)?;
    let gold: Vec<f32> = data.iter().map(|e| e.label).collect();
    Ok(crate::metrics::task_metrics(
        task,
        model.head().num_labels == 1,
        &preds,
        &gold,
    ))
}

/// The selection metric (accuracy, MCC, combined score or correlation; ×100) on `data`.
pub fn metric(
    model: &dyn RobertaPetl,
    data: &[Example],
    batch_size: usize,
    max_len: usize,
    pad: u32,
) -> Result<f64> {
    Ok(evaluate(model, data, None, batch_size, max_len, pad)?["selection"])
}

/// Shuffled batches of similar lengths: shuffle, sort windows of 50 batches by length, cut
/// into batches, shuffle the batches. Less padding, same randomness in expectation.
pub fn length_bucketed_batches(
    data: &[Example],
    batch_size: usize,
    rng: &mut PetlRng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    rng.shuffle(&mut order);
    let mut batches = Vec::with_capacity(data.len().div_ceil(batch_size));
    for window in order.chunks_mut(batch_size * 50) {
        window.sort_by_key(|&i| data[i].ids.len());
        batches.extend(window.chunks(batch_size).map(|c| c.to_vec()));
    }
    rng.shuffle(&mut batches);
    batches
}

/// The data of a training run.
#[derive(Debug, Clone, Copy)]
pub struct TrainData<'a> {
    /// Training examples.
    pub train: &'a [Example],
    /// Evaluated after every epoch (model selection).
    pub eval: &'a [Example],
    /// Padding token id.
    pub pad: u32,
    /// The GLUE task, which picks the metrics (None: accuracy or correlations).
    pub task: Option<GlueTask>,
}

/// Train `model` (whose trainable variables are all in `varmap`) on `data.train`, evaluating
/// on `data.eval` after every epoch. Returns the per-epoch log; `on_epoch` sees each entry
/// (e.g. to keep the best state).
pub fn train(
    model: &mut dyn RobertaPetl,
    varmap: &VarMap,
    data: &TrainData,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(&dyn RobertaPetl, &EpochLog) -> Result<()>,
) -> Result<Vec<EpochLog>> {
    let TrainData {
        train,
        eval,
        pad,
        task,
    } = *data;
    if train.is_empty() {
        bail!("the training set is empty");
    }
    let dev = model.state().device().clone();
    let regression = model.head().num_labels == 1;
    let hyper = GroupHyper {
        lr: cfg.lr,
        mask_lr: cfg.mask_lr,
        weight_decay: cfg.weight_decay,
        mask_weight_decay: cfg.mask_weight_decay,
    };
    let vars = varmap.data().lock().expect("varmap").clone();
    let groups = reference_groups(vars, &hyper);
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size.max(1));
    let total = steps_per_epoch * cfg.epochs;
    let mut opt = AdamW::new(groups, Schedule::warmup_ratio(cfg.warmup_ratio, total));
    let all_vars = opt.vars();
    let mut rng = PetlRng::seed(cfg.seed);
    let mut logs = Vec::new();
    let bar = if cfg.progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    for epoch in 1..=cfg.epochs {
        bar.set_prefix(format!("{epoch}/{}", cfg.epochs));
        let start = std::time::Instant::now();
        let batches = length_bucketed_batches(train, cfg.batch_size.max(1), &mut rng);
        let mut step_losses = Vec::with_capacity(steps_per_epoch);
        let mut tokens = 0usize;
        for chunk in &batches {
            let batch: Vec<&Example> = chunk.iter().map(|&i| &train[i]).collect();
            let (ids, mask, labels) = collate(&batch, cfg.max_len, pad, regression, &dev)?;
            tokens += ids.elem_count();
            let logits = model.logits(&ids, &mask, Some(&mut rng))?;
            let loss = model.loss(&logits, &labels)?;
            let l = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !l.is_finite() {
                bar.abandon();
                return Err(PetlError::NonFiniteLoss(l, opt.steps_taken()).into());
            }
            let mut grads = loss.backward()?;
            clip_grad_norm(&mut grads, &all_vars, cfg.max_grad_norm)?;
            opt.step(&grads)?;
            step_losses.push(l as f64);
            bar.inc(1);
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {l:.4}  {:.0} tok/s", tokens as f64 / secs));
        }
        let train_secs = start.elapsed().as_secs_f64();
        let train_loss = step_losses.iter().sum::<f64>() / step_losses.len().max(1) as f64;
        let eval_scores = if eval.is_empty() {
            BTreeMap::new()
        } else {
            evaluate(&*model, eval, task, cfg.batch_size, cfg.max_len, pad)?
        };
        let eval_metric = eval_scores.get("selection").copied().unwrap_or(f64::NAN);
        let log = EpochLog {
            epoch,
            train_loss,
            step_losses,
            eval_metric,
            eval: eval_scores,
            seconds: start.elapsed().as_secs_f64(),
            tokens_per_s: tokens as f64 / train_secs.max(1e-9),
        };
        tracing::info!(epoch, train_loss, eval_metric, "epoch done");
        on_epoch(&*model, &log)?;
        logs.push(log);
    }
    bar.finish_and_clear();
    Ok(logs)
}
