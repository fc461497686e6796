//! The traits the `#[propetl]` attribute implements for a model struct, and the injection-site
//! declaration of block types.
//!
//! - [`PetlSpec`]: the compile-time side (the `PROPETL` description, the blocks' [`Sites`],
//!   building a fresh state). Not object-safe (an associated const and a `self`-less
//!   constructor), and it does not need to be.
//! - [`ProPetlModel`]: the instance API (the state, per-task contexts, optimizer groups,
//!   storage, save/load, freezing, materializing). Object-safe: `Box<dyn ProPetlModel>` works,
//!   and so does every trait built on it (the trainer's `TaskModel`).
//! - [`PetlSites`]: what a block type declares about where a PETL module can go.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::error::{PetlError, Result};
use crate::io::{LoadedState, Manifest};
use crate::optim::{reference_groups, GroupHyper, ParamGroup, Trainable};
use crate::overrides::NumericOverrides;
use crate::plan::PetlLayout;
use crate::rng::PetlRng;
use crate::spec::{LoraTarget, Method, PetlConfig};
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

/// Where a block can take a PETL module: the adapter site after its FFN, LoRA on some
/// attention projections, prefix keys/values in its attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sites {
    /// The block calls `LayerPetl::adapter` (a bottleneck adapter after the FFN).
    pub adapter: bool,
    /// The projections the block adds a LoRA update to (`LayerPetl::lora_pair` through
    /// `ops::frozen_linear_lora`, or `LayerPetl::lora_delta` added to the output).
    pub lora: &'static [LoraTarget],
    /// The block prepends `LayerPetl::prefix_kv` to its attention keys and values.
    pub prefix: bool,
}

impl Sites {
    /// Every site: adapter, LoRA on q/k/v/o, prefix.
    pub const ALL: Sites = Sites {
        adapter: true,
        lora: &[LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O],
        prefix: true,
    };
    /// Only the adapter site.
    pub const ADAPTER: Sites = Sites {
        adapter: true,
        lora: &[],
        prefix: false,
    };

    /// Whether the block has a site for a method (`"adapter"`, `"lora"`, `"prefix"`); usable
    /// in constants, which is how the attribute rejects a missing site at compile time.
    pub const fn has_method(&self, method: &str) -> bool {
        match method.as_bytes() {
            b"adapter" => self.adapter,
            b"lora" => !self.lora.is_empty(),
            b"prefix" => self.prefix,
            _ => false,
        }
    }

    /// Whether the block can apply LoRA to `target`.
    pub const fn has_lora_target(&self, target: LoraTarget) -> bool {
        let mut i = 0;
        while i < self.lora.len() {
            if self.lora[i] as u8 == target as u8 {
                return true;
            }
            i += 1;
        }
        false
    }

    /// A clear error when `config` needs a site these blocks do not have; `model` names the
    /// model in the message.
    pub fn check(&self, config: &PetlConfig, model: &str) -> Result<()> {
        let missing = match &config.method {
            Method::Adapter { .. } if !self.adapter => Some("adapter site".to_string()),
            Method::Prefix { .. } if !self.prefix => Some("prefix site".to_string()),
            Method::Lora { targets, .. } => {
                let absent: Vec<String> = targets
                    .iter()
                    .filter(|t| !self.has_lora_target(**t))
                    .map(|t| t.to_string())
                    .collect();
                (!absent.is_empty()).then(|| format!("LoRA site on {}", absent.join(", ")))
            }
            _ => None,
        };
        match missing {
            None => Ok(()),
            Some(what) => Err(PetlError::UnsupportedSite {
                model: model.to_string(),
                missing: what,
                supported: self.describe(),
            }),
        }
    }

    /// `adapter, lora(q, v), prefix`-style list of the sites.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.adapter {
            parts.push("adapter".to_string());
        }
        if !self.lora.is_empty() {
            let t: Vec<String> = self.lora.iter().map(|t| t.to_string()).collect();
            parts.push(format!("lora({})", t.join(", ")));
        }
        if self.prefix {
            parts.push("prefix".to_string());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Implemented by a block type (the element of the `#[propetl(layers)]` field) to declare
/// where its `forward` applies PETL modules. The attribute refuses, at compile time, a method
/// the blocks have no site for; [`PetlSpec::init_petl`] checks the same at run time.
pub trait PetlSites {
    /// The block's injection sites.
    const SITES: Sites;
}

/// The compile-time side of an annotated model: generated by `#[propetl]`.
pub trait PetlSpec {
    /// The description from the attribute.
    const PROPETL: PetlConfig;
    /// The injection sites of the model's blocks.
    const SITES: Sites;

    /// Build a fresh PETL state for this model from the compile-time spec (with optional
    /// run-time numeric overrides), registering every trainable tensor in `varmap`. Errors
    /// when the blocks have no site for the method or an override is invalid.
    fn init_petl(
        layout: &PetlLayout,
        overrides: &NumericOverrides,
        varmap: &VarMap,
        rng: &mut PetlRng,
        device: &Device,
    ) -> Result<PetlState>
    where
        Self: Sized,
    {
        let cfg = overrides.apply(&Self::PROPETL)?;
        Self::SITES.check(&cfg, std::any::type_name::<Self>())?;
        PetlState::new(&cfg, layout, varmap, rng, device)
    }
}

/// The instance API of an annotated model (object-safe). The three required methods are
/// generated by `#[propetl]`; everything else is provided on top of them.
pub trait ProPetlModel {
    /// The PETL state field (`#[propetl(state)]`).
    fn petl(&self) -> &PetlState;

    /// The PETL state field, mutably.
    fn petl_mut(&mut self) -> &mut PetlState;

    /// Number of repeated blocks (`#[propetl(layers)]`).
    fn num_layers(&self) -> usize;

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

    /// The reference optimizer groups (method page §4) over the PETL state's trainable
    /// tensors plus `heads` (e.g. a classification head); roles come from the state.
    fn optimizer_groups(&self, hyper: &GroupHyper, heads: &[Trainable]) -> Vec<ParamGroup> {
        let mut all = self.petl().trainables();
        all.extend_from_slice(heads);
        reference_groups(all, hyper)
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

    /// Freeze the masks and cache the dense masked module of every layer per task (method
    /// page §7): inference then runs no top-k and builds no graph.
    fn materialize_for_inference(&mut self) -> Result<()> {
        self.petl_mut().materialize()
    }
}
