//! The text-to-text interface ([`Seq2Seq`]), the T5 variant types (one `#[propetl]`
//! attribute each) and the table where a run-time variant name meets a type ([`spec`],
//! [`build`]).

use candle_core::Tensor;
use candle_nn::VarMap;
use propetl_macros::propetl;
use propetl_runtime::{
    ForwardMode, NumericOverrides, PetlConfig, PetlRng, PetlSpec, PetlState, ProPetlModel, Variant,
};

use super::checkpoint::T5Checkpoint;
use super::config::T5Config;
use super::generate::{GenerationConfig, Generator};
use super::layers::{forward, load_stacks, AttentionSite, Stacks, T5Block};
use super::loss::label_smoothed_loss;
use crate::error::Result;

/// The text-to-text interface of the T5 variants (on top of the PETL instance API).
pub trait Seq2Seq: ProPetlModel {
    /// The backbone config.
    fn config(&self) -> &T5Config;
    /// LM logits `[B, T, V]` for `task`; `mode` switches dropout on (training).
    fn forward(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
        task: &str,
        mode: &mut ForwardMode,
    ) -> Result<Tensor>;
    /// LM logits `[B, T, V]` for `task`, evaluation mode (no dropout).
    fn logits(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
        task: &str,
    ) -> Result<Tensor> {
        self.forward(
            ids,
            attention_mask,
            decoder_input_ids,
            task,
            &mut ForwardMode::Eval,
        )
    }
    /// The method page §5 loss (label smoothing 0.1, summed, pad ignored).
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        label_smoothed_loss(logits, labels, 0.1, self.config().pad_token_id)
    }
    /// Generation with `task`'s PETL context (built once, here).
    fn generator(&self, task: &str) -> Result<Generator<'_>>;
    /// Generated ids of every input row for `task` (greedy or beam search, see
    /// [`generate`](super::generate)); the PETL context is built once per call.
    fn generate(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        task: &str,
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        self.generator(task)?
            .generate(input_ids, attention_mask, cfg)
    }
}

/// The frozen T5 backbone without PETL (a Hugging Face `T5ForConditionalGeneration` as it
/// is): logits and generation.
#[derive(Debug, Clone)]
pub struct T5Plain {
    stacks: Stacks,
    blocks: Vec<T5Block>,
}

impl T5Plain {
    /// Load the frozen backbone.
    pub fn from_checkpoint(ckpt: &T5Checkpoint) -> Result<Self> {
        let (stacks, blocks) = load_stacks(ckpt)?;
        Ok(Self { stacks, blocks })
    }

    /// The backbone config.
    pub fn config(&self) -> &T5Config {
        &self.stacks.config
    }

    fn identity(&self) -> propetl_runtime::PetlContext {
        propetl_runtime::PetlContext::identity(self.blocks.len())
    }

    /// LM logits `[B, T, V]`.
    pub fn logits(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
    ) -> Result<Tensor> {
        forward(
            &self.stacks,
            &self.blocks,
            &self.identity(),
            ids,
            attention_mask,
            decoder_input_ids,
            &mut ForwardMode::Eval,
        )
    }

    /// Generation with the plain backbone.
    pub fn generator(&self) -> Generator<'_> {
        Generator::new(&self.stacks, &self.blocks, self.identity())
    }

    /// Generated ids of every input row (greedy or beam search, see
    /// [`generate`](super::generate)).
    pub fn generate(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        self.generator().generate(input_ids, attention_mask, cfg)
    }
}

/// `Seq2Seq` of a T5 variant (fields `stacks`, `blocks` and the PETL state).
macro_rules! impl_seq2seq {
    ($name:ident) => {
        impl Seq2Seq for $name {
            fn config(&self) -> &T5Config {
                &self.stacks.config
            }
            fn forward(
                &self,
                ids: &Tensor,
                attention_mask: &Tensor,
                decoder_input_ids: &Tensor,
                task: &str,
                mode: &mut ForwardMode,
            ) -> Result<Tensor> {
                let ctx = self.petl_context(task)?;
                forward(
                    &self.stacks,
                    &self.blocks,
                    &ctx,
                    ids,
                    attention_mask,
                    decoder_input_ids,
                    mode,
                )
            }
            fn generator(&self, task: &str) -> Result<Generator<'_>> {
                Ok(Generator::new(
                    &self.stacks,
                    &self.blocks,
                    self.petl_context(task)?,
                ))
            }
        }
    };
}

macro_rules! t5_variant {
    ($(#[$doc:meta])* $name:ident, $($attr:tt)*) => {
        $(#[$doc])*
        #[propetl($($attr)*, crate = "propetl_runtime")]
        #[derive(Debug, Clone)]
        pub struct $name {
            stacks: Stacks,
            #[propetl(layers)]
            blocks: Vec<T5Block>,
            #[propetl(state)]
            petl: PetlState,
        }

        impl $name {
            /// Load the frozen backbone and create the PETL state for `tasks`.
            pub fn from_checkpoint(ckpt: &T5Checkpoint, tasks: &[&str], overrides: &NumericOverrides, varmap: &VarMap, rng: &mut PetlRng) -> Result<Self> {
                let (stacks, blocks) = load_stacks(ckpt)?;
                let petl = <Self as PetlSpec>::init_petl(&ckpt.config.layout(tasks), overrides, varmap, rng, ckpt.device())?;
                Ok(Self { stacks, blocks, petl })
            }
        }

        impl_seq2seq!($name);
    };
}

/// A T5 LoRA variant: its `#[propetl(layers)]` are T5's attention modules
/// ([`AttentionSite`]: every block's self-attention, then every decoder block's
/// cross-attention), the blocks themselves are plain.
macro_rules! t5_attention_variant {
    ($(#[$doc:meta])* $name:ident, $($attr:tt)*) => {
        $(#[$doc])*
        #[propetl($($attr)*, crate = "propetl_runtime")]
        #[derive(Debug, Clone)]
        pub struct $name {
            stacks: Stacks,
            blocks: Vec<T5Block>,
            #[propetl(layers)]
            sites: Vec<AttentionSite>,
            #[propetl(state)]
            petl: PetlState,
        }

        impl $name {
            /// Load the frozen backbone and create the PETL state for `tasks`.
            pub fn from_checkpoint(ckpt: &T5Checkpoint, tasks: &[&str], overrides: &NumericOverrides, varmap: &VarMap, rng: &mut PetlRng) -> Result<Self> {
                let (stacks, blocks) = load_stacks(ckpt)?;
                let layout = ckpt.config.attention_layout(tasks);
                let sites = vec![AttentionSite; layout.layers.len()];
                let petl = <Self as PetlSpec>::init_petl(&layout, overrides, varmap, rng, ckpt.device())?;
                Ok(Self { stacks, blocks, sites, petl })
            }
        }

        impl_seq2seq!($name);
    };
}

t5_variant!(
    /// Multi-task ProPETL-T5: one adapter (rf 12, gelu_new, N(0, 0.01)) for all blocks and tasks; task masks `or` block masks, keep 0.3.
    T5ProAdapter, adapter(reduction = 12, activation = "gelu_new", init_std = 0.01), share = "layers+tasks", combine = "or", keep = 0.3
);
t5_variant!(
    /// Baseline: one adapter per block (24 for t5-base), shared by the tasks, no masks.
    T5Adapter, adapter(reduction = 12, activation = "gelu_new", init_std = 0.01), share = "none"
);

t5_attention_variant!(
    /// Multi-task ProLoRA-T5: one LoRA pair (r 32, α 48) on the q and v of every attention
    /// module (self-attention of every block, cross-attention of every decoder block), shared
    /// by all of them and all tasks; task masks `or` per-module masks, keep 0.1 (the paper's
    /// LoRA density).
    T5ProLora, lora(r = 32, alpha = 48), share = "layers+tasks", combine = "or", keep = 0.1
);
t5_attention_variant!(
    /// Baseline: LoRA (r 32, α 48) on q and v of every attention module (as PEFT's
    /// `target_modules = ["q", "v"]`), one pair per module, shared by the tasks, no masks.
    T5Lora, lora(r = 32, alpha = 48), share = "none"
);

t5_variant!(
    /// Single-task ProAdapter-T5: the adapter shared by all blocks, one mask per block
    /// (`share = "layers"`, no task mask to combine), keep 0.5 as the paper's single-task T5
    /// configs.
    T5ProAdapterSingleTask, adapter(reduction = 12, activation = "gelu_new", init_std = 0.01), share = "layers", keep = 0.5
);
t5_attention_variant!(
    /// Single-task ProLoRA-T5: one LoRA pair on q/v shared by every attention module, one
    /// mask per module, keep 0.1.
    T5ProLoraSingleTask, lora(r = 32, alpha = 48), share = "layers", keep = 0.1
);

type Builder = fn(
    &T5Checkpoint,
    &[&str],
    &NumericOverrides,
    &VarMap,
    &mut PetlRng,
) -> Result<Box<dyn Seq2Seq>>;

/// The variants T5 supports (its blocks have the adapter site and LoRA on self-attention q/v;
/// no prefix site): (variant, spec, constructor).
const VARIANTS: [(Variant, PetlConfig, Builder); 4] = [
    (
        Variant::ProAdapter,
        T5ProAdapter::PROPETL,
        |c, t, o, v, r| Ok(Box::new(T5ProAdapter::from_checkpoint(c, t, o, v, r)?)),
    ),
    (Variant::Adapter, T5Adapter::PROPETL, |c, t, o, v, r| {
        Ok(Box::new(T5Adapter::from_checkpoint(c, t, o, v, r)?))
    }),
    (Variant::ProLora, T5ProLora::PROPETL, |c, t, o, v, r| {
        Ok(Box::new(T5ProLora::from_checkpoint(c, t, o, v, r)?))
    }),
    (Variant::Lora, T5Lora::PROPETL, |c, t, o, v, r| {
        Ok(Box::new(T5Lora::from_checkpoint(c, t, o, v, r)?))
    }),
];

/// The single-task forms of the shared variants (`share = "layers"`): a model with one task
/// has no task mask to combine with its block masks.
const SINGLE_TASK_VARIANTS: [(Variant, PetlConfig, Builder); 2] = [
    (
        Variant::ProAdapter,
        T5ProAdapterSingleTask::PROPETL,
        |c, t, o, v, r| {
            Ok(Box::new(T5ProAdapterSingleTask::from_checkpoint(
                c, t, o, v, r,
            )?))
        },
    ),
    (
        Variant::ProLora,
        T5ProLoraSingleTask::PROPETL,
        |c, t, o, v, r| {
            Ok(Box::new(T5ProLoraSingleTask::from_checkpoint(
                c, t, o, v, r,
            )?))
        },
    ),
];

/// The entry of `variant` for a model with `num_tasks` tasks: the single-task form of the
/// shared variants for one task, the multi-task one (task masks `or` block masks) otherwise.
fn entry_for(
    variant: Variant,
    num_tasks: usize,
) -> Result<&'static (Variant, PetlConfig, Builder)> {
    match SINGLE_TASK_VARIANTS.iter().find(|e| e.0 == variant) {
        Some(single) if num_tasks == 1 => Ok(single),
        _ => entry(variant),
    }
}

fn entry(variant: Variant) -> Result<&'static (Variant, PetlConfig, Builder)> {
    crate::common::find_variant(
        &VARIANTS,
        variant,
        "T5",
        "; it declares the adapter site (blocks) and LoRA on q/v (attention modules), no prefix site",
    )
}

/// The PETL spec of a T5 variant in its multi-task form.
pub fn spec(variant: Variant) -> Result<PetlConfig> {
    Ok(entry(variant)?.1.clone())
}

/// The PETL spec [`build`] uses for a model with `num_tasks` tasks (one task: the
/// `share = "layers"` form of the shared variants).
pub fn spec_for(variant: Variant, num_tasks: usize) -> Result<PetlConfig> {
    Ok(entry_for(variant, num_tasks)?.1.clone())
}

/// Build a T5 variant for `tasks` (one task: the single-task form, see [`spec_for`]).
pub fn build(
    variant: Variant,
    ckpt: &T5Checkpoint,
    tasks: &[&str],
    overrides: &NumericOverrides,
    varmap: &VarMap,
    rng: &mut PetlRng,
) -> Result<Box<dyn Seq2Seq>> {
    let (_, spec, builder) = entry_for(variant, tasks.len())?;
    let c = &ckpt.config;
    if matches!(spec.method, propetl_runtime::Method::Lora { .. })
        && c.num_heads * c.d_kv != c.d_model
    {
        return Err(crate::ModelError::Config(format!(
            "LoRA on T5 q/v needs num_heads · d_kv = d_model (the LoRA update has the model's width); this checkpoint has {} · {} = {} ≠ {}",
            c.num_heads,
            c.d_kv,
            c.num_heads * c.d_kv,
            c.d_model
        )));
    }
    builder(ckpt, tasks, overrides, varmap, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::t5::T5Config;

    #[test]
    fn t5_base_storage_matches_method_page() {
        let c = T5Config::t5_base();
        let tasks = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"];
        let plan = propetl_runtime::Plan::new(&T5ProAdapter::PROPETL, &c.layout(&tasks)).unwrap();
        let r = propetl_runtime::StorageReport::from_plan(&plan, c.backbone_params(), 0).unwrap();
        assert_eq!(r.prototype_floats, 99_136);
        assert_eq!(r.mask_entries, (8 + 24) * 98_304);
        assert_eq!(r.float32_equivalents, 99_136.0 + 32.0 * 98_304.0 / 32.0); // ≈ 197k for all 8 tasks
        assert_eq!(r.baseline_floats, 24 * 99_136); // 2.38M for 24 unshared adapters
    }
}
