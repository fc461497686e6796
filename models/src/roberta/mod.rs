//! RoBERTa / BERT encoders with ProPETL (ProAdapter, ProLoRA, ProPrefix) and their unshared
//! baselines — *One Network, Many Masks* (Zeng, Zhang & Lu, ACL 2023), method page §3.
//!
//! One family covers RoBERTa and BERT checkpoints in Hugging Face layout (`config.json`,
//! `model.safetensors`, `tokenizer.json`): the layer math is identical; they differ in the
//! position-id offset, the token-type vocabulary and the weight-name prefix (`roberta.`,
//! `bert.` or none), all detected from the checkpoint. The backbone is loaded as frozen
//! tensors (never `Var`s); only the PETL state and the head are trainable — except in full
//! fine-tuning ([`RobertaFull`]), where every backbone weight is a `Var`.
//!
//! | file | what it holds |
//! |---|---|
//! | `config.rs` | [`RobertaConfig`]: `config.json` keys and defaults, validation, parameter count, PETL layout |
//! | `checkpoint.rs` | [`Checkpoint`] (folder, bytes, tensors, random) and [`hf_tensors`], the Hugging Face tensor layout written once: it validates every checkpoint up front and fills random ones |
//! | `layers.rs` | embeddings, [`RobertaLayer`] and its injection sites, the shared forward pass, [`FrozenEncoder`], [`mean_pool_normalized`] |
//! | `head.rs` | [`ClassificationHead`] |
//! | `variants.rs` | the six `#[propetl]` variant types, the variant table, [`spec`], [`build`] |
//! | `full.rs` | [`RobertaFull`]: full fine-tuning (`full`), every backbone weight a trainable `Var` |
//!
//! ```no_run
//! use candle_core::Device;
//! use propetl_models::roberta::{Checkpoint, RobertaProAdapter};
//! use propetl_runtime::{ForwardMode, NumericOverrides, PetlRng, TaskKind};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ckpt = Checkpoint::open("tiny-roberta", &Device::Cpu)?;
//! let varmap = candle_nn::VarMap::new();
//! let kind = TaskKind::Classification { num_labels: 3 };
//! let model = RobertaProAdapter::from_checkpoint(&ckpt, kind, &NumericOverrides::default(), &varmap, &mut PetlRng::seed(42))?;
//! let (input_ids, attention_mask) = ckpt.tokenizer()?.encode_batch(&["a sentence"], 128)?;
//! let (_hidden, logits) = model.forward(&input_ids, &attention_mask, "default", &mut ForwardMode::Eval)?;
//! # Ok(()) }
//! ```
//!
//! Weight paths mirror Hugging Face (`{prefix}encoder.layer.{l}.attention.self.query.weight`,
//! …), so checkpoints load unchanged. Trainable names: the PETL names of
//! `propetl_runtime::plan` plus `head.dense.{weight,bias}`, `head.out_proj.{weight,bias}`.

pub mod checkpoint;
pub mod config;
pub mod full;
pub mod head;
pub mod layers;
pub mod variants;

pub use checkpoint::{hf_tensors, Checkpoint};
pub use config::RobertaConfig;
pub use full::RobertaFull;
pub use head::ClassificationHead;
pub use layers::{mean_pool_normalized, Backbone, Embeddings, FrozenEncoder, RobertaLayer};
pub use variants::{
    build, spec, RobertaAdapter, RobertaLora, RobertaPrefix, RobertaProAdapter, RobertaProLora,
    RobertaProPrefix,
};
