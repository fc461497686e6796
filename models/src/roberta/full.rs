//! Full fine-tuning of a RoBERTa / BERT encoder (`full`, the paper's other reference row):
//! no PETL module; every backbone weight (the tensors of [`hf_tensors`]) is a trainable
//! `Var` under its Hugging Face name, next to the same classification head as the PETL
//! variants. Weights decay, biases and LayerNorm parameters do not (method page §4's groups).
//! A saved state is the whole fine-tuned backbone plus the head, as a checked weight file
//! (`propetl_runtime::weights`), so its storage is the backbone's.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use propetl_runtime::task::{collate_labeled, predictions_from_logits, task_loss};
use propetl_runtime::weights::{load_weights, save_weights};
use propetl_runtime::{
    Batch, Example, ForwardMode, Manifest, PetlContext, PetlRng, PetlState, Prediction,
    ProPetlModel, Role, StorageReport, TaskKind, TaskModel, Trainable,
};

use super::checkpoint::{hf_tensors, Checkpoint};
use super::config::RobertaConfig;
use super::head::ClassificationHead;
use super::layers::{encode, load_layers, Backbone, HiddenRows, RobertaLayer};
use crate::error::{ModelError, Result};

/// A RoBERTa / BERT encoder whose every weight trains, with a classification / regression
/// head (the `full` variant).
#[derive(Debug, Clone)]
pub struct RobertaFull {
    backbone: Backbone,
    layers: Vec<RobertaLayer>,
    /// Trainable backbone tensors, by Hugging Face name (with the checkpoint's prefix).
    weights: Vec<Trainable>,
    /// No PETL module: identity contexts, nothing to save.
    petl: PetlState,
    head: ClassificationHead,
}

impl RobertaFull {
    /// Copy every backbone tensor of `ckpt` into a trainable `Var` registered in `varmap`
    /// under its Hugging Face name, and create a head for `kind`.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        kind: TaskKind,
        varmap: &VarMap,
        rng: &mut PetlRng,
    ) -> Result<Self> {
        let config = &ckpt.config;
        let dev = ckpt.device();
        let source = ckpt.backbone();
        let mut tensors = HashMap::new();
        let mut weights = Vec::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for t in hf_tensors(config) {
                let value = crate::common::get(&source, &t.shape, &t.name)?;
                let var = Var::from_tensor(&value)?;
                let name = format!("{}{}", ckpt.prefix, t.name);
                // method page §4: biases and LayerNorm weights are not decayed
                let role = if t.name.ends_with(".bias") || t.name.contains("LayerNorm") {
                    Role::NoDecay
                } else {
                    Role::Decay
                };
                data.insert(name.clone(), var.clone());
                tensors.insert(name.clone(), var.as_tensor().clone());
                weights.push(Trainable::new(name, var, role));
            }
        }
        // the same loaders as the frozen variants, over the Vars' tensors: every layer
        // then computes with trainable weights (ops pick the differentiable kernels)
        let trainable = Checkpoint::from_tensors(config.clone(), tensors, dev)?;
        let (backbone, layers) = load_layers(&trainable)?;
        let petl = PetlState::empty(&config.layout(), dev)?;
        let head = ClassificationHead::new(
            config.hidden_size,
            kind,
            config.hidden_dropout_prob,
            varmap,
            rng,
            dev,
        )?;
        Ok(Self {
            backbone,
            layers,
            weights,
            petl,
            head,
        })
    }

    /// Last hidden state `[B, S, H]` and logits `[B, C]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        mode: &mut ForwardMode,
    ) -> Result<(Tensor, Tensor)> {
        let h = self.encode(ids, attention_mask, mode, HiddenRows::All)?;
        let logits = self.head.forward(&h, mode)?;
        Ok((h, logits))
    }

    /// Logits `[B, C]` alone: the same values as [`Self::forward`]'s, with the last layer
    /// computed for the first position only (what training, `eval` and `predict` run).
    pub fn logits(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        mode: &mut ForwardMode,
    ) -> Result<Tensor> {
        let h = self.encode(ids, attention_mask, mode, HiddenRows::First)?;
        Ok(self.head.forward(&h, mode)?)
    }

    fn encode(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        mode: &mut ForwardMode,
        rows: HiddenRows,
    ) -> Result<Tensor> {
        let ctx = PetlContext::identity(self.layers.len());
        encode(
            &self.backbone,
            &self.layers,
            &ctx,
            ids,
            attention_mask,
            mode,
            rows,
        )
    }

    /// The backbone config.
    pub fn config(&self) -> &RobertaConfig {
        &self.backbone.config
    }

    /// Floats of the trained backbone tensors (the pooler of a checkpoint is not used).
    pub fn trained_floats(&self) -> usize {
        self.weights.iter().map(|t| t.var.elem_count()).sum()
    }

    /// Every saved tensor's shape: backbone and head.
    fn saved_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.weights
            .iter()
            .chain(&self.head.trainables())
            .map(|t| (t.name.clone(), t.var.dims().to_vec()))
            .collect()
    }

    fn description(&self) -> String {
        let c = &self.backbone.config;
        format!(
            "full fine-tuning of {} ({} layers, hidden {})",
            c.model_type, c.num_hidden_layers, c.hidden_size
        )
    }
}

/// The storage report of full fine-tuning on `config` (head excluded): every tensor of
/// [`hf_tensors`] stored as f32.
pub fn storage(config: &RobertaConfig) -> Result<StorageReport> {
    let floats = hf_tensors(config)
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    Ok(StorageReport::full_fine_tuning(
        floats,
        config.backbone_params(),
        0,
    )?)
}

impl ProPetlModel for RobertaFull {
    fn petl(&self) -> &PetlState {
        &self.petl
    }
    fn petl_mut(&mut self) -> &mut PetlState {
        &mut self.petl
    }
    fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

impl TaskModel for RobertaFull {
    fn task_kind(&self) -> TaskKind {
        self.head.kind
    }
    fn collate(
        &self,
        examples: &[&Example],
        max_len: usize,
        task: &str,
    ) -> propetl_runtime::Result<Batch> {
        collate_labeled(
            examples,
            self.head.kind,
            max_len,
            self.backbone.config.pad_token_id as u32,
            task,
            self.petl.device(),
        )
    }
    fn loss(&self, batch: &Batch, mode: &mut ForwardMode) -> propetl_runtime::Result<Tensor> {
        let logits = RobertaFull::logits(self, &batch.input_ids, &batch.attention_mask, mode)
            .map_err(ModelError::into_petl)?;
        task_loss(self.head.kind, &logits, &batch.labels)
    }
    fn predict(&self, batch: &Batch) -> propetl_runtime::Result<Vec<Prediction>> {
        let logits = RobertaFull::logits(
            self,
            &batch.input_ids,
            &batch.attention_mask,
            &mut ForwardMode::Eval,
        )
        .map_err(ModelError::into_petl)?;
        predictions_from_logits(self.head.kind, &logits)
    }
    fn logits(&self, batch: &Batch, mode: &mut ForwardMode) -> propetl_runtime::Result<Tensor> {
        RobertaFull::logits(self, &batch.input_ids, &batch.attention_mask, mode)
            .map_err(ModelError::into_petl)
    }
    fn hidden_states(&self, batch: &Batch) -> propetl_runtime::Result<Tensor> {
        Ok(self
            .forward(
                &batch.input_ids,
                &batch.attention_mask,
                &mut ForwardMode::Eval,
            )
            .map_err(ModelError::into_petl)?
            .0)
    }
    fn head_trainables(&self) -> Vec<Trainable> {
        self.head.trainables()
    }
    fn backbone_trainables(&self) -> Vec<Trainable> {
        self.weights.clone()
    }
    fn backbone_params(&self) -> usize {
        self.backbone.config.backbone_params()
    }
    fn storage(&self) -> propetl_runtime::Result<StorageReport> {
        let head = self
            .head
            .trainables()
            .iter()
            .map(|t| t.var.elem_count())
            .sum();
        StorageReport::full_fine_tuning(self.trained_floats(), self.backbone_params(), head)
    }
    /// The whole fine-tuned backbone (Hugging Face names) plus the head, as a checked weight
    /// file. The returned manifest is the PETL-format summary of the same file (no PETL
    /// tensors; the storage report of full fine-tuning).
    fn save(&self, path: &Path) -> propetl_runtime::Result<Manifest> {
        let tensors: BTreeMap<String, Tensor> = self
            .weights
            .iter()
            .chain(&self.head.trainables())
            .map(|t| (t.name.clone(), t.var.as_tensor().detach()))
            .collect();
        let storage = self.storage()?;
        let saved = save_weights(path, &tensors, &self.description(), &storage)?;
        Ok(Manifest {
            format: saved.format,
            version: saved.version,
            config: self.petl.config().clone(),
            layout: self.petl.layout().clone(),
            prototype: BTreeMap::new(),
            masks: BTreeMap::new(),
            extra: saved.shapes,
            checksums: saved.checksums,
            storage,
        })
    }
    /// Read a file [`save`](TaskModel::save) wrote; every tensor must be there with this
    /// model's shape (another checkpoint or number of labels is an error naming the tensor).
    fn restore(&mut self, path: &Path) -> propetl_runtime::Result<()> {
        let (_, loaded) = load_weights(path, &self.saved_shapes(), self.petl.device())?;
        for t in self.weights.iter().chain(&self.head.trainables()) {
            t.var.set(&loaded[&t.name])?;
        }
        Ok(())
    }
}
