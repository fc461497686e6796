//! Saving and loading a trained PETL state.
//!
//! One safetensors file holds the prototype in its stored form (f32; prefixes as the
//! materialized `prefix.ejected`), every mask bit-packed (u8, LSB first), any extra tensors
//! (heads) as f32, and a versioned JSON [`Manifest`] in the file metadata under
//! `propetl.manifest`. Writes are atomic: a temp file in the same folder is synced, then renamed.
//! Loading validates everything and fails with a typed [`LoadErrorKind`].

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{LoadErrorKind, PetlError, Result};
use crate::mask::{mask_to_bytes, pack_bits, unpack_bits};
use crate::plan::{PetlLayout, Plan};
use crate::spec::{Method, PetlConfig};
use crate::state::PetlState;
use crate::storage::StorageReport;

/// Format name in the manifest.
pub const FORMAT: &str = "propetl-state";
/// Manifest version this build writes and reads.
pub const VERSION: u32 = 1;
/// Metadata key of the manifest.
pub const MANIFEST_KEY: &str = "propetl.manifest";

/// The JSON manifest stored with a PETL state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The configuration the state was trained with.
    pub config: PetlConfig,
    /// Model dimensions, layer and task names.
    pub layout: PetlLayout,
    /// Stored prototype tensors and their shapes.
    pub prototype: BTreeMap<String, Vec<usize>>,
    /// Masks and their (unpacked) shapes.
    pub masks: BTreeMap<String, Vec<usize>>,
    /// Extra f32 tensors (e.g. the classification head) and their shapes.
    pub extra: BTreeMap<String, Vec<usize>>,
    /// Storage report at save time.
    pub storage: StorageReport,
}

/// A state read back from disk.
#[derive(Debug)]
pub struct LoadedState {
    /// Inference-only PETL state with fixed masks.
    pub state: PetlState,
    /// Extra tensors (heads), by name.
    pub extra: BTreeMap<String, Tensor>,
    /// The manifest.
    pub manifest: Manifest,
}

/// Write `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| PetlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| PetlError::config(format!("{} is not a file path", path.display())))?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn stored_prototype_shapes(plan: &Plan) -> BTreeMap<String, Vec<usize>> {
    match &plan.config.method {
        Method::Prefix { length, .. } => {
            let h = plan.layout.hidden;
            let width = if plan.config.shares_layers() {
                2 * h
            } else {
                2 * h * plan.layout.layers.len()
            };
            BTreeMap::from([("prefix.ejected".to_string(), vec![*length, width])])
        }
        _ => plan
            .prototype
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect(),
    }
}

impl PetlState {
    /// Save the trained state (prototype, current hard masks) plus `extra` tensors such as the
    /// head. `backbone_params` goes into the storage report of the manifest.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        extra: &BTreeMap<String, Tensor>,
        backbone_params: usize,
    ) -> Result<Manifest> {
        let path = path.as_ref();
        let plan = self.plan();
        let (proto, masks) = self.stored_tensors()?;
        let mut blobs: BTreeMap<String, (StDtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (name, t) in &proto {
            blobs.insert(
                name.clone(),
                (StDtype::F32, t.dims().to_vec(), f32_bytes(t)?),
            );
        }
        let mut mask_shapes = BTreeMap::new();
        for (name, m) in &masks {
            let bits = pack_bits(&mask_to_bytes(m)?);
            blobs.insert(name.clone(), (StDtype::U8, vec![bits.len()], bits));
            mask_shapes.insert(name.clone(), m.dims().to_vec());
        }
        let mut extra_shapes = BTreeMap::new();
        let mut head_params = 0;
        for (name, t) in extra {
            if blobs.contains_key(name) {
                return Err(PetlError::config(format!(
                    "extra tensor `{name}` clashes with a PETL tensor"
                )));
            }
            head_params += t.elem_count();
            blobs.insert(
                name.clone(),
                (StDtype::F32, t.dims().to_vec(), f32_bytes(t)?),
            );
            extra_shapes.insert(name.clone(), t.dims().to_vec());
        }
        let manifest = Manifest {
            format: FORMAT.to_string(),
            version: VERSION,
            config: plan.config.clone(),
            layout: plan.layout.clone(),
            prototype: proto
                .iter()
                .map(|(k, t)| (k.clone(), t.dims().to_vec()))
                .collect(),
            masks: mask_shapes,
            extra: extra_shapes,
            storage: StorageReport::from_plan(plan, backbone_params, head_params)?,
        };
        let json = serde_json::to_string(&manifest).expect("manifest serializes");
        let views = blobs
            .iter()
            .map(|(k, (dt, shape, data))| {
                TensorView::new(*dt, shape.clone(), data).map(|v| (k.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| PetlError::config(format!("safetensors view: {e}")))?;
        let bytes = safetensors::tensor::serialize(
            views,
            Some(HashMap::from([(MANIFEST_KEY.to_string(), json)])),
        )
        .map_err(|e| PetlError::config(format!("safetensors serialization: {e}")))?;
        atomic_write(path, &bytes)?;
        Ok(manifest)
    }

    /// Load a state saved by [`PetlState::save`] into a model described by `config` and
    /// `layout`. Everything is validated: manifest version, method and layout, every tensor's
    /// presence, dtype and shape, mask bit counts, and unknown tensors.
    pub fn load(
        path: impl AsRef<Path>,
        config: &PetlConfig,
        layout: &PetlLayout,
        device: &Device,
    ) -> Result<LoadedState> {
        let path = path.as_ref();
        let err = |kind| PetlError::Load {
            path: path.to_path_buf(),
            kind,
        };
        let bytes = std::fs::read(path).map_err(|source| PetlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| err(LoadErrorKind::Corrupt(e.to_string())))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(LoadErrorKind::Corrupt(e.to_string())))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(MANIFEST_KEY))
            .ok_or_else(|| err(LoadErrorKind::MissingManifest))?;
        let raw: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| err(LoadErrorKind::BadManifest(e.to_string())))?;
        if raw.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(err(LoadErrorKind::BadManifest(format!(
                "format is not `{FORMAT}`"
            ))));
        }
        let version = raw
            .get("version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| err(LoadErrorKind::BadManifest("no version".into())))?;
        if version != VERSION as u64 {
            return Err(err(LoadErrorKind::UnsupportedVersion {
                found: version as u32,
                supported: VERSION,
            }));
        }
        let manifest: Manifest = serde_json::from_value(raw)
            .map_err(|e| err(LoadErrorKind::BadManifest(e.to_string())))?;
        // Structure: everything but keep must agree (keep is baked into the stored masks).
        let structural = |c: &PetlConfig| PetlConfig {
            keep: 1.0,
            ..c.clone()
        };
        if structural(&manifest.config) != structural(config) || manifest.layout != *layout {
            return Err(err(LoadErrorKind::WrongPrototype {
                saved: format!("{} on {:?}", manifest.config.describe(), manifest.layout),
                expected: format!("{} on {:?}", config.describe(), layout),
            }));
        }
        let plan = Plan::new(&manifest.config, layout)?;
        let mut seen = std::collections::BTreeSet::new();
        let get = |name: &str, dtype: StDtype, shape: &[usize]| -> Result<Vec<u8>> {
            let view = st
                .tensor(name)
                .map_err(|_| err(LoadErrorKind::MissingTensor(name.to_string())))?;
            if view.dtype() != dtype || view.shape() != shape {
                return Err(err(LoadErrorKind::TensorMismatch {
                    name: name.to_string(),
                    expected: format!("{dtype:?} {shape:?}"),
                    found: format!("{:?} {:?}", view.dtype(), view.shape()),
                }));
            }
            Ok(view.data().to_vec())
        };
        let to_f32 = |name: &str, data: Vec<u8>, shape: &[usize]| -> Result<Tensor> {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(err(LoadErrorKind::TensorMismatch {
                    name: name.to_string(),
                    expected: "finite values".into(),
                    found: "NaN or infinity".into(),
                }));
            }
            Ok(Tensor::from_vec(v, shape, device)?)
        };
        let mut values = BTreeMap::new();
        for (name, shape) in stored_prototype_shapes(&plan) {
            let data = get(&name, StDtype::F32, &shape)?;
            values.insert(name.clone(), to_f32(&name, data, &shape)?);
            seen.insert(name);
        }
        let mut masks = BTreeMap::new();
        for s in &plan.scores {
            let n: usize = s.shape.iter().product();
            let data = get(&s.name, StDtype::U8, &[n.div_ceil(8)])?;
            let bits = unpack_bits(&data, n).map_err(|e| {
                err(LoadErrorKind::TensorMismatch {
                    name: s.name.clone(),
                    expected: format!("{n} mask bits"),
                    found: e,
                })
            })?;
            let vals: Vec<f32> = bits.into_iter().map(f32::from).collect();
            masks.insert(
                s.name.clone(),
                Tensor::from_vec(vals, s.shape.as_slice(), device)?,
            );
            seen.insert(s.name.clone());
        }
        let mut extra = BTreeMap::new();
        for (name, shape) in &manifest.extra {
            let data = get(name, StDtype::F32, shape)?;
            extra.insert(name.clone(), to_f32(name, data, shape)?);
            seen.insert(name.clone());
        }
        if let Some(unexpected) = st.names().into_iter().find(|n| !seen.contains(*n)) {
            return Err(err(LoadErrorKind::UnexpectedTensor(unexpected.to_string())));
        }
        let state = PetlState::from_fixed(plan, values, masks, device);
        Ok(LoadedState {
            state,
            extra,
            manifest,
        })
    }
}
