//! Saving and loading a trained PETL state.
//!
//! One safetensors file holds the prototype in its stored form (f32; prefixes as the
//! materialized `prefix.ejected`), every mask bit-packed (u8, LSB first), any extra tensors
//! (heads) as f32, and a versioned JSON [`Manifest`] in the file metadata under
//! `propetl.manifest`. Writes are atomic: a temp file in the same folder is synced, then renamed.
//!
//! ## Integrity (manifest version 2)
//!
//! - the manifest records the CRC-32 of every stored tensor's bytes ([`Manifest::checksums`],
//!   8 lowercase hex digits), and the metadata entry `propetl.manifest.crc32` holds the CRC-32
//!   of the manifest text itself: a flipped bit anywhere in the data or the manifest is a
//!   [`LoadErrorKind::Checksum`] naming the tensor (or `propetl.manifest`);
//! - every mask must keep exactly [`kept_count`]`(entries, keep)` entries (each stored mask is
//!   the top-k binarization of one score tensor; `or`/`and`/`add` combinations are applied at
//!   run time, never stored): otherwise [`LoadErrorKind::MaskCount`];
//! - the manifest's prototype and mask lists must be the plan's;
//! - every f32 value must be finite: saving refuses NaN/inf with [`PetlError::NonFinite`],
//!   loading with [`LoadErrorKind::NonFinite`].
//!
//! Loading checks structure first (manifest, configuration, tensor names, dtypes, shapes,
//! padding bits), then integrity (checksums, mask counts, finiteness), and fails with a typed
//! [`LoadErrorKind`]. Version 1 files (no checksums) are still read, with every check except
//! the checksums.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{LoadErrorKind, PetlError, Result};
use crate::mask::{kept_count, mask_to_bytes, pack_bits, unpack_bits};
use crate::plan::{PetlLayout, Plan};
use crate::spec::{Method, PetlConfig};
use crate::state::PetlState;
use crate::storage::StorageReport;

/// Format name in the manifest.
pub const FORMAT: &str = "propetl-state";
/// Manifest version this build writes (2: per-tensor and manifest checksums).
pub const VERSION: u32 = 2;
/// Oldest manifest version this build reads (1: no checksums).
pub const MIN_VERSION: u32 = 1;
/// Metadata key of the manifest.
pub const MANIFEST_KEY: &str = "propetl.manifest";
/// Metadata key of the manifest's CRC-32 (8 lowercase hex digits of the manifest text).
pub const MANIFEST_CHECKSUM_KEY: &str = "propetl.manifest.crc32";

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
    /// CRC-32 ([`checksum`]) of every stored tensor's bytes (packed bits for masks), by
    /// tensor name. Version 2; empty in version 1 files.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
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

/// The checksum stored for `bytes`: CRC-32 (IEEE 802.3, as zlib computes it) as 8 lowercase
/// hex digits.
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
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

/// The little-endian f32 bytes of `t`, refusing NaN and infinity (also values an f64 tensor
/// overflows to in f32).
pub(crate) fn finite_f32_bytes(name: &str, t: &Tensor) -> Result<Vec<u8>> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(PetlError::NonFinite {
            name: name.to_string(),
        });
    }
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// A tensor to serialize: safetensors dtype, shape, little-endian bytes.
pub(crate) type Blob = (StDtype, Vec<usize>, Vec<u8>);

/// Serialize `blobs` with the JSON manifest `json` under `key` and its CRC-32 under
/// `crc_key`, the manifest first in the metadata. safetensors writes the metadata from a
/// `HashMap`, in an order that varies from map to map; equal states must give byte-identical
/// files (a resumed run is compared with an uninterrupted one byte for byte), so this
/// serializes until the order is the canonical one: each try is an independent coin flip over
/// the two keys.
pub(crate) fn serialize_canonical(
    blobs: &BTreeMap<String, Blob>,
    key: &str,
    json: &str,
    crc_key: &str,
) -> Result<Vec<u8>> {
    let json_crc = checksum(json.as_bytes());
    let views = blobs
        .iter()
        .map(|(k, (dt, shape, data))| {
            TensorView::new(*dt, shape.clone(), data).map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PetlError::config(format!("safetensors view: {e}")))?;
    let canonical = format!("{{\"__metadata__\":{{\"{key}\":");
    for _ in 0..64 {
        let bytes = safetensors::tensor::serialize(
            views.clone(),
            Some(HashMap::from([
                (key.to_string(), json.to_string()),
                (crc_key.to_string(), json_crc.clone()),
            ])),
        )
        .map_err(|e| PetlError::config(format!("safetensors serialization: {e}")))?;
        if bytes.get(8..8 + canonical.len()) == Some(canonical.as_bytes()) {
            return Ok(bytes);
        }
    }
    Err(PetlError::config(
        "safetensors serialization: no canonical metadata order after 64 tries",
    ))
}

/// Stored prototype tensors and shapes (prefixes: the materialized `prefix.ejected`).
fn stored_prototype_shapes(plan: &Plan) -> Result<BTreeMap<String, Vec<usize>>> {
    Ok(match &plan.config.method {
        Method::Prefix { length, .. } => {
            let h = plan.layout.hidden;
            let layers = if plan.config.shares_layers() {
                1
            } else {
                plan.layout.layers.len()
            };
            let width = h
                .checked_mul(2)
                .and_then(|w| w.checked_mul(layers))
                .ok_or_else(|| {
                    PetlError::config(format!(
                        "size overflow: prefix width 2 × hidden {h} × {layers} layers overflows \
                         usize"
                    ))
                })?;
            BTreeMap::from([("prefix.ejected".to_string(), vec![*length, width])])
        }
        _ => plan
            .prototype
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect(),
    })
}

/// Stored masks and their unpacked shapes: one per score tensor.
fn stored_mask_shapes(plan: &Plan) -> BTreeMap<String, Vec<usize>> {
    plan.scores
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect()
}

/// `a, b, c` (or `none`).
fn names<'a>(it: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.into_iter().map(String::as_str).collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

impl PetlState {
    /// Save the trained state (prototype, current hard masks) plus `extra` tensors such as the
    /// head. `backbone_params` goes into the storage report of the manifest. Refuses NaN or
    /// infinity in any prototype or extra tensor ([`PetlError::NonFinite`] naming it); nothing
    /// is written then.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        extra: &BTreeMap<String, Tensor>,
        backbone_params: usize,
    ) -> Result<Manifest> {
        let (manifest, bytes) = self.save_to_bytes(extra, backbone_params)?;
        atomic_write(path.as_ref(), &bytes)?;
        Ok(manifest)
    }

    /// The bytes [`PetlState::save`] writes (a safetensors file), and the manifest in them.
    pub fn save_to_bytes(
        &self,
        extra: &BTreeMap<String, Tensor>,
        backbone_params: usize,
    ) -> Result<(Manifest, Vec<u8>)> {
        let plan = self.plan();
        if plan.is_empty() {
            return Err(PetlError::config(
                "a state without PETL modules (full fine-tuning) is saved with its backbone by \
                 the model (`TaskModel::save`, crate::weights), not as a PETL state",
            ));
        }
        let keep = plan.config.keep;
        let (proto, masks) = self.stored_tensors()?;
        let mut blobs: BTreeMap<String, Blob> = BTreeMap::new();
        for (name, t) in &proto {
            blobs.insert(
                name.clone(),
                (StDtype::F32, t.dims().to_vec(), finite_f32_bytes(name, t)?),
            );
        }
        let mut mask_shapes = BTreeMap::new();
        for (name, m) in &masks {
            let entries = mask_to_bytes(m)?;
            // the loader checks this; refuse to write a file it would reject
            let ones = entries.iter().filter(|&&b| b != 0).count();
            let expected = kept_count(entries.len(), keep);
            if ones != expected {
                return Err(PetlError::config(format!(
                    "mask `{name}` keeps {ones} of {} entries, but a top-k mask at keep {keep} \
                     keeps {expected}; refusing to save it",
                    entries.len()
                )));
            }
            let bits = pack_bits(&entries);
            blobs.insert(name.clone(), (StDtype::U8, vec![bits.len()], bits));
            mask_shapes.insert(name.clone(), m.dims().to_vec());
        }
        let mut extra_shapes = BTreeMap::new();
        let mut head_params = 0usize;
        for (name, t) in extra {
            if blobs.contains_key(name) {
                return Err(PetlError::config(format!(
                    "extra tensor `{name}` clashes with a PETL tensor"
                )));
            }
            head_params = head_params.checked_add(t.elem_count()).ok_or_else(|| {
                PetlError::config(format!(
                    "size overflow: head parameters ({head_params} + {} of `{name}`) overflow \
                     usize",
                    t.elem_count()
                ))
            })?;
            blobs.insert(
                name.clone(),
                (StDtype::F32, t.dims().to_vec(), finite_f32_bytes(name, t)?),
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
            checksums: blobs
                .iter()
                .map(|(k, (_, _, data))| (k.clone(), checksum(data)))
                .collect(),
            storage: StorageReport::from_plan(plan, backbone_params, head_params)?,
        };
        let json = serde_json::to_string(&manifest).expect("manifest serializes");
        let bytes = serialize_canonical(&blobs, MANIFEST_KEY, &json, MANIFEST_CHECKSUM_KEY)?;
        Ok((manifest, bytes))
    }

    /// Load a state saved by [`PetlState::save`] into a model described by `config` and
    /// `layout`. Everything is validated (see the [module docs](self)): manifest version,
    /// method and layout, every tensor's presence, dtype and shape, mask bit counts, unknown
    /// tensors, checksums, mask keep counts and finiteness.
    pub fn load(
        path: impl AsRef<Path>,
        config: &PetlConfig,
        layout: &PetlLayout,
        device: &Device,
    ) -> Result<LoadedState> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| PetlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        load_bytes(&bytes, path, config, layout, device)
    }

    /// [`PetlState::load`] from the bytes of a file (errors name the path `<bytes>`).
    pub fn load_from_bytes(
        bytes: &[u8],
        config: &PetlConfig,
        layout: &PetlLayout,
        device: &Device,
    ) -> Result<LoadedState> {
        load_bytes(bytes, Path::new("<bytes>"), config, layout, device)
    }
}

/// A mask as read: packed bytes (checksummed), unpacked 0/1 entries, shape.
struct StoredMask<'a> {
    packed: &'a [u8],
    bits: Vec<u8>,
    shape: &'a [usize],
}

fn load_bytes(
    bytes: &[u8],
    path: &Path,
    config: &PetlConfig,
    layout: &PetlLayout,
    device: &Device,
) -> Result<LoadedState> {
    let err = |kind| PetlError::Load {
        path: path.to_path_buf(),
        kind,
    };
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| err(LoadErrorKind::Corrupt(e.to_string())))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| err(LoadErrorKind::Corrupt(e.to_string())))?;
    let meta = meta.metadata().as_ref();
    let json = meta
        .and_then(|m| m.get(MANIFEST_KEY))
        .ok_or_else(|| err(LoadErrorKind::MissingManifest))?;
    let json_crc = meta.and_then(|m| m.get(MANIFEST_CHECKSUM_KEY));
    // a recorded manifest checksum is checked before anything is read from the manifest, so
    // that a corrupted version or keep digit is reported as corruption
    if let Some(recorded) = json_crc {
        let found = checksum(json.as_bytes());
        if *recorded != found {
            return Err(err(LoadErrorKind::Checksum {
                name: MANIFEST_KEY.to_string(),
                expected: recorded.clone(),
                found,
            }));
        }
    }
    let raw: serde_json::Value =
        serde_json::from_str(json).map_err(|e| err(LoadErrorKind::BadManifest(e.to_string())))?;
    if raw.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(err(LoadErrorKind::BadManifest(format!(
            "format is not `{FORMAT}`"
        ))));
    }
    let version = raw
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| err(LoadErrorKind::BadManifest("no version".into())))?;
    if !(MIN_VERSION as u64..=VERSION as u64).contains(&version) {
        return Err(err(LoadErrorKind::UnsupportedVersion {
            found: u32::try_from(version).unwrap_or(u32::MAX),
            supported: VERSION,
        }));
    }
    let manifest: Manifest =
        serde_json::from_value(raw).map_err(|e| err(LoadErrorKind::BadManifest(e.to_string())))?;
    let with_checksums = manifest.version >= 2;
    if !with_checksums && (json_crc.is_some() || !manifest.checksums.is_empty()) {
        return Err(err(LoadErrorKind::BadManifest(format!(
            "a version {} manifest carries no checksums, but this one does (edited version?)",
            manifest.version
        ))));
    }
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
    // the manifest's keep is the only value taken from the file: validate it like a config
    let plan = Plan::new(&manifest.config, layout)
        .map_err(|e| err(LoadErrorKind::BadManifest(e.to_string())))?;
    let keep = manifest.config.keep;

    // -- structure: every tensor present with its dtype and shape, nothing else --
    let get = |name: &str, dtype: StDtype, shape: &[usize]| -> Result<&[u8]> {
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
        Ok(view.data())
    };
    let proto_shapes = stored_prototype_shapes(&plan)?;
    let mask_shapes = stored_mask_shapes(&plan);
    if let Some(name) = manifest
        .extra
        .keys()
        .find(|n| proto_shapes.contains_key(*n) || mask_shapes.contains_key(*n))
    {
        return Err(err(LoadErrorKind::BadManifest(format!(
            "extra tensor `{name}` clashes with a PETL tensor"
        ))));
    }
    let mut f32_data: BTreeMap<&str, (&[u8], &[usize])> = BTreeMap::new();
    for (name, shape) in proto_shapes.iter().chain(&manifest.extra) {
        f32_data.insert(name.as_str(), (get(name, StDtype::F32, shape)?, shape));
    }
    let mut mask_data: BTreeMap<&str, StoredMask> = BTreeMap::new();
    for (name, shape) in &mask_shapes {
        // Plan::new checked that every element count fits in a usize
        let n: usize = shape.iter().product();
        let packed = get(name, StDtype::U8, &[n.div_ceil(8)])?;
        let bits = unpack_bits(packed, n).map_err(|e| {
            err(LoadErrorKind::TensorMismatch {
                name: name.clone(),
                expected: format!("{n} mask bits"),
                found: e,
            })
        })?;
        mask_data.insert(
            name.as_str(),
            StoredMask {
                packed,
                bits,
                shape,
            },
        );
    }
    let seen: BTreeSet<&str> = f32_data.keys().chain(mask_data.keys()).copied().collect();
    if let Some(unexpected) = st.names().into_iter().find(|n| !seen.contains(*n)) {
        return Err(err(LoadErrorKind::UnexpectedTensor(unexpected.to_string())));
    }

    // -- integrity: the manifest agrees with the plan, checksums, mask counts, finiteness --
    if with_checksums && json_crc.is_none() {
        return Err(err(LoadErrorKind::BadManifest(format!(
            "no manifest checksum (metadata entry `{MANIFEST_CHECKSUM_KEY}`)"
        ))));
    }
    if manifest.prototype != proto_shapes {
        return Err(err(LoadErrorKind::BadManifest(format!(
            "the manifest lists prototype tensors {:?}, the configuration stores {:?}",
            manifest.prototype, proto_shapes
        ))));
    }
    if manifest.masks != mask_shapes {
        return Err(err(LoadErrorKind::BadManifest(format!(
            "the manifest lists masks [{}], the configuration has [{}]",
            names(manifest.masks.keys()),
            names(mask_shapes.keys())
        ))));
    }
    if with_checksums {
        let listed: BTreeSet<&str> = manifest.checksums.keys().map(String::as_str).collect();
        if let Some(name) = seen.difference(&listed).next() {
            return Err(err(LoadErrorKind::BadManifest(format!(
                "no checksum for tensor `{name}`"
            ))));
        }
        if let Some(name) = listed.difference(&seen).next() {
            return Err(err(LoadErrorKind::BadManifest(format!(
                "a checksum for `{name}`, which the file does not hold"
            ))));
        }
        let stored = f32_data
            .iter()
            .map(|(name, (data, _))| (*name, *data))
            .chain(mask_data.iter().map(|(name, m)| (*name, m.packed)));
        for (name, data) in stored {
            let found = checksum(data);
            let recorded = &manifest.checksums[name];
            if *recorded != found {
                return Err(err(LoadErrorKind::Checksum {
                    name: name.to_string(),
                    expected: recorded.clone(),
                    found,
                }));
            }
        }
    }
    for (name, StoredMask { bits, .. }) in &mask_data {
        let found = bits.iter().filter(|&&b| b != 0).count();
        let expected = kept_count(bits.len(), keep);
        if found != expected {
            return Err(err(LoadErrorKind::MaskCount {
                name: name.to_string(),
                entries: bits.len(),
                keep,
                expected,
                found,
            }));
        }
    }
    let mut floats: BTreeMap<&str, (Vec<f32>, &[usize])> = BTreeMap::new();
    for (name, (data, shape)) in &f32_data {
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(err(LoadErrorKind::NonFinite {
                name: name.to_string(),
            }));
        }
        floats.insert(name, (v, shape));
    }

    // -- build --
    let mut values = BTreeMap::new();
    let mut extra = BTreeMap::new();
    for (name, (v, shape)) in floats {
        let t = Tensor::from_vec(v, shape, device)?;
        if proto_shapes.contains_key(name) {
            values.insert(name.to_string(), t);
        } else {
            extra.insert(name.to_string(), t);
        }
    }
    let mut masks = BTreeMap::new();
    for (name, StoredMask { bits, shape, .. }) in mask_data {
        let vals: Vec<f32> = bits.into_iter().map(f32::from).collect();
        masks.insert(name.to_string(), Tensor::from_vec(vals, shape, device)?);
    }
    let state = PetlState::from_fixed(plan, values, masks, device);
    Ok(LoadedState {
        state,
        extra,
        manifest,
    })
}
