//! Memory-mapped, frozen checkpoint weights shared by the model files.

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
