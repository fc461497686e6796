//! Model definitions annotated with `#[propetl]`: RoBERTa/BERT encoders with ProAdapter,
//! ProLoRA, ProPrefix and their unshared baselines, loading Hugging Face checkpoints.

pub mod error;
pub mod roberta;
pub mod tokenizer;

pub use error::{ModelError, Result};
