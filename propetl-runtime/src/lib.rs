//! Runtime of **ProPETL** ("One Network, Many Masks", Zeng, Zhang & Lu, ACL 2023) for Candle.
//!
//! One prototype PETL module (adapter, LoRA pair or prefix) is shared by every layer (and
//! task); each use learns a binary mask over it. This crate holds everything the
//! `#[propetl]` attribute and the models build on:
//!
//! - [`spec`]: the description of a configuration ([`PetlConfig`]);
//! - [`plan`]: every tensor name and shape of a configuration on a model ([`Plan`]);
//! - [`mask`]: top-k binarization, straight-through gradients, combination, bit packing;
//! - [`state`]: the trainable prototype + mask bank ([`PetlState`]) and the per-forward
//!   effective modules ([`PetlContext`]);
//! - [`optim`]: AdamW with parameter groups, warmup/decay schedule, gradient clipping;
//! - [`storage`]: the storage report of method page §6;
//! - [`model`]: the [`PetlSpec`] and [`ProPetlModel`] traits the attribute implements, and
//!   the [`PetlSites`] declaration of block types;
//! - [`task`]: the [`TaskModel`] interface the trainer uses;
//! - [`device`]: devices by name ([`DeviceSpec`]);
//! - [`io`]: bit-packed save/load with a versioned manifest;
//! - [`weights`]: checked f32 weight files (full fine-tuning's backbone + head);
//! - [`ops`]: differentiable softmax / LayerNorm / losses (Candle 0.11's fused ones drop
//!   gradients).

pub mod alloc;
pub mod device;
pub mod error;
mod fused;
pub mod io;
pub mod mask;
pub mod model;
pub mod ops;
pub mod optim;
pub mod overrides;
pub mod parallel;
pub mod plan;
pub mod rng;
pub mod spec;
pub mod state;
pub mod storage;
pub mod task;
pub mod variant;
pub mod weights;

pub use device::DeviceSpec;
pub use error::{LoadErrorKind, PetlError, Result};
pub use io::{LoadedState, Manifest};
pub use model::{LayerStack, PetlSites, PetlSpec, ProPetlModel, Sites, StateField};
pub use optim::{
    clip_grad_norm, reference_groups, AdamW, GroupHyper, ParamGroup, Role, Schedule, Trainable,
};
pub use overrides::NumericOverrides;
pub use plan::{PetlLayout, Plan};
pub use rng::{PetlRng, RngState};
pub use spec::{Activation, AdapterSize, Combine, LoraTarget, MaskKind, Method, PetlConfig, Share};
pub use state::{LayerPetl, PetlContext, PetlState};
pub use storage::StorageReport;
pub use task::{Batch, Example, ForwardMode, Prediction, TaskKind, TaskModel};
pub use variant::Variant;
