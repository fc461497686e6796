//! Checkpoint loading shared by the model files: `config.json` parsing and memory-mapped,
//! frozen weights.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{ModelError, Result};

/// Memory-map a `model.safetensors` as frozen f32 tensors, with errors naming the file.
pub(crate) fn mmap_safetensors(weights: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    if !weights.exists() {
        return Err(ModelError::io(
            weights,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model.safetensors not found"),
        ));
    }
    // SAFETY: the file is memory-mapped read-only; it must not be modified while in use.
    unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device) }
        .map_err(|e| ModelError::Weights(format!("{}: {e}", weights.display())))
}

/// Parse a Hugging Face `config.json`: malformed JSON, a `model_type` outside `accepted`
/// (`family` says what the model loads) and missing keys each get a clear error.
pub(crate) fn parse_hf_config<T: serde::de::DeserializeOwned>(
    text: &str,
    accepted: &[&str],
    family: &str,
) -> Result<T> {
    let raw: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ModelError::Config(format!("malformed config.json: {e}")))?;
    let mt = raw
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("<missing>");
    if !accepted.contains(&mt) {
        return Err(ModelError::Config(format!(
            "unsupported model_type `{mt}`: {family} ({})",
            accepted.join(", ")
        )));
    }
    serde_json::from_value(raw).map_err(|e| ModelError::Config(format!("config.json: {e}")))
}
