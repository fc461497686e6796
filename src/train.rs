//! One trainer for every [`TaskModel`]: per-group AdamW (mask lr separate), linear warmup +
//! decay, gradient clipping, evaluation every epoch, and an early stop with a clear error on a
//! non-finite loss. Reproducible from a seed (dropout and shuffling draw from [`PetlRng`]).
//!
//! The library prints nothing: progress goes to a [`TrainObserver`] (the CLI draws bars or
//! logs lines with it).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use propetl_runtime::{
    clip_grad_norm, AdamW, Example, ForwardMode, GroupHyper, PetlError, PetlRng, Schedule,
    TaskModel,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{MultiTaskProgress, Progress, TrainCheckpoint};
use crate::data::GlueTask;
use crate::metrics::{task_metrics, Metrics};

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
    /// Linear warmup over this many steps instead of `warmup_ratio` (method page §5: 500).
    pub warmup_steps: Option<usize>,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Seed of init, dropout and shuffling.
    pub seed: u64,
    /// Show progress (bars on a terminal, log lines otherwise).
    pub progress: bool,
    /// Also checkpoint every this many optimizer steps (a checkpoint is always written at the
    /// end of every epoch when the caller asks for checkpoints).
    pub checkpoint_every_steps: Option<usize>,
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
            warmup_steps: None,
            max_grad_norm: 1.0,
            seed: 42,
            progress: true,
            checkpoint_every_steps: None,
        }
    }
}

impl TrainConfig {
    /// Check every value against its allowed range; the error names the key and the range.
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bail!("train.{key} must be a finite number > 0, got {v}")
            }
        };
        positive("lr", self.lr)?;
        positive("mask_lr", self.mask_lr)?;
        positive("max_grad_norm", self.max_grad_norm)?;
        for (key, v) in [
            ("weight_decay", self.weight_decay),
            ("mask_weight_decay", self.mask_weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("train.{key} must be a finite number >= 0, got {v}");
            }
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            bail!(
                "train.warmup_ratio must lie in [0, 1], got {}",
                self.warmup_ratio
            );
        }
        for (key, v) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("max_len", self.max_len),
        ] {
            if v == 0 {
                bail!("train.{key} must be at least 1, got 0");
            }
        }
        if self.max_len < 2 {
            bail!(
                "train.max_len must be at least 2 (a sequence keeps its start and end tokens), got {}",
                self.max_len
            );
        }
        if self.checkpoint_every_steps == Some(0) {
            bail!("train.checkpoint_every_steps must be at least 1 when given, got 0");
        }
        Ok(())
    }

    /// The learning-rate schedule of a run of `total_steps`: linear warmup (`warmup_steps`,
    /// else `warmup_ratio` of the steps, capped at the total), then linear decay to 0.
    pub fn schedule(&self, total_steps: usize) -> Schedule {
        match self.warmup_steps {
            Some(w) => Schedule::LinearWarmupDecay {
                warmup_steps: w.min(total_steps),
                total_steps,
            },
            None => Schedule::warmup_ratio(self.warmup_ratio, total_steps),
        }
    }

    /// The learning rates and weight decays of the three optimizer groups.
    pub fn group_hyper(&self) -> GroupHyper {
        GroupHyper {
            lr: self.lr,
            mask_lr: self.mask_lr,
            weight_decay: self.weight_decay,
            mask_weight_decay: self.mask_weight_decay,
        }
    }
}

/// What happened in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Loss of each step of the epoch.
    pub step_losses: Vec<f64>,
    /// Metrics on the eval split (absent when there is none).
    pub eval: Option<Metrics>,
    /// Seconds spent in the epoch.
    pub seconds: f64,
    /// Training tokens per second (padded).
    pub tokens_per_s: f64,
}

impl EpochLog {
    /// The selection metric on the eval split (NaN without one).
    pub fn eval_metric(&self) -> f64 {
        self.eval.as_ref().map_or(f64::NAN, |m| m.selection)
    }
}

/// Sees the progress of training; every method defaults to doing nothing.
pub trait TrainObserver {
    /// Training starts: `total_steps` optimizer steps over `epochs` epochs.
    fn on_start(&mut self, total_steps: usize, epochs: usize) {
        let _ = (total_steps, epochs);
    }
    /// One optimizer step finished.
    fn on_step(&mut self, epoch: usize, step: usize, loss: f64, tokens_per_s: f64) {
        let _ = (epoch, step, loss, tokens_per_s);
    }
    /// One epoch finished, its evaluation included; the model is in its end-of-epoch state
    /// (e.g. to save the best epoch).
    fn on_epoch(&mut self, model: &dyn TaskModel, log: &EpochLog) -> Result<()> {
        let _ = (model, log);
        Ok(())
    }
    /// Whether the trainer should build checkpoints (at every epoch end, and every
    /// `checkpoint_every_steps` steps) and hand them to [`on_checkpoint`](Self::on_checkpoint).
    fn wants_checkpoints(&self) -> bool {
        false
    }
    /// A checkpoint to store (after [`on_epoch`](Self::on_epoch) at an epoch end).
    fn on_checkpoint(&mut self, model: &dyn TaskModel, checkpoint: TrainCheckpoint) -> Result<()> {
        let _ = (model, checkpoint);
        Ok(())
    }
    /// Training ended (successfully or not).
    fn on_finish(&mut self) {}
}

/// An observer that does nothing.
pub struct Silent;

impl TrainObserver for Silent {}

/// Predictions (class index, or the regression value) of a model on `data`, in input order.
/// Batches are formed by length (less padding).
pub fn predict_values(
    model: &dyn TaskModel,
    data: &[Example],
    batch_size: usize,
    max_len: usize,
    task: &str,
) -> Result<Vec<f32>> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data[i].ids.len());
    let mut out = vec![0f32; data.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().map(|&i| &data[i]).collect();
        let batch = model.collate(&refs, max_len, task)?;
        let preds = model.predict(&batch)?;
        for (&i, p) in chunk.iter().zip(preds) {
            out[i] = p.value();
        }
    }
    Ok(out)
}

/// How to evaluate: batch size, truncation, which task's masks, which metrics.
#[derive(Debug, Clone, Copy)]
pub struct EvalSettings<'a> {
    /// Batch size.
    pub batch_size: usize,
    /// Maximum sequence length.
    pub max_len: usize,
    /// The PETL task whose masks are used (`default` for single-task models).
    pub task: &'a str,
    /// The GLUE task, which picks the metrics (None: accuracy or correlations).
    pub glue: Option<GlueTask>,
}

/// The task metrics of a model on `data`.
pub fn evaluate(model: &dyn TaskModel, data: &[Example], how: &EvalSettings) -> Result<Metrics> {
    if data.is_empty() {
        bail!("cannot evaluate on an empty split");
    }
    let preds = predict_values(model, data, how.batch_size, how.max_len, how.task)?;
    let gold: Vec<f32> = data.iter().map(|e| e.label).collect();
    Ok(task_metrics(
        how.glue,
        model.task_kind_of(how.task).is_regression(),
        &preds,
        &gold,
    ))
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
    /// Evaluated after every epoch (model selection); may be empty.
    pub eval: &'a [Example],
    /// The PETL task whose masks are trained (`default` for single-task models).
    pub task: &'a str,
    /// The GLUE task, which picks the metrics (None: accuracy or correlations).
    pub glue: Option<GlueTask>,
}

/// Train `model` on `data.train`, evaluating on `data.eval` after every epoch. Every
/// trainable tensor comes from the model ([`TaskModel::trainables`]); optimizer groups from
/// their roles. Returns the per-epoch logs.
pub fn train(
    model: &mut dyn TaskModel,
    data: &TrainData,
    cfg: &TrainConfig,
    observer: &mut dyn TrainObserver,
) -> Result<Vec<EpochLog>> {
    train_from(model, data, cfg, observer, None)
}

/// One optimizer step on `batch`: the training loss (dropout from `rng`), a non-finite loss
/// stops with the step number, backward, clipping, AdamW, then every trainable tensor must be
/// finite. Returns the loss.
fn optimizer_step(
    model: &dyn TaskModel,
    batch: &propetl_runtime::Batch,
    opt: &mut AdamW,
    all_vars: &[candle_core::Var],
    cfg: &TrainConfig,
    rng: &mut PetlRng,
) -> Result<f32> {
    let loss = model.loss(batch, &mut ForwardMode::Train(rng))?;
    let l = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    if !l.is_finite() {
        return Err(PetlError::NonFiniteLoss(l, opt.steps_taken()).into());
    }
    let mut grads = loss.backward()?;
    clip_grad_norm(&mut grads, all_vars, cfg.max_grad_norm)?;
    opt.step(&grads)?;
    check_finite(model, opt.steps_taken())?;
    Ok(l)
}

/// Error naming the first trainable tensor holding NaN or infinity.
pub fn check_finite(model: &dyn TaskModel, step: usize) -> Result<()> {
    for t in model.trainables() {
        let ok = t
            .var
            .as_tensor()
            .to_dtype(DType::F32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?
            .is_finite();
        if !ok {
            bail!(
                "tensor `{}` holds NaN or infinite values after optimizer step {step}; lower the learning rate or clip gradients (train.max_grad_norm)",
                t.name
            );
        }
    }
    Ok(())
}

/// The trainable tensors of `model` by name: copies (a variable is updated in place, so a
/// snapshot must not share its storage).
pub fn trainable_values(model: &dyn TaskModel) -> Result<BTreeMap<String, Tensor>> {
    model
        .trainables()
        .into_iter()
        .map(|t| Ok((t.name, t.var.as_tensor().detach().copy()?)))
        .collect()
}

/// Set the trainable tensors of `model` from `values` (all of them, with their shapes).
pub fn set_trainable_values(
    model: &dyn TaskModel,
    values: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let trainables = model.trainables();
    if values.len() != trainables.len() {
        bail!(
            "checkpoint holds {} trainable tensors, the model has {}",
            values.len(),
            trainables.len()
        );
    }
    for t in trainables {
        let v = values
            .get(&t.name)
            .with_context(|| format!("checkpoint has no tensor `{}`", t.name))?;
        if v.dims() != t.var.dims() {
            bail!(
                "checkpoint tensor `{}` has shape {:?}, the model's is {:?}",
                t.name,
                v.dims(),
                t.var.dims()
            );
        }
        t.var.set(v)?;
    }
    Ok(())
}

/// [`train`], continuing from a checkpoint when `resume` is given (the model's trainable
/// tensors, the optimizer, the RNG, the epoch and the position in it are restored, so the run
/// ends bit-identical to an uninterrupted one).
pub fn train_from(
    model: &mut dyn TaskModel,
    data: &TrainData,
    cfg: &TrainConfig,
    observer: &mut dyn TrainObserver,
    resume: Option<TrainCheckpoint>,
) -> Result<Vec<EpochLog>> {
    let TrainData {
        train,
        eval,
        task,
        glue,
    } = *data;
    if train.is_empty() {
        bail!("the training set is empty");
    }
    cfg.validate()?;
    let groups = model.task_optimizer_groups(&cfg.group_hyper());
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let mut opt = AdamW::new(groups, cfg.schedule(total));
    let all_vars = opt.vars();
    let mut rng = PetlRng::seed(cfg.seed);
    let mut logs = Vec::new();
    let mut resumed: Option<Progress> = None;
    if let Some(ckpt) = resume {
        set_trainable_values(&*model, &ckpt.params)?;
        opt.set_state(ckpt.optimizer_steps, ckpt.moments)?;
        rng = PetlRng::from_state(&ckpt.progress.rng).map_err(anyhow::Error::msg)?;
        logs = ckpt.progress.logs.clone();
        resumed = Some(ckpt.progress);
    }
    let start_epoch = logs.len() + 1;
    let checkpoints = observer.wants_checkpoints();
    observer.on_start(total, cfg.epochs);
    let result = (|| -> Result<()> {
        for epoch in start_epoch..=cfg.epochs {
            let start = std::time::Instant::now();
            let (batches, first, mut step_losses, mut tokens) = match resumed.take() {
                Some(p) if !p.batches.is_empty() => {
                    (p.batches, p.position, p.step_losses, p.tokens)
                }
                _ => (
                    length_bucketed_batches(train, cfg.batch_size, &mut rng),
                    0,
                    Vec::with_capacity(steps_per_epoch),
                    0,
                ),
            };
            for (i, chunk) in batches.iter().enumerate().skip(first) {
                let refs: Vec<&Example> = chunk.iter().map(|&i| &train[i]).collect();
                let batch = model.collate(&refs, cfg.max_len, task)?;
                tokens += batch.input_ids.elem_count();
                let l = optimizer_step(&*model, &batch, &mut opt, &all_vars, cfg, &mut rng)?;
                step_losses.push(l as f64);
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                observer.on_step(epoch, opt.steps_taken(), l as f64, tokens as f64 / secs);
                let done = i + 1;
                if checkpoints
                    && done < batches.len()
                    && cfg
                        .checkpoint_every_steps
                        .is_some_and(|n| opt.steps_taken().is_multiple_of(n))
                {
                    let progress = Progress {
                        epochs_done: epoch - 1,
                        batches: batches.clone(),
                        position: done,
                        step_losses: step_losses.clone(),
                        tokens,
                        rng: rng.state(),
                        logs: logs.clone(),
                        multi_task: None,
                    };
                    observer.on_checkpoint(&*model, snapshot(&*model, &opt, progress)?)?;
                }
            }
            let train_secs = start.elapsed().as_secs_f64();
            let train_loss = step_losses.iter().sum::<f64>() / step_losses.len().max(1) as f64;
            let eval_metrics = if eval.is_empty() {
                None
            } else {
                let how = EvalSettings {
                    batch_size: cfg.batch_size,
                    max_len: cfg.max_len,
                    task,
                    glue,
                };
                Some(evaluate(&*model, eval, &how)?)
            };
            let log = EpochLog {
                epoch,
                train_loss,
                step_losses,
                eval: eval_metrics,
                seconds: start.elapsed().as_secs_f64(),
                tokens_per_s: tokens as f64 / train_secs.max(1e-9),
            };
            observer.on_epoch(&*model, &log)?;
            logs.push(log);
            if checkpoints {
                let progress = Progress {
                    epochs_done: epoch,
                    batches: Vec::new(),
                    position: 0,
                    step_losses: Vec::new(),
                    tokens: 0,
                    rng: rng.state(),
                    logs: logs.clone(),
                    multi_task: None,
                };
                observer.on_checkpoint(&*model, snapshot(&*model, &opt, progress)?)?;
            }
        }
        Ok(())
    })();
    observer.on_finish();
    result?;
    Ok(logs)
}

fn snapshot(model: &dyn TaskModel, opt: &AdamW, progress: Progress) -> Result<TrainCheckpoint> {
    let (optimizer_steps, moments) = opt.state()?;
    Ok(TrainCheckpoint {
        params: trainable_values(model)?,
        moments,
        optimizer_steps,
        progress,
        extra_tensors: BTreeMap::new(),
        extra: serde_json::Value::Null,
    })
}

/// One task of a multi-task run.
#[derive(Debug, Clone, Copy)]
pub struct TaskSplit<'a> {
    /// The task name (whose masks its batches use).
    pub task: &'a str,
    /// Training examples.
    pub train: &'a [Example],
    /// Evaluated after every epoch; may be empty.
    pub eval: &'a [Example],
    /// The GLUE task, which picks the metrics.
    pub glue: Option<GlueTask>,
}

/// One epoch of a multi-task run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiTaskEpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss of each task's batches.
    pub train_loss: BTreeMap<String, f64>,
    /// Batches drawn from each task.
    pub batches: BTreeMap<String, usize>,
    /// Eval metrics of each task with an eval split.
    pub eval: BTreeMap<String, Metrics>,
    /// Seconds spent in the epoch.
    pub seconds: f64,
}

/// Sampling probabilities of tasks with `sizes` examples at `temperature` (method page §5):
/// `p_i ∝ (n_i / N)^(1/T)`; T = 1 samples by size, large T uniformly.
pub fn temperature_probabilities(sizes: &[usize], temperature: f64) -> Result<Vec<f64>> {
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!("the sampling temperature must be a finite number > 0, got {temperature}");
    }
    let total: usize = sizes.iter().sum();
    if total == 0 || sizes.contains(&0) {
        bail!("every task needs training examples (sizes {sizes:?})");
    }
    let weights: Vec<f64> = sizes
        .iter()
        .map(|&n| (n as f64 / total as f64).powf(1.0 / temperature))
        .collect();
    let sum: f64 = weights.iter().sum();
    Ok(weights.into_iter().map(|w| w / sum).collect())
}

/// A metric for averaging over tasks: NaN (undefined) counts as 0.
pub fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// Multi-task training (method page §5): every step trains on one task's batch, the task drawn
/// with [`temperature_probabilities`]; an epoch has as many steps as all tasks have batches;
/// each task's batches come from its own length-bucketed shuffle, refilled when used up. After
/// every epoch each task with an eval split is evaluated with its own masks. The observer sees
/// every step and an aggregate [`EpochLog`] (mean loss; selection = mean of the tasks', an
/// undefined one counting as 0). Reproducible from the seed.
pub fn train_multi_task(
    model: &mut dyn TaskModel,
    tasks: &[TaskSplit],
    temperature: f64,
    cfg: &TrainConfig,
    observer: &mut dyn TrainObserver,
) -> Result<Vec<MultiTaskEpochLog>> {
    train_multi_task_from(model, tasks, temperature, cfg, observer, None)
}

/// [`train_multi_task`], continuing from a checkpoint when `resume` is given (trainables,
/// optimizer, RNG, every task's batch queue, the epoch and the step in it are restored, so
/// the run ends bit-identical to an uninterrupted one). Checkpoints go to the observer at
/// every epoch end and every `checkpoint_every_steps` steps when it asks for them.
pub fn train_multi_task_from(
    model: &mut dyn TaskModel,
    tasks: &[TaskSplit],
    temperature: f64,
    cfg: &TrainConfig,
    observer: &mut dyn TrainObserver,
    resume: Option<TrainCheckpoint>,
) -> Result<Vec<MultiTaskEpochLog>> {
    cfg.validate()?;
    if tasks.is_empty() {
        bail!("multi-task training needs at least one task");
    }
    let sizes: Vec<usize> = tasks.iter().map(|t| t.train.len()).collect();
    let probs = temperature_probabilities(&sizes, temperature)?;
    let steps_per_epoch: usize = sizes.iter().map(|n| n.div_ceil(cfg.batch_size)).sum();
    let total = steps_per_epoch * cfg.epochs;
    let groups = model.task_optimizer_groups(&cfg.group_hyper());
    let mut opt = AdamW::new(groups, cfg.schedule(total));
    let all_vars = opt.vars();
    let mut rng = PetlRng::seed(cfg.seed);
    let mut queues: Vec<Vec<Vec<usize>>> = vec![Vec::new(); tasks.len()];
    let mut logs: Vec<MultiTaskEpochLog> = Vec::new();
    let mut aggregate_logs: Vec<EpochLog> = Vec::new();
    // the epoch in progress when resuming mid-epoch: (steps taken, per-task losses, tokens)
    let mut in_progress: Option<(usize, Vec<Vec<f64>>, usize)> = None;
    if let Some(ckpt) = resume {
        let p = ckpt.progress;
        let multi = p
            .multi_task
            .context("the checkpoint is not a multi-task one")?;
        if multi.queues.len() != tasks.len() {
            bail!(
                "the checkpoint has {} tasks, the run {}",
                multi.queues.len(),
                tasks.len()
            );
        }
        set_trainable_values(&*model, &ckpt.params)?;
        opt.set_state(ckpt.optimizer_steps, ckpt.moments)?;
        rng = PetlRng::from_state(&p.rng).map_err(anyhow::Error::msg)?;
        queues = multi.queues;
        logs = multi.logs;
        aggregate_logs = p.logs;
        if p.position > 0 {
            in_progress = Some((p.position, multi.losses, p.tokens));
        }
    }
    let checkpoints = observer.wants_checkpoints();
    let start_epoch = logs.len() + 1;
    observer.on_start(total, cfg.epochs);
    let result = (|| -> Result<()> {
        for epoch in start_epoch..=cfg.epochs {
            let start = std::time::Instant::now();
            let (first, mut losses, mut tokens) = in_progress
                .take()
                .unwrap_or_else(|| (0, vec![Vec::new(); tasks.len()], 0));
            for step in first..steps_per_epoch {
                let r = rng.uniform01();
                let mut acc = 0.0;
                let i = probs
                    .iter()
                    .position(|p| {
                        acc += p;
                        r < acc
                    })
                    .unwrap_or(tasks.len() - 1);
                if queues[i].is_empty() {
                    queues[i] = length_bucketed_batches(tasks[i].train, cfg.batch_size, &mut rng);
                    queues[i].reverse();
                }
                let chunk = queues[i].pop().expect("refilled");
                let refs: Vec<&Example> = chunk.iter().map(|&j| &tasks[i].train[j]).collect();
                let batch = model.collate(&refs, cfg.max_len, tasks[i].task)?;
                tokens += batch.input_ids.elem_count();
                let l = optimizer_step(&*model, &batch, &mut opt, &all_vars, cfg, &mut rng)?;
                losses[i].push(l as f64);
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                observer.on_step(epoch, opt.steps_taken(), l as f64, tokens as f64 / secs);
                let done = step + 1;
                if checkpoints
                    && done < steps_per_epoch
                    && cfg
                        .checkpoint_every_steps
                        .is_some_and(|n| opt.steps_taken().is_multiple_of(n))
                {
                    let progress = Progress {
                        epochs_done: epoch - 1,
                        batches: Vec::new(),
                        position: done,
                        step_losses: Vec::new(),
                        tokens,
                        rng: rng.state(),
                        logs: aggregate_logs.clone(),
                        multi_task: Some(MultiTaskProgress {
                            queues: queues.clone(),
                            losses: losses.clone(),
                            logs: logs.clone(),
                        }),
                    };
                    observer.on_checkpoint(&*model, snapshot(&*model, &opt, progress)?)?;
                }
            }
            let mut eval = BTreeMap::new();
            for t in tasks.iter().filter(|t| !t.eval.is_empty()) {
                let how = EvalSettings {
                    batch_size: cfg.batch_size,
                    max_len: cfg.max_len,
                    task: t.task,
                    glue: t.glue,
                };
                eval.insert(t.task.to_string(), evaluate(&*model, t.eval, &how)?);
            }
            let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
            let all: Vec<f64> = losses.iter().flatten().copied().collect();
            // a task whose metric is undefined (e.g. the correlation of constant predictions,
            // common in early epochs) counts as 0, so it cannot make every epoch's mean NaN
            let selections: Vec<f64> = eval.values().map(|m| finite_or_zero(m.selection)).collect();
            let log = MultiTaskEpochLog {
                epoch,
                train_loss: tasks
                    .iter()
                    .zip(&losses)
                    .filter(|(_, l)| !l.is_empty())
                    .map(|(t, l)| (t.task.to_string(), mean(l)))
                    .collect(),
                batches: tasks
                    .iter()
                    .zip(&losses)
                    .map(|(t, l)| (t.task.to_string(), l.len()))
                    .collect(),
                eval,
                seconds: start.elapsed().as_secs_f64(),
            };
            let aggregate = EpochLog {
                epoch,
                train_loss: mean(&all),
                step_losses: all,
                eval: (!selections.is_empty()).then(|| Metrics {
                    selection: mean(&selections),
                    ..Default::default()
                }),
                seconds: log.seconds,
                tokens_per_s: tokens as f64 / log.seconds.max(1e-9),
            };
            observer.on_epoch(&*model, &aggregate)?;
            aggregate_logs.push(aggregate);
            logs.push(log);
            if checkpoints {
                let progress = Progress {
                    epochs_done: epoch,
                    batches: Vec::new(),
                    position: 0,
                    step_losses: Vec::new(),
                    tokens: 0,
                    rng: rng.state(),
                    logs: aggregate_logs.clone(),
                    multi_task: Some(MultiTaskProgress {
                        queues: queues.clone(),
                        losses: vec![Vec::new(); tasks.len()],
                        logs: logs.clone(),
                    }),
                };
                observer.on_checkpoint(&*model, snapshot(&*model, &opt, progress)?)?;
            }
        }
        Ok(())
    })();
    observer.on_finish();
    result?;
    Ok(logs)
}

#[cfg(test)]
mod multi_task_tests {
    use super::*;

    #[test]
    fn temperature_flattens_task_sizes() {
        let p1 = temperature_probabilities(&[900, 100], 1.0).unwrap();
        assert!((p1[0] - 0.9).abs() < 1e-12);
        let p10 = temperature_probabilities(&[900, 100], 10.0).unwrap();
        // (0.9^0.1, 0.1^0.1) normalized
        let (a, b) = (0.9f64.powf(0.1), 0.1f64.powf(0.1));
        assert!((p10[0] - a / (a + b)).abs() < 1e-12);
        assert!(p10[0] < 0.6 && p10[1] > 0.4);
        assert!(temperature_probabilities(&[1, 0], 10.0).is_err());
        assert!(temperature_probabilities(&[1, 1], 0.0).is_err());
    }
}
