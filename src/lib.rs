//! # propetl — ProPETL for Candle
//!
//! *One Network, Many Masks: Towards More Parameter-Efficient Transfer Learning*
//! (Zeng, Zhang & Lu, ACL 2023). One prototype PETL module (adapter, LoRA or prefix) is shared
//! across all layers (and tasks); each layer learns a binary mask that selects a sub-network of
//! it. Masks cost one bit per entry, so a task costs ~10% of an ordinary adapter's storage.
//!
//! A sketch (`ignore`: `Block` is yours); `examples/custom_transformer.rs` is the runnable,
//! tested version:
//!
//! ```ignore
//! use propetl::prelude::*;
//!
//! #[propetl(adapter, share = "layers", keep = 0.5)]
//! struct Encoder {
//!     #[propetl(layers)]
//!     blocks: Vec<Block>,
//!     #[propetl(state)]
//!     petl: PetlState,
//! }
//!
//! // once per forward pass: every layer's masked module
//! let ctx = encoder.petl_context("default")?;
//! // at the injection site of layer l: one call
//! let a = ctx.layer(l).adapter(&z)?;
//! ```
//!
//! Crates: [`runtime`] (masks, prototypes, optimizer, storage, save/load, the
//! [`TaskModel`](runtime::TaskModel) interface), the [`propetl`] attribute (from
//! `propetl-macros`), and [`models`] (RoBERTa/BERT, T5). This crate adds the trainer
//! ([`train()`]), data loaders, metrics and run directories; it prints nothing (progress goes
//! to a [`TrainObserver`]). The `propetl` command line lives in `propetl-cli`.

pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod export;
pub mod hub;
pub mod import;
pub mod metrics;
pub mod predict;
pub mod run;
pub mod sweep;
pub mod text_to_text;
pub mod train;

pub use run::{RunConfig, RunReport, Task};
pub use train::{train, TrainConfig, TrainData, TrainObserver};

pub use propetl_macros::propetl;
pub use propetl_models as models;
pub use propetl_runtime as runtime;

/// Everything a model file needs.
pub mod prelude {
    pub use crate::propetl;
    pub use crate::train::{TrainConfig, TrainData};
    pub use propetl_runtime::{
        ops, AdamW, Batch, Combine, Example, ForwardMode, GroupHyper, LayerPetl, LoraTarget,
        MaskKind, Method, NumericOverrides, PetlConfig, PetlContext, PetlLayout, PetlRng,
        PetlSites, PetlSpec, PetlState, Prediction, ProPetlModel, Role, Schedule, Share, Sites,
        StorageReport, TaskKind, TaskModel, Trainable,
    };
}
