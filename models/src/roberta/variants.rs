//! The six RoBERTa variant types (one `#[propetl]` attribute each) and the table where a
//! run-time variant name meets a type ([`spec`], [`build`]).

use candle_core::Tensor;
use candle_nn::VarMap;
use propetl_macros::propetl;
use propetl_runtime::task::{collate_labeled, predictions_from_logits, task_loss};
use propetl_runtime::{
    Batch, Example, ForwardMode, NumericOverrides, PetlConfig, PetlRng, PetlSpec, PetlState,
    Prediction, ProPetlModel, TaskKind, TaskModel, Trainable, Variant,
};

use super::checkpoint::Checkpoint;
use super::config::RobertaConfig;
use super::head::ClassificationHead;
use super::layers::{encode, load_layers, Backbone, HiddenRows, RobertaLayer};
use crate::error::{ModelError, Result};

/// Construction shared by the six variant types (what the variant table dispatches to).
trait FromCheckpoint: TaskModel + Sized + 'static {
    fn from_checkpoint(
        ckpt: &Checkpoint,
        kind: TaskKind,
        overrides: &NumericOverrides,
        varmap: &VarMap,
        rng: &mut PetlRng,
    ) -> Result<Self>;
}

macro_rules! roberta_variant {
    ($(#[$doc:meta])* $name:ident, $($attr:tt)*) => {
        $(#[$doc])*
        #[propetl($($attr)*, crate = "propetl_runtime")]
        #[derive(Debug, Clone)]
        pub struct $name {
            backbone: Backbone,
            #[propetl(layers)]
            layers: Vec<RobertaLayer>,
            #[propetl(state)]
            petl: PetlState,
            head: ClassificationHead,
        }

        impl $name {
            /// Load the frozen backbone from `ckpt`, create the PETL state (compile-time spec
            /// plus run-time numeric `overrides`) and a head for `kind` in `varmap`.
            pub fn from_checkpoint(ckpt: &Checkpoint, kind: TaskKind, overrides: &NumericOverrides, varmap: &VarMap, rng: &mut PetlRng) -> Result<Self> {
                <Self as FromCheckpoint>::from_checkpoint(ckpt, kind, overrides, varmap, rng)
            }

            /// Last hidden state `[B, S, H]` and logits `[B, C]`.
            pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor, task: &str, mode: &mut ForwardMode) -> Result<(Tensor, Tensor)> {
                let ctx = self.petl_context(task)?;
                let h = encode(&self.backbone, &self.layers, &ctx, ids, attention_mask, mode, HiddenRows::All)?;
                let logits = self.head.forward(&h, mode)?;
                Ok((h, logits))
            }

            /// Logits `[B, C]` alone: the same values as [`Self::forward`]'s, with the last
            /// layer computed for the first position only (what training, `eval` and
            /// `predict` run).
            pub fn logits(&self, ids: &Tensor, attention_mask: &Tensor, task: &str, mode: &mut ForwardMode) -> Result<Tensor> {
                let ctx = self.petl_context(task)?;
                let h = encode(&self.backbone, &self.layers, &ctx, ids, attention_mask, mode, HiddenRows::First)?;
                Ok(self.head.forward(&h, mode)?)
            }

            /// The backbone config.
            pub fn config(&self) -> &RobertaConfig {
                &self.backbone.config
            }
        }

        impl FromCheckpoint for $name {
            fn from_checkpoint(ckpt: &Checkpoint, kind: TaskKind, overrides: &NumericOverrides, varmap: &VarMap, rng: &mut PetlRng) -> Result<Self> {
                let (backbone, layers) = load_layers(ckpt)?;
                let dev = ckpt.device();
                let petl = <Self as PetlSpec>::init_petl(&ckpt.config.layout(), overrides, varmap, rng, dev)?;
                let head = ClassificationHead::new(ckpt.config.hidden_size, kind, ckpt.config.hidden_dropout_prob, varmap, rng, dev)?;
                Ok(Self { backbone, layers, petl, head })
            }
        }

        impl TaskModel for $name {
            fn task_kind(&self) -> TaskKind {
                self.head.kind
            }
            fn collate(&self, examples: &[&Example], max_len: usize, task: &str) -> propetl_runtime::Result<Batch> {
                collate_labeled(examples, self.head.kind, max_len, self.backbone.config.pad_token_id as u32, task, self.petl.device())
            }
            fn loss(&self, batch: &Batch, mode: &mut ForwardMode) -> propetl_runtime::Result<Tensor> {
                let logits = $name::logits(self, &batch.input_ids, &batch.attention_mask, &batch.task, mode).map_err(ModelError::into_petl)?;
                task_loss(self.head.kind, &logits, &batch.labels)
            }
            fn predict(&self, batch: &Batch) -> propetl_runtime::Result<Vec<Prediction>> {
                let logits = $name::logits(self, &batch.input_ids, &batch.attention_mask, &batch.task, &mut ForwardMode::Eval).map_err(ModelError::into_petl)?;
                predictions_from_logits(self.head.kind, &logits)
            }
            fn logits(&self, batch: &Batch, mode: &mut ForwardMode) -> propetl_runtime::Result<Tensor> {
                $name::logits(self, &batch.input_ids, &batch.attention_mask, &batch.task, mode).map_err(ModelError::into_petl)
            }
            fn hidden_states(&self, batch: &Batch) -> propetl_runtime::Result<Tensor> {
                let ctx = self.petl_context(&batch.task)?;
                encode(&self.backbone, &self.layers, &ctx, &batch.input_ids, &batch.attention_mask, &mut ForwardMode::Eval, HiddenRows::All).map_err(ModelError::into_petl)
            }
            fn head_trainables(&self) -> Vec<Trainable> {
                self.head.trainables()
            }
            fn backbone_params(&self) -> usize {
                self.backbone.config.backbone_params()
            }
        }
    };
}

roberta_variant!(
    /// ProAdapter (method page §3): one Pfeiffer adapter (rf 12, ReLU) shared by all layers, per-layer masks, keep 0.5.
    RobertaProAdapter, adapter, share = "layers", keep = 0.5
);
roberta_variant!(
    /// ProLoRA: one LoRA prototype for q and one for v (r 32, α 48), per-layer masks, keep 0.1.
    RobertaProLora, lora(r = 32, alpha = 48, targets = ["q", "v"]), share = "layers", keep = 0.1
);
roberta_variant!(
    /// ProPrefix: one prefix (64, MLP 512) shared by all layers, per-layer masks on its output, keep 0.1.
    RobertaProPrefix, prefix(length = 64, hidden = 512), share = "layers", keep = 0.1
);
roberta_variant!(
    /// Unshared adapter baseline: one adapter per layer, no masks.
    RobertaAdapter, adapter, share = "none"
);
roberta_variant!(
    /// Unshared LoRA baseline (r 32 on q, v).
    RobertaLora, lora(r = 32, alpha = 48, targets = ["q", "v"]), share = "none"
);
roberta_variant!(
    /// Unshared prefix baseline (one MLP with per-layer outputs).
    RobertaPrefix, prefix(length = 64, hidden = 512), share = "none"
);

type Builder = fn(
    &Checkpoint,
    TaskKind,
    &NumericOverrides,
    &VarMap,
    &mut PetlRng,
) -> Result<Box<dyn TaskModel>>;

fn boxed<M: FromCheckpoint>(
    ckpt: &Checkpoint,
    kind: TaskKind,
    overrides: &NumericOverrides,
    varmap: &VarMap,
    rng: &mut PetlRng,
) -> Result<Box<dyn TaskModel>> {
    Ok(Box::new(M::from_checkpoint(
        ckpt, kind, overrides, varmap, rng,
    )?))
}

/// The variants RoBERTa supports: (variant, compile-time spec, constructor). The one place a
/// run-time variant name meets a type.
const VARIANTS: [(Variant, PetlConfig, Builder); 6] = [
    (
        Variant::ProAdapter,
        RobertaProAdapter::PROPETL,
        boxed::<RobertaProAdapter>,
    ),
    (
        Variant::ProLora,
        RobertaProLora::PROPETL,
        boxed::<RobertaProLora>,
    ),
    (
        Variant::ProPrefix,
        RobertaProPrefix::PROPETL,
        boxed::<RobertaProPrefix>,
    ),
    (
        Variant::Adapter,
        RobertaAdapter::PROPETL,
        boxed::<RobertaAdapter>,
    ),
    (Variant::Lora, RobertaLora::PROPETL, boxed::<RobertaLora>),
    (
        Variant::Prefix,
        RobertaPrefix::PROPETL,
        boxed::<RobertaPrefix>,
    ),
];

fn entry(variant: Variant) -> Result<&'static (Variant, PetlConfig, Builder)> {
    crate::common::find_variant(&VARIANTS, variant, "RoBERTa", ", full")
}

/// The compile-time spec of a RoBERTa PETL variant (`full` has none: it has no PETL module).
pub fn spec(variant: Variant) -> Result<PetlConfig> {
    if variant.is_full() {
        return Err(ModelError::Config(
            "variant `full` (full fine-tuning) has no PETL module and no PETL spec".into(),
        ));
    }
    Ok(entry(variant)?.1.clone())
}

/// Build a RoBERTa variant with a head for `kind` (the trainer's model).
pub fn build(
    variant: Variant,
    ckpt: &Checkpoint,
    kind: TaskKind,
    overrides: &NumericOverrides,
    varmap: &VarMap,
    rng: &mut PetlRng,
) -> Result<Box<dyn TaskModel>> {
    if variant.is_full() {
        if let Some(key) = overrides.given().first() {
            return Err(ModelError::Config(format!(
                "`{key}` does not apply to variant `full` (full fine-tuning has no PETL module)"
            )));
        }
        return Ok(Box::new(super::full::RobertaFull::from_checkpoint(
            ckpt, kind, varmap, rng,
        )?));
    }
    (entry(variant)?.2)(ckpt, kind, overrides, varmap, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Method page §6 through the annotated model types' compile-time specs.
    #[test]
    fn roberta_base_storage_of_every_variant() {
        let cfg = RobertaConfig::roberta_base();
        let expect = [
            (Variant::ProAdapter, 136_000.0, "0.109"),
            (Variant::ProLora, 135_168.0, "0.108"),
            (Variant::ProPrefix, 135_168.0, "0.108"),
            (Variant::Adapter, 1_189_632.0, "0.954"),
            (Variant::Lora, 1_179_648.0, "0.946"),
            (Variant::Prefix, 1_179_648.0, "0.946"),
        ];
        for (v, floats, pct) in expect {
            let plan = propetl_runtime::Plan::new(&spec(v).unwrap(), &cfg.layout()).unwrap();
            let r =
                propetl_runtime::StorageReport::from_plan(&plan, cfg.backbone_params(), 0).unwrap();
            assert_eq!(r.float32_equivalents, floats, "{v:?}");
            assert_eq!(format!("{:.3}", r.percent_of_backbone), pct, "{v:?}");
        }
    }
}
