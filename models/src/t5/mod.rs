//! T5 (encoder–decoder) with multi-task ProPETL — *One Network, Many Masks* (Zeng, Zhang &
//! Lu, ACL 2023), method page §5: one adapter after the FFN of every encoder and decoder block,
//! shared by all blocks and all tasks; a task mask per task combined (`or`) with a mask per
//! block.
//!
//! Loads Hugging Face `T5ForConditionalGeneration` checkpoints (`config.json`,
//! `model.safetensors` with `shared.weight`, `encoder.block.{l}…`, `decoder.block.{l}…`) as
//! frozen tensors. Layers are named `enc.{l}` and `dec.{l}` in the PETL state, so layer masks
//! are `mask.enc.0.down`, … and task masks `mask.task.{task}.down`, ….
//!
//! | file | what it holds |
//! |---|---|
//! | `config.rs` | [`T5Config`]: `config.json` keys and defaults, validation, PETL layout, parameter count |
//! | `checkpoint.rs` | [`T5Checkpoint`] (folder, tensors, random) and [`hf_tensors`], the Hugging Face tensor layout written once: it validates every checkpoint up front and fills random ones |
//! | `layers.rs` | attention, [`T5Block`] and its injection site, [`relative_position_bucket`], the encoder–decoder forward pass, the cached decoder step |
//! | `generate.rs` | [`GenerationConfig`], [`Generator`]: greedy and beam search with a key/value cache (transformers' semantics), [`T5Tokenizer`] |
//! | `loss.rs` | [`label_smoothed_loss`] |
//! | `variants.rs` | [`Seq2Seq`], the `#[propetl]` variant types, the plain backbone [`T5Plain`], the variant table, [`spec`], [`build`] |
//!
//! ```no_run
//! use propetl_models::t5::{T5Checkpoint, T5ProAdapter, Seq2Seq};
//! use propetl_runtime::{NumericOverrides, PetlRng};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ckpt = T5Checkpoint::open("t5-base", &candle_core::Device::Cpu)?;
//! let varmap = candle_nn::VarMap::new();
//! let tasks = ["rte", "sst2", "cola"];
//! let model = T5ProAdapter::from_checkpoint(&ckpt, &tasks, &NumericOverrides::default(), &varmap, &mut PetlRng::seed(42))?;
//! // token ids of "sst2 sentence: ...", its attention mask, and the decoder inputs
//! let input_ids = candle_core::Tensor::new(&[[834u32, 7, 1]], ckpt.device())?;
//! let attention_mask = candle_core::Tensor::new(&[[1u32, 1, 1]], ckpt.device())?;
//! let decoder_input_ids = candle_core::Tensor::new(&[[0u32]], ckpt.device())?;
//! let logits = model.logits(&input_ids, &attention_mask, &decoder_input_ids, "sst2")?;
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod layers;
pub mod loss;
pub mod text_to_text;
pub mod variants;

pub use checkpoint::{hf_tensors, T5Checkpoint};
pub use config::T5Config;
pub use generate::{until_eos, EarlyStopping, GenerationConfig, Generator, T5Tokenizer};
pub use layers::{relative_position_bucket, AttentionSite, T5Block};
pub use loss::label_smoothed_loss;
pub use text_to_text::{LabelTarget, T5TextToText, TextTask};
pub use variants::{
    build, spec, spec_for, Seq2Seq, T5Adapter, T5Lora, T5Plain, T5ProAdapter,
    T5ProAdapterSingleTask, T5ProLora, T5ProLoraSingleTask,
};
