//! The task-model interface: what every trainable model gives the trainer, evaluation and the
//! run directory — a batch in, a loss out; predictions; the PETL state (through
//! [`ProPetlModel`]); the extra trainable tensors (heads).
//!
//! RoBERTa classification/regression implements it in `propetl-models`; a user's own
//! `#[propetl]` struct implements it to train with `propetl::train` (see
//! `examples/custom_transformer.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};
use crate::io::Manifest;
use crate::model::ProPetlModel;
use crate::ops;
use crate::optim::{GroupHyper, ParamGroup, Trainable};
use crate::rng::PetlRng;
use crate::storage::StorageReport;

/// One example: token ids (with special tokens) and a label (class index, or a score for
/// regression); text-to-text models also train on the label's target token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Class index or regression target.
    pub label: f32,
    /// Target token ids of text-to-text models (the label as text, with its end token);
    /// empty for classification heads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_ids: Vec<u32>,
}

impl Example {
    /// An example for a classification or regression head.
    pub fn new(ids: Vec<u32>, label: f32) -> Self {
        Self {
            ids,
            label,
            target_ids: Vec::new(),
        }
    }
}

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TaskKind {
    /// One of `num_labels` classes (cross-entropy).
    Classification {
        /// Number of classes.
        num_labels: usize,
    },
    /// A real-valued score (mean squared error).
    Regression,
}

impl TaskKind {
    /// Whether the task is regression.
    pub fn is_regression(&self) -> bool {
        matches!(self, TaskKind::Regression)
    }
}

/// Forward-pass mode: training (dropout on, drawn from a seeded RNG) or evaluation.
#[derive(Debug)]
pub enum ForwardMode<'a> {
    /// Training: dropout masks come from this RNG, so a run is reproducible from its seed.
    Train(&'a mut PetlRng),
    /// Evaluation: no dropout.
    Eval,
}

impl ForwardMode<'_> {
    /// Inverted dropout with probability `p` in training mode; the identity in evaluation.
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> candle_core::Result<Tensor> {
        match self {
            ForwardMode::Train(rng) => ops::dropout(x, p, rng),
            ForwardMode::Eval => Ok(x.clone()),
        }
    }

    /// Whether this is training mode.
    pub fn is_train(&self) -> bool {
        matches!(self, ForwardMode::Train(_))
    }
}

/// A collated batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids `[B, S]` (u32), padded.
    pub input_ids: Tensor,
    /// `[B, S]`: 1 where a token is attended, 0 for padding.
    pub attention_mask: Tensor,
    /// Targets: `[B]` class indices (i64) or scores (f32); for text-to-text models the
    /// target token ids `[B, T]` (u32, padded with the pad id, which the loss ignores).
    pub labels: Tensor,
    /// Text-to-text models: the decoder inputs `[B, T]` (the targets shifted right behind the
    /// decoder start token); `None` for classification heads.
    pub decoder_input_ids: Option<Tensor>,
    /// The task whose masks the forward pass uses (`default` for single-task models).
    pub task: String,
}

/// One prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", untagged)]
pub enum Prediction {
    /// A class with the probability of every class.
    Class {
        /// The arg-max class.
        label: usize,
        /// Softmax probabilities.
        probs: Vec<f32>,
    },
    /// A regression score.
    Score {
        /// The predicted value.
        score: f32,
    },
}

impl Prediction {
    /// The value compared with a gold label: the class index or the score.
    pub fn value(&self) -> f32 {
        match self {
            Prediction::Class { label, .. } => *label as f32,
            Prediction::Score { score } => *score,
        }
    }
}

/// Pad `seqs` to the longest (at most `max_len`, keeping each sequence's last token — the
/// separator — on truncation) into `(input_ids [B,S] u32, attention_mask [B,S] u32)`.
pub fn pad_batch(
    seqs: &[&[u32]],
    max_len: usize,
    pad: u32,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    if seqs.is_empty() {
        return Err(PetlError::config("cannot collate an empty batch"));
    }
    if max_len == 0 {
        return Err(PetlError::config("max_len must be at least 1"));
    }
    let len = seqs
        .iter()
        .map(|s| s.len().min(max_len))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut ids = Vec::with_capacity(seqs.len() * len);
    let mut attention = Vec::with_capacity(seqs.len() * len);
    for s in seqs {
        let kept: Vec<u32> = if s.len() > max_len {
            let mut t = s[..max_len - 1].to_vec();
            t.push(*s.last().expect("non-empty"));
            t
        } else {
            s.to_vec()
        };
        let n = kept.len();
        ids.extend_from_slice(&kept);
        ids.extend(std::iter::repeat_n(pad, len - n));
        attention.extend(std::iter::repeat_n(1u32, n));
        attention.extend(std::iter::repeat_n(0u32, len - n));
    }
    Ok((
        Tensor::from_vec(ids, (seqs.len(), len), device)?,
        Tensor::from_vec(attention, (seqs.len(), len), device)?,
    ))
}

/// Collate examples of a classification or regression task into a [`Batch`].
pub fn collate_labeled(
    examples: &[&Example],
    kind: TaskKind,
    max_len: usize,
    pad: u32,
    task: &str,
    device: &Device,
) -> Result<Batch> {
    let seqs: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    let (input_ids, attention_mask) = pad_batch(&seqs, max_len, pad, device)?;
    let labels = match kind {
        TaskKind::Regression => Tensor::from_vec(
            examples.iter().map(|e| e.label).collect::<Vec<_>>(),
            examples.len(),
            device,
        )?,
        TaskKind::Classification { .. } => Tensor::from_vec(
            examples.iter().map(|e| e.label as i64).collect::<Vec<_>>(),
            examples.len(),
            device,
        )?,
    };
    Ok(Batch {
        input_ids,
        attention_mask,
        labels,
        decoder_input_ids: None,
        task: task.to_string(),
    })
}

/// The loss of `logits` against `labels` for a task kind: cross-entropy over classes, or MSE
/// for regression (`logits [B, 1]`).
pub fn task_loss(kind: TaskKind, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(match kind {
        TaskKind::Regression => ops::mse(
            &logits.squeeze(1)?,
            &labels.to_dtype(candle_core::DType::F32)?,
        )?,
        TaskKind::Classification { .. } => ops::cross_entropy(logits, labels)?,
    })
}

/// Predictions from `logits [B, C]` (softmax + arg-max), or `[B, 1]` scores for regression.
pub fn predictions_from_logits(kind: TaskKind, logits: &Tensor) -> Result<Vec<Prediction>> {
    Ok(match kind {
        TaskKind::Regression => logits
            .squeeze(1)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|score| Prediction::Score { score })
            .collect(),
        TaskKind::Classification { .. } => ops::softmax_last_dim(logits)?
            .to_vec2::<f32>()?
            .into_iter()
            .map(|probs| {
                let label = probs
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
                        if p > best.1 {
                            (i, p)
                        } else {
                            best
                        }
                    })
                    .0;
                Prediction::Class { label, probs }
            })
            .collect(),
    })
}

/// What the trainer, evaluation and run directories need from a model. Object-safe; every
/// PETL operation comes from the [`ProPetlModel`] supertrait.
pub trait TaskModel: ProPetlModel {
    /// What the model predicts.
    fn task_kind(&self) -> TaskKind;

    /// What the model predicts for `task` (multi-task models differ per task).
    fn task_kind_of(&self, task: &str) -> TaskKind {
        let _ = task;
        self.task_kind()
    }

    /// Collate examples into a batch (the model knows its padding id) for `task`.
    fn collate(&self, examples: &[&Example], max_len: usize, task: &str) -> Result<Batch>;

    /// The scalar training loss of a batch; [`ForwardMode::Train`] enables dropout.
    fn loss(&self, batch: &Batch, mode: &mut ForwardMode) -> Result<Tensor>;

    /// Predictions for a batch (evaluation mode), in batch order.
    fn predict(&self, batch: &Batch) -> Result<Vec<Prediction>>;

    /// The raw outputs `[B, C]` (class logits, or `[B, 1]` regression scores) of a batch.
    /// Models whose outputs are not logits keep this default error.
    fn logits(&self, batch: &Batch, mode: &mut ForwardMode) -> Result<Tensor> {
        let _ = (batch, mode);
        Err(PetlError::config("this model does not expose logits"))
    }

    /// The last hidden state `[B, S, H]` of a batch (evaluation mode), for feature extraction
    /// and parity checks. Models that do not expose one keep this default error.
    fn hidden_states(&self, batch: &Batch) -> Result<Tensor> {
        let _ = batch;
        Err(PetlError::config(
            "this model does not expose its hidden states",
        ))
    }

    /// Trainable tensors outside the PETL state (heads), with their optimizer roles.
    fn head_trainables(&self) -> Vec<Trainable>;

    /// Backbone tensors that train, with their optimizer roles: empty for the PETL variants
    /// (the backbone is frozen), every backbone weight for full fine-tuning.
    fn backbone_trainables(&self) -> Vec<Trainable> {
        Vec::new()
    }

    /// Parameters of the frozen backbone (the denominator of the storage report).
    fn backbone_params(&self) -> usize;

    /// The device the model runs on.
    fn device(&self) -> &Device {
        self.petl().device()
    }

    /// Every trainable tensor: PETL state, heads and (full fine-tuning) the backbone.
    fn trainables(&self) -> Vec<Trainable> {
        let mut all = self.petl().trainables();
        all.extend(self.head_trainables());
        all.extend(self.backbone_trainables());
        all
    }

    /// The reference optimizer groups over [`trainables`](Self::trainables).
    fn task_optimizer_groups(&self, hyper: &GroupHyper) -> Vec<ParamGroup> {
        let mut outside = self.head_trainables();
        outside.extend(self.backbone_trainables());
        self.optimizer_groups(hyper, &outside)
    }

    /// The head tensors by name (detached copies, for saving).
    fn head_tensors(&self) -> BTreeMap<String, Tensor> {
        self.head_trainables()
            .into_iter()
            .map(|t| (t.name, t.var.as_tensor().detach()))
            .collect()
    }

    /// The storage report of this model (method page §6), heads included.
    fn storage(&self) -> Result<StorageReport> {
        let head: usize = self
            .head_trainables()
            .iter()
            .map(|t| t.var.elem_count())
            .sum();
        self.storage_report(self.backbone_params(), head)
    }

    /// Save the PETL state and the heads (atomically).
    fn save(&self, path: &Path) -> Result<Manifest> {
        self.save_petl(path, &self.head_tensors(), self.backbone_params())
    }

    /// Replace the PETL state and heads with a saved one and materialize it for inference.
    /// Every head tensor must be in the file with the shape this model has.
    fn restore(&mut self, path: &Path) -> Result<()> {
        let loaded = self.load_petl(path)?;
        let heads = self.head_trainables();
        let load_err = |kind| PetlError::Load {
            path: path.to_path_buf(),
            kind,
        };
        for t in &heads {
            let saved = loaded.extra.get(&t.name).ok_or_else(|| {
                load_err(crate::error::LoadErrorKind::MissingTensor(t.name.clone()))
            })?;
            if saved.dims() != t.var.dims() {
                return Err(PetlError::Shape {
                    name: format!("{} (another number of labels?)", t.name),
                    expected: t.var.dims().to_vec(),
                    found: saved.dims().to_vec(),
                });
            }
        }
        if let Some(extra) = loaded
            .extra
            .keys()
            .find(|k| !heads.iter().any(|t| &t.name == *k))
        {
            return Err(load_err(crate::error::LoadErrorKind::UnexpectedTensor(
                extra.clone(),
            )));
        }
        for t in &heads {
            t.var.set(&loaded.extra[&t.name])?;
        }
        *self.petl_mut() = loaded.state;
        self.materialize_for_inference()
    }
}
