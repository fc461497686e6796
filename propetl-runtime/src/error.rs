//! Typed errors of the runtime.

use std::path::PathBuf;

/// Everything that can go wrong in the ProPETL runtime.
#[derive(Debug, thiserror::Error)]
pub enum PetlError {
    /// An error raised by Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration value is out of range or inconsistent.
    #[error("invalid ProPETL configuration: {0}")]
    Config(String),
    /// A tensor had another shape than the one expected.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A (layer, task) or site that this state does not have.
    #[error("unknown {kind} `{name}` (known: {known})")]
    Unknown {
        /// What was looked up (layer, task, site, LoRA target).
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// The configuration needs an injection site the model's blocks do not declare.
    #[error(
        "{model} has no {missing} (its blocks declare: {supported}); pick a method it supports"
    )]
    UnsupportedSite {
        /// The model type.
        model: String,
        /// The missing site.
        missing: String,
        /// The sites the blocks declare.
        supported: String,
    },
    /// A score tensor contained NaN or infinity.
    #[error("mask scores `{0}` contain NaN or infinite values")]
    NonFiniteScores(String),
    /// A tensor to be saved contains NaN or infinity (a saved state must be finite).
    #[error("tensor `{name}` contains NaN or infinite values; refusing to save it")]
    NonFinite {
        /// Tensor name.
        name: String,
    },
    /// The loss became NaN or infinite.
    #[error("loss is not finite ({0}) at step {1}")]
    NonFiniteLoss(f32, usize),
    /// Loading a saved PETL state failed.
    #[error("cannot load PETL state from {path}: {kind}")]
    Load {
        /// The file being read.
        path: PathBuf,
        /// What exactly is wrong.
        kind: LoadErrorKind,
    },
    /// An error of a model built on the runtime (shapes, token ids, checkpoint contents).
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
    /// An I/O error with the path involved.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What is wrong with a saved PETL state file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadErrorKind {
    /// The file is not a valid (or is a truncated) safetensors file.
    #[error("not a valid safetensors file (truncated or corrupt): {0}")]
    Corrupt(String),
    /// The file has no `propetl.manifest` metadata entry.
    #[error("no ProPETL manifest in the file metadata")]
    MissingManifest,
    /// The manifest JSON does not parse.
    #[error("malformed manifest: {0}")]
    BadManifest(String),
    /// The manifest was written by an unknown format version.
    #[error(
        "unsupported manifest version {found} (this build writes version {supported} and \
         reads versions 1 to {supported})"
    )]
    UnsupportedVersion {
        /// Version found in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file holds another method/sharing/layout than the model it is loaded into.
    #[error("state was saved for {saved} but this model is {expected}")]
    WrongPrototype {
        /// Description of what the file holds.
        saved: String,
        /// Description of the model.
        expected: String,
    },
    /// A tensor the model needs is absent.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor in the file has the wrong shape or dtype.
    #[error("tensor `{name}`: expected {expected}, found {found}")]
    TensorMismatch {
        /// Tensor name.
        name: String,
        /// What the model expects.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// The file holds a tensor that the model does not know.
    #[error("unexpected tensor `{0}` (not part of this model's PETL state)")]
    UnexpectedTensor(String),
    /// The stored bytes of a tensor (or of the manifest, named `propetl.manifest`) do not
    /// match the CRC-32 recorded at save time: the file was corrupted or edited.
    #[error(
        "checksum mismatch in `{name}`: recorded CRC-32 {expected}, the stored bytes give \
         {found} (the file is corrupt or was edited)"
    )]
    Checksum {
        /// Tensor name, or `propetl.manifest`.
        name: String,
        /// The checksum recorded in the file.
        expected: String,
        /// The checksum of the bytes read.
        found: String,
    },
    /// A stored mask keeps another number of entries than its top-k binarization at the
    /// manifest's keep ratio does (`kept_count(entries, keep)`).
    #[error(
        "mask `{name}` keeps {found} of {entries} entries, but a top-k mask at keep {keep} \
         keeps {expected}"
    )]
    MaskCount {
        /// Mask name.
        name: String,
        /// Entries of the mask.
        entries: usize,
        /// The manifest's keep ratio.
        keep: f64,
        /// `kept_count(entries, keep)`.
        expected: usize,
        /// Ones in the stored mask.
        found: usize,
    },
    /// A stored f32 tensor holds NaN or infinity.
    #[error("tensor `{name}` contains NaN or infinite values")]
    NonFinite {
        /// Tensor name.
        name: String,
    },
}

/// Result alias of the runtime.
pub type Result<T, E = PetlError> = std::result::Result<T, E>;

impl PetlError {
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Self::Config(msg.into())
    }
}
