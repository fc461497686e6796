//! The trait the `#[propetl]` attribute implements for a model struct.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};
use crate::io::{LoadedState, Manifest};
use crate::optim::{reference_groups, GroupHyper, ParamGroup};
use crate::plan::PetlLayout;
use crate::rng::PetlRng;
use crate::spec::{AdapterSize, Method, PetlConfig};
use crate::state::{LayerPetl, PetlContext, PetlState};
use crate::storage::StorageReport;

/// A collection of repeated blocks (`Vec<T>` or `[T; N]`): what `#[propetl(layers)]` marks.
pub trait LayerStack {
    /// Number of blocks.
    fn layer_count(&self) -> usize;
}

impl<T> LayerStack for Vec<T> {
    fn layer_count(&self) -> usize {
        self.len()
    }
}

impl<T, const N: usize> LayerStack for [T; N] {
    fn layer_count(&self) -> usize {
        N
    }
}

/// Marker for the field that holds the PETL state (`#[propetl(state)]`): only [`PetlState`].
pub trait StateField {
    /// The state.
    fn as_state(&self) -> &PetlState;
    /// The state, mutably.
    fn as_state_mut(&mut self) -> &mut PetlState;
}

impl StateField for PetlState {
    fn as_state(&self) -> &PetlState {
        self
    }
    fn as_state_mut(&mut self) -> &mut PetlState {
        self
    }
}

/// What `#[propetl(...)]` implements for an annotated model struct. The required items are
/// generated; everything else is provided on top of them.
pub trait ProPetlModel {
    /// The compile-time description from the attribute.
    const PROPETL: PetlConfig;

    /// The PETL state field (`#[propetl(state)]`).
    fn petl(&self) -> &PetlState;

    /// The PETL state field, mutably.
    fn petl_mut(&mut self) -> &mut PetlState;

    /// Number of repeated blocks (`#[propetl(layers)]`).
    fn num_layers(&self) -> usize;

    /// Build a fresh PETL state for this model from the compile-time spec (with optional
    /// run-time numeric overrides), registering every trainable tensor in `varmap`.
    fn init_petl(
        layout: &PetlLayout,
        overrides: &NumericOverrides,
        varmap: &VarMap,
        rng: &mut PetlRng,
        device: &Device,
    ) -> Result<PetlState> {
        let cfg = overrides.apply(&Self::PROPETL)?;
        PetlState::new(&cfg, layout, varmap, rng, device)
    }

    /// The effective (masked) modules of every layer for `task`: call once per forward pass.
    fn petl_context(&self, task: &str) -> Result<PetlContext> {
        let ctx = self.petl().context(task)?;
        if ctx.len() != self.num_layers() {
            return Err(PetlError::config(format!(
                "PETL state has {} layers but the model has {}",
                ctx.len(),
                self.num_layers()
            )));
        }
        Ok(ctx)
    }

    /// The effective masked module of (`layer`, `task`).
    fn effective_module(&self, layer: usize, task: &str) -> Result<LayerPetl> {
        let ctx = self.petl_context(task)?;
        if layer >= ctx.len() {
            return Err(PetlError::Unknown {
                kind: "layer index",
                name: layer.to_string(),
                known: format!("0..{}", ctx.len()),
            });
        }
        Ok(ctx.layer(layer).clone())
    }

    /// The reference optimizer groups over every trainable variable of `varmap` (PETL
    /// tensors, scores and heads).
    fn optimizer_groups(&self, varmap: &VarMap, hyper: &GroupHyper) -> Vec<ParamGroup> {
        let vars = varmap.data().lock().expect("varmap lock").clone();
        reference_groups(vars, hyper)
    }

    /// The storage report (method page §6).
    fn storage_report(&self, backbone_params: usize, head_params: usize) -> Result<StorageReport> {
        StorageReport::from_plan(self.petl().plan(), backbone_params, head_params)
    }

    /// Save the PETL state plus `extra` tensors (heads).
    fn save_petl(
        &self,
        path: &Path,
        extra: &BTreeMap<String, Tensor>,
        backbone_params: usize,
    ) -> Result<Manifest> {
        self.petl().save(path, extra, backbone_params)
    }

    /// Read a saved state for this model (validated against its spec and layout).
    fn load_petl(&self, path: &Path) -> Result<LoadedState> {
        let s = self.petl();
        PetlState::load(path, s.config(), s.layout(), s.device())
    }

    /// Fix the masks (inference): top-k is computed once and cached.
    fn freeze_masks(&mut self) -> Result<()> {
        self.petl_mut().freeze()
    }

    /// Freeze and materialize dense per-layer modules for inference (method page §7).
    fn merge_for_inference(&mut self) -> Result<()> {
        self.petl_mut().merge()
    }
}
