//! Model definitions annotated with `#[propetl]`: RoBERTa/BERT encoders with ProAdapter,
//! ProLoRA, ProPrefix and their unshared baselines, and multi-task ProPETL on T5, loading
//! Hugging Face checkpoints.

pub mod common;
pub mod error;
pub mod roberta;
pub mod t5;
pub mod tokenizer;

pub use common::{HfTensor, TensorKind};
pub use error::{ModelError, Result};
