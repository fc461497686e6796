//! `tokenizer.json` loading with our own padding and truncation.

use std::path::Path;

use candle_core::{Device, Tensor};
use propetl_runtime::task::pad_batch;
use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// A Hugging Face tokenizer with padding/truncation baked into the file turned off; batches
/// are padded to the longest sequence (at most `max_len`) by [`encode_batch`](Self::encode_batch).
pub struct EncoderTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    device: Device,
}

impl EncoderTokenizer {
    /// Load `tokenizer.json`.
    pub fn from_file(path: &Path, pad_id: u32, device: &Device) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::new(inner, pad_id, device)
    }

    /// Load from the bytes of a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8], pad_id: u32, device: &Device) -> Result<Self> {
        let inner =
            Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Self::new(inner, pad_id, device)
    }

    /// Turn off any padding/truncation baked into the file: batches are padded here.
    fn new(mut inner: Tokenizer, pad_id: u32, device: &Device) -> Result<Self> {
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Self {
            inner,
            pad_id,
            device: device.clone(),
        })
    }

    /// Token ids of one text (with special tokens).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Token ids of a text pair (with special tokens).
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode((a, b), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Pad/truncate id sequences into `(input_ids [B,S] u32, attention_mask [B,S] u32)`.
    pub fn batch(&self, seqs: &[Vec<u32>], max_len: usize) -> Result<(Tensor, Tensor)> {
        if seqs.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        Ok(pad_batch(&refs, max_len, self.pad_id, &self.device)?)
    }

    /// Encode and batch texts into `(input_ids [B,S] u32, attention_mask [B,S] u32)` (see
    /// [`batch`](Self::batch)).
    pub fn encode_batch(&self, texts: &[&str], max_len: usize) -> Result<(Tensor, Tensor)> {
        let seqs = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        self.batch(&seqs, max_len)
    }
}
