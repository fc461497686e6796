//! Errors of the model crate.

use std::path::{Path, PathBuf};

/// Errors while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `config.json` is malformed or unsupported.
    #[error("config: {0}")]
    Config(String),
    /// A weight is missing or has the wrong shape, or the checkpoint is of another architecture.
    #[error("weights: {0}")]
    Weights(String),
    /// Bad model input (shapes, token ids, lengths).
    #[error("input: {0}")]
    Input(String),
    /// Tokenizer problems.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// File access.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Runtime (PETL) errors.
    #[error(transparent)]
    Petl(#[from] propetl_runtime::PetlError),
    /// Candle errors.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// As a runtime error (what the `TaskModel` interface returns).
    pub fn into_petl(self) -> propetl_runtime::PetlError {
        match self {
            ModelError::Petl(e) => e,
            ModelError::Candle(e) => propetl_runtime::PetlError::Candle(e),
            other => propetl_runtime::PetlError::Model(Box::new(other)),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
