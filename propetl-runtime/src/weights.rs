//! Checked f32 weight files: what full fine-tuning saves (every backbone weight plus the
//! head, under their Hugging Face names), with the integrity guarantees of [`crate::io`].
//!
//! One safetensors file holds every tensor as f32 and a JSON [`WeightsManifest`] under
//! `propetl.weights` (format, version, shapes, the CRC-32 of every tensor's bytes, the
//! storage report), plus the manifest's own CRC-32 under `propetl.weights.crc32`. Writes are
//! atomic and byte-deterministic; saving refuses NaN/inf. Loading checks, in order: the
//! manifest's checksum, format and version, that the file holds exactly the expected tensor
//! names with the expected shapes (f32), every tensor's checksum, and finiteness — each
//! failure a typed [`LoadErrorKind`] naming the tensor.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{LoadErrorKind, PetlError, Result};
use crate::io::{atomic_write, checksum, finite_f32_bytes, serialize_canonical, Blob};
use crate::storage::StorageReport;

/// Format name in the manifest.
pub const WEIGHTS_FORMAT: &str = "propetl-weights";
/// Manifest version this build writes and reads.
pub const WEIGHTS_VERSION: u32 = 1;
/// Metadata key of the manifest.
pub const WEIGHTS_KEY: &str = "propetl.weights";
/// Metadata key of the manifest's CRC-32.
pub const WEIGHTS_CHECKSUM_KEY: &str = "propetl.weights.crc32";

/// The JSON manifest of a weight file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsManifest {
    /// Always [`WEIGHTS_FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// What the weights are (e.g. `full fine-tuning of bert (6 layers, hidden 384)`).
    pub description: String,
    /// Every tensor's shape, by name.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// CRC-32 ([`checksum`]) of every tensor's bytes, by name.
    pub checksums: BTreeMap<String, String>,
    /// Storage report at save time.
    pub storage: StorageReport,
}

/// The bytes [`save_weights`] writes, and the manifest in them.
pub fn weights_to_bytes(
    tensors: &BTreeMap<String, Tensor>,
    description: &str,
    storage: &StorageReport,
) -> Result<(WeightsManifest, Vec<u8>)> {
    let mut blobs: BTreeMap<String, Blob> = BTreeMap::new();
    for (name, t) in tensors {
        blobs.insert(
            name.clone(),
            (StDtype::F32, t.dims().to_vec(), finite_f32_bytes(name, t)?),
        );
    }
    let manifest = WeightsManifest {
        format: WEIGHTS_FORMAT.to_string(),
        version: WEIGHTS_VERSION,
        description: description.to_string(),
        shapes: tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect(),
        checksums: blobs
            .iter()
            .map(|(k, (_, _, data))| (k.clone(), checksum(data)))
            .collect(),
        storage: storage.clone(),
    };
    let json = serde_json::to_string(&manifest).expect("manifest serializes");
    let bytes = serialize_canonical(&blobs, WEIGHTS_KEY, &json, WEIGHTS_CHECKSUM_KEY)?;
    Ok((manifest, bytes))
}

/// Save `tensors` (as f32) atomically to `path`; refuses NaN or infinity
/// ([`PetlError::NonFinite`] naming the tensor) before anything is written.
pub fn save_weights(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    description: &str,
    storage: &StorageReport,
) -> Result<WeightsManifest> {
    let (manifest, bytes) = weights_to_bytes(tensors, description, storage)?;
    atomic_write(path, &bytes)?;
    Ok(manifest)
}

/// Load a weight file whose tensors must be exactly `expected` (name → shape).
pub fn load_weights(
    path: &Path,
    expected: &BTreeMap<String, Vec<usize>>,
    device: &Device,
) -> Result<(WeightsManifest, BTreeMap<String, Tensor>)> {
    let bytes = std::fs::read(path).map_err(|source| PetlError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    weights_from_bytes(&bytes, path, expected, device)
}

/// [`load_weights`] from bytes in memory (`path` names them in errors).
pub fn weights_from_bytes(
    bytes: &[u8],
    path: &Path,
    expected: &BTreeMap<String, Vec<usize>>,
    device: &Device,
) -> Result<(WeightsManifest, BTreeMap<String, Tensor>)> {
    let err = |kind| PetlError::Load {
        path: path.to_path_buf(),
        kind,
    };
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| err(LoadErrorKind::Corrupt(e.to_string())))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| err(LoadErrorKind::Corrupt(e.to_string())))?;
    let meta = meta.metadata().as_ref();
    let json = meta.and_then(|m| m.get(WEIGHTS_KEY)).ok_or_else(|| {
        err(LoadErrorKind::BadManifest(format!(
            "no `{WEIGHTS_KEY}` metadata: not a propetl weight file (full fine-tuning)"
        )))
    })?;
    let recorded = meta
        .and_then(|m| m.get(WEIGHTS_CHECKSUM_KEY))
        .ok_or_else(|| {
            err(LoadErrorKind::BadManifest(format!(
                "no `{WEIGHTS_CHECKSUM_KEY}` metadata"
            )))
        })?;
    let found = checksum(json.as_bytes());
    if *recorded != found {
        return Err(err(LoadErrorKind::Checksum {
            name: WEIGHTS_KEY.to_string(),
            expected: recorded.clone(),
            found,
        }));
    }
    let manifest: WeightsManifest =
        serde_json::from_str(json).map_err(|e| err(LoadErrorKind::BadManifest(e.to_string())))?;
    if manifest.format != WEIGHTS_FORMAT {
        return Err(err(LoadErrorKind::BadManifest(format!(
            "format is `{}`, not `{WEIGHTS_FORMAT}`",
            manifest.format
        ))));
    }
    if manifest.version != WEIGHTS_VERSION {
        return Err(err(LoadErrorKind::UnsupportedVersion {
            found: manifest.version,
            supported: WEIGHTS_VERSION,
        }));
    }
    // structure: exactly the expected names, shapes and dtype, in the file and the manifest
    for (name, shape) in expected {
        let view = st
            .tensor(name)
            .map_err(|_| err(LoadErrorKind::MissingTensor(name.clone())))?;
        if view.dtype() != StDtype::F32 || view.shape() != shape.as_slice() {
            return Err(err(LoadErrorKind::TensorMismatch {
                name: name.clone(),
                expected: format!("F32 {shape:?}"),
                found: format!("{:?} {:?}", view.dtype(), view.shape()),
            }));
        }
    }
    if let Some(extra) = st.names().into_iter().find(|n| !expected.contains_key(*n)) {
        return Err(err(LoadErrorKind::UnexpectedTensor(extra.to_string())));
    }
    if manifest.shapes != *expected || manifest.checksums.len() != expected.len() {
        return Err(err(LoadErrorKind::BadManifest(
            "the manifest's tensor list differs from the file's".to_string(),
        )));
    }
    // integrity: checksums, then finiteness
    let mut out = BTreeMap::new();
    for (name, shape) in expected {
        let data = st.tensor(name).expect("checked above").data();
        let recorded = manifest.checksums.get(name).ok_or_else(|| {
            err(LoadErrorKind::BadManifest(format!(
                "no checksum for `{name}`"
            )))
        })?;
        let found = checksum(data);
        if *recorded != found {
            return Err(err(LoadErrorKind::Checksum {
                name: name.clone(),
                expected: recorded.clone(),
                found,
            }));
        }
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(err(LoadErrorKind::NonFinite { name: name.clone() }));
        }
        out.insert(
            name.clone(),
            Tensor::from_vec(values, shape.as_slice(), device)?,
        );
    }
    Ok((manifest, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors() -> BTreeMap<String, Tensor> {
        let d = Device::Cpu;
        BTreeMap::from([
            (
                "a.weight".to_string(),
                Tensor::arange(0f32, 6.0, &d)
                    .unwrap()
                    .reshape((2, 3))
                    .unwrap(),
            ),
            (
                "b.bias".to_string(),
                Tensor::new(&[0.5f32, -1.0], &d).unwrap(),
            ),
        ])
    }

    fn shapes() -> BTreeMap<String, Vec<usize>> {
        tensors()
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect()
    }

    fn storage() -> StorageReport {
        StorageReport::full_fine_tuning(8, 10, 0).unwrap()
    }

    #[test]
    fn round_trips_bit_exactly_and_deterministically() {
        let (m, bytes) = weights_to_bytes(&tensors(), "test", &storage()).unwrap();
        let (_, again) = weights_to_bytes(&tensors(), "test", &storage()).unwrap();
        assert_eq!(bytes, again);
        let (m2, back) =
            weights_from_bytes(&bytes, Path::new("x"), &shapes(), &Device::Cpu).unwrap();
        assert_eq!(m, m2);
        for (k, t) in tensors() {
            let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = back[&k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn refuses_non_finite_before_writing() {
        let mut t = tensors();
        t.insert(
            "nan".into(),
            Tensor::new(&[f32::NAN], &Device::Cpu).unwrap(),
        );
        let dir = std::env::temp_dir().join(format!("propetl-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let e = save_weights(&path, &t, "x", &storage()).unwrap_err();
        assert!(
            matches!(e, PetlError::NonFinite { ref name } if name == "nan"),
            "{e}"
        );
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_single_bit_flip_is_an_error_or_identical() {
        let (_, bytes) = weights_to_bytes(&tensors(), "test", &storage()).unwrap();
        let reference =
            weights_from_bytes(&bytes, Path::new("x"), &shapes(), &Device::Cpu).unwrap();
        for i in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok((m, t)) = weights_from_bytes(&b, Path::new("x"), &shapes(), &Device::Cpu)
                {
                    // only bytes that do not change the content may load (JSON whitespace
                    // cannot be flipped without breaking the CRC; header padding can)
                    assert_eq!(m, reference.0, "byte {i} bit {bit}");
                    for (k, v) in &t {
                        assert_eq!(
                            v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                            reference.1[k]
                                .flatten_all()
                                .unwrap()
                                .to_vec1::<f32>()
                                .unwrap(),
                            "byte {i} bit {bit}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_names_and_shapes_are_named() {
        let (_, bytes) = weights_to_bytes(&tensors(), "test", &storage()).unwrap();
        let mut expect = shapes();
        expect.insert("c.weight".into(), vec![1]);
        let e = weights_from_bytes(&bytes, Path::new("x"), &expect, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("c.weight"), "{e}");
        let mut expect = shapes();
        expect.remove("b.bias");
        let e = weights_from_bytes(&bytes, Path::new("x"), &expect, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("b.bias"), "{e}");
        let mut expect = shapes();
        expect.insert("a.weight".into(), vec![3, 2]);
        let e = weights_from_bytes(&bytes, Path::new("x"), &expect, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("a.weight"), "{e}");
    }
}
