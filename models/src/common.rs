//! What every model family needs: `config.json` parsing, memory-mapped frozen weights, a
//! weight getter whose errors name the tensor, the additive attention mask, and the
//! vocabulary check of input ids.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
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

/// Fetch a frozen tensor with an error naming its full path and the expected shape.
pub(crate) fn get(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    vb.get(shape, name).map_err(|e| {
        let full = if vb.prefix().is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", vb.prefix())
        };
        ModelError::Weights(format!("tensor `{full}` (expected shape {shape:?}): {e}"))
    })
}

/// The additive form of an attention mask `[B, S]` (1 attend, 0 padding): 0 where attended,
/// −1e9 where padded, as f32 `[B, S]`.
pub fn additive_attention_mask(attention_mask: &Tensor) -> Result<Tensor> {
    Ok(((attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?)
}

/// Error when an input id is outside a vocabulary of `vocab` entries.
pub(crate) fn check_vocab(ids: &Tensor, vocab: usize) -> Result<()> {
    let flat = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
    match flat.into_iter().find(|&t| t as usize >= vocab) {
        Some(bad) => Err(ModelError::Input(format!(
            "token id {bad} outside the vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}
