//! Training checkpoints: everything needed to continue a run exactly where it stopped —
//! every trainable tensor (prototype, mask scores, heads), the AdamW moments and step count,
//! the RNG position, the epoch and the position in the epoch's batch order, the epoch logs so
//! far, and the caller's own record (e.g. the best epoch and its tensors).
//!
//! One safetensors file, written atomically; a checkpoint is either the old one or the new one.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use propetl_runtime::io::atomic_write;
use propetl_runtime::RngState;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::train::{EpochLog, MultiTaskEpochLog};

/// Version of the checkpoint format.
pub const CHECKPOINT_VERSION: u32 = 1;
const META_KEY: &str = "propetl.train_checkpoint";

/// Where training stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Completed epochs.
    pub epochs_done: usize,
    /// The batch order of the epoch in progress (empty at an epoch boundary).
    pub batches: Vec<Vec<usize>>,
    /// Steps of the epoch in progress already taken.
    pub position: usize,
    /// Losses of those steps.
    pub step_losses: Vec<f64>,
    /// Padded tokens of those steps.
    pub tokens: usize,
    /// The RNG position (dropout and shuffling continue from here).
    pub rng: RngState,
    /// Logs of the completed epochs.
    pub logs: Vec<EpochLog>,
    /// Multi-task training's own state (`None` for single-task training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_task: Option<MultiTaskProgress>,
}

/// Where multi-task training stands, beyond [`Progress`]: every task's batch queue, the
/// losses of the epoch in progress, the per-task logs of the completed epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiTaskProgress {
    /// Each task's remaining batches (drawn from the end).
    pub queues: Vec<Vec<Vec<usize>>>,
    /// Each task's step losses in the epoch in progress.
    pub losses: Vec<Vec<f64>>,
    /// Per-task logs of the completed epochs.
    pub logs: Vec<MultiTaskEpochLog>,
}

/// The in-memory checkpoint.
#[derive(Debug, Clone)]
pub struct TrainCheckpoint {
    /// Every trainable tensor by name.
    pub params: BTreeMap<String, Tensor>,
    /// AdamW moments `(m, v, t)` by variable name.
    pub moments: BTreeMap<String, (Tensor, Tensor, usize)>,
    /// AdamW steps taken.
    pub optimizer_steps: usize,
    /// Where training stands.
    pub progress: Progress,
    /// The caller's extra tensors (e.g. the best epoch's trainables).
    pub extra_tensors: BTreeMap<String, Tensor>,
    /// The caller's record (JSON).
    pub extra: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    version: u32,
    optimizer_steps: usize,
    moment_steps: BTreeMap<String, usize>,
    progress: Progress,
    extra: serde_json::Value,
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

impl TrainCheckpoint {
    /// Write atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in &self.params {
            blobs.push((format!("param/{name}"), t.dims().to_vec(), f32_bytes(t)?));
        }
        let mut moment_steps = BTreeMap::new();
        for (name, (m, v, t)) in &self.moments {
            blobs.push((format!("adam_m/{name}"), m.dims().to_vec(), f32_bytes(m)?));
            blobs.push((format!("adam_v/{name}"), v.dims().to_vec(), f32_bytes(v)?));
            moment_steps.insert(name.clone(), *t);
        }
        for (name, t) in &self.extra_tensors {
            blobs.push((format!("extra/{name}"), t.dims().to_vec(), f32_bytes(t)?));
        }
        let meta = Meta {
            version: CHECKPOINT_VERSION,
            optimizer_steps: self.optimizer_steps,
            moment_steps,
            progress: self.progress.clone(),
            extra: self.extra.clone(),
        };
        let views = blobs
            .iter()
            .map(|(n, shape, bytes)| {
                Ok((
                    n.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), bytes)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata: std::collections::HashMap<String, String> =
            [(META_KEY.to_string(), serde_json::to_string(&meta)?)].into();
        let bytes = safetensors::tensor::serialize(views, Some(metadata))?;
        atomic_write(path, &bytes)?;
        Ok(())
    }

    /// Read a checkpoint written by [`save`](Self::save).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let bad = |what: String| {
            anyhow::anyhow!(
                "{}: not a usable training checkpoint: {what}",
                path.display()
            )
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("{e}")))?;
        let meta_text = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| bad("no checkpoint metadata".into()))?;
        let meta: Meta =
            serde_json::from_str(meta_text).map_err(|e| bad(format!("metadata: {e}")))?;
        if meta.version != CHECKPOINT_VERSION {
            bail!(
                "{}: checkpoint format version {} (this build reads {CHECKPOINT_VERSION})",
                path.display(),
                meta.version
            );
        }
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e}")))?;
        let mut params = BTreeMap::new();
        let mut m_map = BTreeMap::new();
        let mut v_map = BTreeMap::new();
        let mut extra_tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor `{name}` is not f32")));
            }
            let t = Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), device)?;
            let (kind, rest) = name
                .split_once('/')
                .ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
            let rest = rest.to_string();
            match kind {
                "param" => params.insert(rest, t),
                "adam_m" => m_map.insert(rest, t),
                "adam_v" => v_map.insert(rest, t),
                "extra" => extra_tensors.insert(rest, t),
                _ => return Err(bad(format!("unexpected tensor `{name}`"))),
            };
        }
        let mut moments = BTreeMap::new();
        for (name, t) in meta.moment_steps {
            let m = m_map
                .remove(&name)
                .ok_or_else(|| bad(format!("no first moment of `{name}`")))?;
            let v = v_map
                .remove(&name)
                .ok_or_else(|| bad(format!("no second moment of `{name}`")))?;
            moments.insert(name, (m, v, t));
        }
        if let Some(name) = m_map.keys().chain(v_map.keys()).next() {
            return Err(bad(format!("moment of `{name}` without a step count")));
        }
        Ok(Self {
            params,
            moments,
            optimizer_steps: meta.optimizer_steps,
            progress: meta.progress,
            extra_tensors,
            extra: meta.extra,
        })
    }
}
