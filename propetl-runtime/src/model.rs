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

/// Numeric hyper-parameters a run-time (training) configuration may override; the structure
/// (method, sharing, mask kind, combination) stays what the attribute fixed at compile time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericOverrides {
    /// Keep ratio.
    pub keep: Option<f64>,
    /// Adapter reduction factor.
    pub reduction: Option<usize>,
    /// Adapter bottleneck width.
    pub bottleneck: Option<usize>,
    /// Adapter init standard deviation.
    pub init_std: Option<f64>,
    /// LoRA rank.
    pub r: Option<usize>,
    /// LoRA alpha.
    pub alpha: Option<f64>,
    /// Prefix length.
    pub length: Option<usize>,
    /// Prefix MLP width.
    pub hidden: Option<usize>,
}

impl NumericOverrides {
    /// Apply to a configuration. Errors when an override does not belong to the method.
    pub fn apply(&self, base: &PetlConfig) -> Result<PetlConfig> {
        let mut c = base.clone();
        if let Some(k) = self.keep {
            c.keep = k;
        }
        let foreign = |what: &str| {
            PetlError::config(format!("`{what}` does not apply to {}", base.method.name()))
        };
        match &mut c.method {
            Method::Adapter { size, init_std, .. } => {
                if self.reduction.is_some() && self.bottleneck.is_some() {
                    return Err(PetlError::config(
                        "give either reduction or bottleneck, not both",
                    ));
                }
                if let Some(r) = self.reduction {
                    *size = AdapterSize::Reduction(r);
                }
                if let Some(b) = self.bottleneck {
                    *size = AdapterSize::Bottleneck(b);
                }
                if let Some(s) = self.init_std {
                    *init_std = s;
                }
                for (set, n) in [
                    (self.r.is_some() || self.alpha.is_some(), "r/alpha"),
                    (
                        self.length.is_some() || self.hidden.is_some(),
                        "length/hidden",
                    ),
                ] {
                    if set {
                        return Err(foreign(n));
                    }
                }
            }
            Method::Lora { r, alpha, .. } => {
                if let Some(x) = self.r {
                    *r = x;
                }
                if let Some(x) = self.alpha {
                    *alpha = x;
                }
                if self.reduction.is_some()
                    || self.bottleneck.is_some()
                    || self.init_std.is_some()
                    || self.length.is_some()
                    || self.hidden.is_some()
                {
                    return Err(foreign("adapter/prefix sizes"));
                }
            }
            Method::Prefix { length, hidden } => {
                if let Some(x) = self.length {
                    *length = x;
                }
                if let Some(x) = self.hidden {
                    *hidden = x;
                }
                if self.reduction.is_some()
                    || self.bottleneck.is_some()
                    || self.init_std.is_some()
                    || self.r.is_some()
                    || self.alpha.is_some()
                {
                    return Err(foreign("adapter/LoRA sizes"));
                }
            }
        }
        c.validate()?;
        Ok(c)
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
