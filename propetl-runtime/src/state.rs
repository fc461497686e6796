//! [`PetlState`]: the trainable ProPETL state of one model (prototype + mask bank), and
//! [`PetlContext`]: the effective, masked modules of every layer for one task.
//!
//! A model calls [`PetlState::context`] once per forward pass; each injection site then makes
//! one call on its [`LayerPetl`] (`adapter`, `lora_pair` / `lora_delta` or `prefix_kv`). The context
//! binarizes every score tensor once (task masks once per task, not once per layer) and
//! applies `W ⊙ M` with the straight-through gradient, so the prototype's gradient is the sum
//! over all its uses.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::error::{PetlError, Result};
use crate::mask;
use crate::ops;
use crate::optim::{Role, Trainable};
use crate::plan::{layer_mask_name, task_layer_mask_name, task_mask_name, Init, Plan};
use crate::rng::PetlRng;
use crate::spec::{Activation, LoraTarget, Method, PetlConfig, Share};

pub use crate::plan::PetlLayout;

/// Where the prototype values come from.
#[derive(Debug, Clone)]
enum Values {
    /// Trainable variables.
    Trainable(BTreeMap<String, Var>),
    /// Fixed tensors loaded for inference (prefix stored as its materialized output).
    Fixed(BTreeMap<String, Tensor>),
}

/// The PETL state of one model: the prototype, the mask scores (or frozen masks), and the
/// plan that names them.
#[derive(Debug, Clone)]
pub struct PetlState {
    plan: Plan,
    values: Values,
    scores: BTreeMap<String, Var>,
    /// Hard masks fixed by [`PetlState::freeze`] or loaded from disk.
    frozen: Option<BTreeMap<String, Tensor>>,
    /// Per-task contexts cached by [`PetlState::materialize`].
    materialized: Arc<Mutex<HashMap<String, PetlContext>>>,
    is_materialized: bool,
    device: Device,
}

impl PetlState {
    /// Create a fresh state, registering every trainable tensor in `varmap` under its stable
    /// name (see [`crate::plan`]). Initialization follows the method page and draws from `rng`.
    pub fn new(
        config: &PetlConfig,
        layout: &PetlLayout,
        varmap: &VarMap,
        rng: &mut PetlRng,
        device: &Device,
    ) -> Result<Self> {
        let plan = Plan::new(config, layout)?;
        let mut values = BTreeMap::new();
        let mut data = varmap.data().lock().expect("varmap lock poisoned");
        for p in &plan.prototype {
            let t = match p.init {
                Init::Normal(std) => rng.normal(p.shape.as_slice(), std, device)?,
                Init::Zeros => Tensor::zeros(p.shape.as_slice(), DType::F32, device)?,
                Init::KaimingUniform => rng.kaiming_uniform(p.shape.as_slice(), device)?,
                Init::LinearBias { fan_in } => {
                    rng.uniform(p.shape.as_slice(), 1.0 / (fan_in as f64).sqrt(), device)?
                }
            };
            let v = Var::from_tensor(&t)?;
            data.insert(p.name.clone(), v.clone());
            values.insert(p.name.clone(), v);
        }
        let mut scores = BTreeMap::new();
        for s in &plan.scores {
            let bound = 1.0 / (s.fan_in as f64).sqrt();
            let v = Var::from_tensor(&rng.uniform(s.shape.as_slice(), bound, device)?)?;
            data.insert(s.name.clone(), v.clone());
            scores.insert(s.name.clone(), v);
        }
        Ok(Self {
            plan,
            values: Values::Trainable(values),
            scores,
            frozen: None,
            materialized: Default::default(),
            is_materialized: false,
            device: device.clone(),
        })
    }

    /// A state without PETL modules over `layout` (full fine-tuning: the backbone itself
    /// trains). Its contexts are identities, it has no trainables, and it cannot be saved.
    pub fn empty(layout: &PetlLayout, device: &Device) -> Result<Self> {
        Ok(Self {
            plan: Plan::empty(layout)?,
            values: Values::Trainable(BTreeMap::new()),
            scores: BTreeMap::new(),
            frozen: None,
            materialized: Default::default(),
            is_materialized: false,
            device: device.clone(),
        })
    }

    /// An inference-only state from fixed tensors and hard masks (used by the loader).
    pub(crate) fn from_fixed(
        plan: Plan,
        values: BTreeMap<String, Tensor>,
        masks: BTreeMap<String, Tensor>,
        device: &Device,
    ) -> Self {
        Self {
            plan,
            values: Values::Fixed(values),
            scores: BTreeMap::new(),
            frozen: Some(masks),
            materialized: Default::default(),
            is_materialized: false,
            device: device.clone(),
        }
    }

    /// The tensor plan (names, shapes, sites).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The configuration.
    pub fn config(&self) -> &PetlConfig {
        &self.plan.config
    }

    /// The layout.
    pub fn layout(&self) -> &PetlLayout {
        &self.plan.layout
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Trainable prototype variables by name (empty for a loaded, inference-only state).
    pub fn prototype_vars(&self) -> Vec<(String, Var)> {
        match &self.values {
            Values::Trainable(v) => v.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Values::Fixed(_) => Vec::new(),
        }
    }

    /// Mask-score variables by name (empty once loaded from disk).
    pub fn score_vars(&self) -> Vec<(String, Var)> {
        self.scores
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every trainable tensor with its optimizer role: prototype tensors (roles from the
    /// plan) and mask scores ([`Role::Mask`]). Empty for a loaded, inference-only state.
    pub fn trainables(&self) -> Vec<Trainable> {
        let mut out = Vec::new();
        if let Values::Trainable(vars) = &self.values {
            for p in &self.plan.prototype {
                if let Some(v) = vars.get(&p.name) {
                    out.push(Trainable::new(p.name.clone(), v.clone(), p.role));
                }
            }
        }
        for (name, var) in &self.scores {
            out.push(Trainable::new(name.clone(), var.clone(), Role::Mask));
        }
        out
    }

    /// Whether masks are fixed (after [`freeze`](Self::freeze) or loading).
    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Fix every mask at its current binarization. Later contexts reuse these masks instead
    /// of recomputing top-k, and carry no gradient to the scores.
    pub fn freeze(&mut self) -> Result<()> {
        let mut out = BTreeMap::new();
        for (name, var) in &self.scores {
            out.insert(
                name.clone(),
                mask::binarize(var.as_tensor(), self.plan.config.keep, name)?,
            );
        }
        self.frozen = Some(out);
        self.materialized.lock().expect("lock").clear();
        Ok(())
    }

    /// Undo [`freeze`](Self::freeze) and [`materialize`](Self::materialize) (training again). Errors for a
    /// loaded state, which has no scores.
    pub fn unfreeze(&mut self) -> Result<()> {
        if matches!(self.values, Values::Fixed(_)) {
            return Err(PetlError::config(
                "a loaded PETL state has no scores and cannot be trained",
            ));
        }
        self.frozen = None;
        self.is_materialized = false;
        self.materialized.lock().expect("lock").clear();
        Ok(())
    }

    /// Freeze masks and materialize dense per-layer modules once per task (method page §7):
    /// `D ⊙ M`, `U ⊙ M` per layer, LoRA factors masked and folded into one weight delta per
    /// projection ([`LayerPetl::merged_lora`]), the prefix MLP evaluated once.
    /// Contexts are then served from a cache (no top-k, no MLP, no graph).
    pub fn materialize(&mut self) -> Result<()> {
        if !self.is_frozen() {
            self.freeze()?;
        }
        self.is_materialized = true;
        Ok(())
    }

    /// The hard masks in use: frozen ones, or the current binarization of the scores.
    pub fn hard_masks(&self) -> Result<BTreeMap<String, Tensor>> {
        if let Some(f) = &self.frozen {
            return Ok(f.clone());
        }
        let mut out = BTreeMap::new();
        for (name, var) in &self.scores {
            out.insert(
                name.clone(),
                mask::binarize(var.as_tensor(), self.plan.config.keep, name)?,
            );
        }
        Ok(out)
    }

    fn value(&self, name: &str) -> Result<Tensor> {
        let found = match &self.values {
            Values::Trainable(v) => v.get(name).map(|v| v.as_tensor().clone()),
            Values::Fixed(v) => v.get(name).cloned(),
        };
        found.ok_or_else(|| PetlError::Unknown {
            kind: "prototype tensor",
            name: name.to_string(),
            known: self
                .plan
                .prototype
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The mask of one score tensor: frozen, or freshly binarized with the STE gradient.
    fn mask_of(&self, name: &str, cache: &mut HashMap<String, Tensor>) -> Result<Tensor> {
        if let Some(m) = cache.get(name) {
            return Ok(m.clone());
        }
        let m = match &self.frozen {
            Some(f) => f.get(name).cloned().ok_or_else(|| PetlError::Unknown {
                kind: "mask",
                name: name.to_string(),
                known: f.keys().cloned().collect::<Vec<_>>().join(", "),
            })?,
            None => {
                let var = self.scores.get(name).ok_or_else(|| PetlError::Unknown {
                    kind: "mask scores",
                    name: name.to_string(),
                    known: self.scores.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
                mask::ste_mask(var.as_tensor(), self.plan.config.keep, name)?
            }
        };
        cache.insert(name.to_string(), m.clone());
        Ok(m)
    }

    /// The effective mask of `site` at (`layer`, `task`), or `None` when unmasked.
    pub fn effective_mask(&self, site: &str, layer: &str, task: &str) -> Result<Option<Tensor>> {
        self.effective_mask_cached(site, layer, task, &mut HashMap::new())
    }

    fn effective_mask_cached(
        &self,
        site: &str,
        layer: &str,
        task: &str,
        cache: &mut HashMap<String, Tensor>,
    ) -> Result<Option<Tensor>> {
        let cfg = &self.plan.config;
        if !cfg.is_masked() {
            return Ok(None);
        }
        Ok(Some(match cfg.share {
            Share::None => return Ok(None),
            Share::Layers => self.mask_of(&layer_mask_name(layer, site), cache)?,
            Share::Tasks => self.mask_of(&task_layer_mask_name(task, layer, site), cache)?,
            Share::LayersTasks => {
                let t = self.mask_of(&task_mask_name(task, site), cache)?;
                let l = self.mask_of(&layer_mask_name(layer, site), cache)?;
                mask::combine(&t, &l, cfg.combine)?
            }
        }))
    }

    /// The effective modules of every layer for `task` (one call per forward pass).
    pub fn context(&self, task: &str) -> Result<PetlContext> {
        self.plan.layout.task_index(task)?;
        if self.is_materialized {
            if let Some(c) = self.materialized.lock().expect("lock").get(task) {
                return Ok(c.clone());
            }
        }
        let ctx = self.build_context(task)?;
        if self.is_materialized {
            let ctx = ctx.for_inference()?;
            self.materialized
                .lock()
                .expect("lock")
                .insert(task.to_string(), ctx.clone());
            return Ok(ctx);
        }
        Ok(ctx)
    }

    fn masked(
        &self,
        value: Tensor,
        site: &str,
        layer: &str,
        task: &str,
        cache: &mut HashMap<String, Tensor>,
    ) -> Result<Tensor> {
        match self.effective_mask_cached(site, layer, task, cache)? {
            Some(m) => Ok(value.mul(&m)?),
            None => Ok(value),
        }
    }

    fn build_context(&self, task: &str) -> Result<PetlContext> {
        let plan = &self.plan;
        if plan.is_empty() {
            return Ok(PetlContext::identity(plan.layout.layers.len()));
        }
        let mut cache = HashMap::new();
        let mut layers = Vec::with_capacity(plan.layout.layers.len());
        match &plan.config.method {
            Method::Adapter { activation, .. } => {
                for layer in &plan.layout.layers {
                    let v = |s: &str| self.value(&plan.instance_name(layer, s));
                    let down = self.masked(v("down.weight")?, "down", layer, task, &mut cache)?;
                    let up = self.masked(v("up.weight")?, "up", layer, task, &mut cache)?;
                    layers.push(LayerPetl::Adapter(AdapterModule {
                        down_weight: down,
                        down_bias: v("down.bias")?,
                        up_weight: up,
                        up_bias: v("up.bias")?,
                        activation: *activation,
                    }));
                }
            }
            Method::Lora { r, alpha, targets } => {
                let scale = alpha / *r as f64;
                for layer in &plan.layout.layers {
                    let mut parts = Vec::new();
                    for t in targets.iter() {
                        let a_site = format!("{t}.A");
                        let b_site = format!("{t}.B");
                        let a = self.value(&plan.instance_name(layer, &a_site))?;
                        let b = self.value(&plan.instance_name(layer, &b_site))?;
                        let a = self.masked(a, &a_site, layer, task, &mut cache)?;
                        let b = self.masked(b, &b_site, layer, task, &mut cache)?;
                        parts.push(LoraModule {
                            target: *t,
                            a,
                            b,
                            scale,
                            merged_weight: None,
                        });
                    }
                    layers.push(LayerPetl::Lora(parts));
                }
            }
            Method::Prefix { length, .. } => {
                let h = plan.layout.hidden;
                let all = match &self.values {
                    Values::Fixed(v) if v.contains_key("prefix.ejected") => {
                        v["prefix.ejected"].clone()
                    }
                    _ => self.prefix_mlp_output()?,
                };
                let shared = plan.config.shares_layers();
                for (l, layer) in plan.layout.layers.iter().enumerate() {
                    let p = if shared {
                        all.clone()
                    } else {
                        all.narrow(1, l * 2 * h, 2 * h)?
                    };
                    let p = self.masked(p, "prefix", layer, task, &mut cache)?;
                    layers.push(LayerPetl::Prefix(PrefixModule {
                        keys: p.narrow(1, 0, h)?,
                        values: p.narrow(1, h, h)?,
                        length: *length,
                    }));
                }
            }
        }
        Ok(PetlContext { layers })
    }

    /// `mlp2(tanh(mlp0(wte)))`: the prefix before masking, `[P, 2H]` (`[P, L·2H]` unshared).
    pub fn prefix_mlp_output(&self) -> Result<Tensor> {
        let wte = self.value("prefix.wte")?;
        let h0 = ops::linear(
            &wte,
            &self.value("prefix.mlp0.weight")?,
            Some(&self.value("prefix.mlp0.bias")?),
        )?
        .tanh()?;
        Ok(ops::linear(
            &h0,
            &self.value("prefix.mlp2.weight")?,
            Some(&self.value("prefix.mlp2.bias")?),
        )?)
    }

    /// The tensors to store (prototype in stored form, hard masks): used by the saver.
    pub(crate) fn stored_tensors(
        &self,
    ) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, Tensor>)> {
        let mut proto = BTreeMap::new();
        if matches!(self.plan.config.method, Method::Prefix { .. }) {
            let p = match &self.values {
                Values::Fixed(v) if v.contains_key("prefix.ejected") => v["prefix.ejected"].clone(),
                _ => self.prefix_mlp_output()?.detach(),
            };
            proto.insert("prefix.ejected".to_string(), p);
        } else {
            for p in &self.plan.prototype {
                proto.insert(p.name.clone(), self.value(&p.name)?.detach());
            }
        }
        Ok((proto, self.hard_masks()?))
    }

    /// Copy values into the trainable variables (e.g. from a parity fixture). Names must exist
    /// and shapes must match.
    pub fn set_values(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        for (name, t) in tensors {
            let var = match (&self.values, self.scores.get(name)) {
                (_, Some(v)) => v,
                (Values::Trainable(vals), None) => {
                    vals.get(name).ok_or_else(|| PetlError::Unknown {
                        kind: "PETL tensor",
                        name: name.clone(),
                        known: vals
                            .keys()
                            .chain(self.scores.keys())
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?
                }
                (Values::Fixed(_), None) => {
                    return Err(PetlError::config("cannot set values of a loaded state"))
                }
            };
            if var.dims() != t.dims() {
                return Err(PetlError::Shape {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(&self.device)?)?;
        }
        self.materialized.lock().expect("lock").clear();
        Ok(())
    }
}

/// The effective modules of all layers for one task.
#[derive(Debug, Clone)]
pub struct PetlContext {
    layers: Vec<LayerPetl>,
}

impl PetlContext {
    /// A context of `n` layers without any PETL module (the plain frozen backbone).
    pub fn identity(n: usize) -> Self {
        Self {
            layers: vec![LayerPetl::Identity; n],
        }
    }

    /// The module of layer index `l`.
    pub fn layer(&self, l: usize) -> &LayerPetl {
        &self.layers[l]
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The context of a materialized state: every tensor detached (no graph), and each LoRA
    /// pair also folded into one weight delta ([`LoraModule::merged_weight`]).
    fn for_inference(&self) -> Result<Self> {
        let d = |t: &Tensor| t.detach();
        let layer = |l: &LayerPetl| -> Result<LayerPetl> {
            Ok(match l {
                LayerPetl::Adapter(a) => LayerPetl::Adapter(AdapterModule {
                    down_weight: d(&a.down_weight),
                    down_bias: d(&a.down_bias),
                    up_weight: d(&a.up_weight),
                    up_bias: d(&a.up_bias),
                    activation: a.activation,
                }),
                LayerPetl::Lora(parts) => LayerPetl::Lora(
                    parts
                        .iter()
                        .map(|p| -> Result<LoraModule> {
                            let (a, b) = (d(&p.a), d(&p.b));
                            Ok(LoraModule {
                                target: p.target,
                                merged_weight: Some((b.matmul(&a)? * p.scale)?),
                                a,
                                b,
                                scale: p.scale,
                            })
                        })
                        .collect::<Result<_>>()?,
                ),
                LayerPetl::Prefix(p) => LayerPetl::Prefix(PrefixModule {
                    keys: d(&p.keys),
                    values: d(&p.values),
                    length: p.length,
                }),
                LayerPetl::Identity => LayerPetl::Identity,
            })
        };
        Ok(Self {
            layers: self.layers.iter().map(layer).collect::<Result<_>>()?,
        })
    }
}

/// A masked adapter of one layer.
#[derive(Debug, Clone)]
pub struct AdapterModule {
    /// `D ⊙ M_down`, `[d, H]`.
    pub down_weight: Tensor,
    /// `b_D`.
    pub down_bias: Tensor,
    /// `U ⊙ M_up`, `[H, d]`.
    pub up_weight: Tensor,
    /// `b_U`.
    pub up_bias: Tensor,
    /// Bottleneck activation.
    pub activation: Activation,
}

/// A masked LoRA pair of one layer and target.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// The projection it updates.
    pub target: LoraTarget,
    /// `A ⊙ M_A`, `[r, H]`.
    pub a: Tensor,
    /// `B ⊙ M_B`, `[H_out, r]`.
    pub b: Tensor,
    /// `α / r`.
    pub scale: f64,
    /// `(α/r)·B·A`, `[H_out, H]`: the update folded into one weight delta. Set in the
    /// contexts of a materialized state (inference), where a projection then runs as one
    /// product with `W + ΔW` instead of adding two low-rank products to its output
    /// ([`LayerPetl::merged_lora`]); `None` while training.
    pub merged_weight: Option<Tensor>,
}

/// The masked prefix of one layer.
#[derive(Debug, Clone)]
pub struct PrefixModule {
    /// Keys `[P, H]` (split per head by the model).
    pub keys: Tensor,
    /// Values `[P, H]`.
    pub values: Tensor,
    /// Prefix length P.
    pub length: usize,
}

/// The effective PETL module of one layer.
#[derive(Debug, Clone)]
pub enum LayerPetl {
    /// An adapter.
    Adapter(AdapterModule),
    /// LoRA pairs, one per target.
    Lora(Vec<LoraModule>),
    /// A prefix.
    Prefix(PrefixModule),
    /// No PETL module (a plain frozen layer).
    Identity,
}

impl LayerPetl {
    /// The adapter function `A(z) = U·act(D·z + b_D) + b_U`, or `None` if this layer has no adapter.
    pub fn adapter(&self, z: &Tensor) -> Result<Option<Tensor>> {
        match self {
            LayerPetl::Adapter(a) => {
                let h = ops::linear_or_frozen(z, &a.down_weight, Some(&a.down_bias))?;
                let h = ops::activate(&h, a.activation)?;
                Ok(Some(ops::linear_or_frozen(
                    &h,
                    &a.up_weight,
                    Some(&a.up_bias),
                )?))
            }
            _ => Ok(None),
        }
    }

    /// The LoRA update `(α/r)·(x Aᵀ) Bᵀ` of `target`, or `None` if there is none here.
    pub fn lora_delta(&self, target: LoraTarget, x: &Tensor) -> Result<Option<Tensor>> {
        match self {
            LayerPetl::Lora(parts) => match parts.iter().find(|p| p.target == target) {
                Some(p) => {
                    let xa = ops::linear(x, &p.a, None)?;
                    Ok(Some((ops::linear(&xa, &p.b, None)? * p.scale)?))
                }
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// The LoRA pair of `target` as `(A ⊙ M_A, B ⊙ M_B, α/r)`, or `None`: for
    /// [`ops::frozen_linear_lora`], which adds the update to a
    /// frozen projection inside its own product.
    pub fn lora_pair(&self, target: LoraTarget) -> Option<(&Tensor, &Tensor, f64)> {
        match self {
            LayerPetl::Lora(parts) => parts
                .iter()
                .find(|p| p.target == target)
                .map(|p| (&p.a, &p.b, p.scale)),
            _ => None,
        }
    }

    /// The folded LoRA update `(α/r)·B·A` of `target` (`[H_out, H]`, add it to the frozen
    /// projection's weight) when this layer's context comes from a materialized state;
    /// `None` while training or where there is no LoRA pair — then use
    /// [`lora_pair`](Self::lora_pair) with a frozen projection (`ops::frozen_linear_lora`) or
    /// [`lora_delta`](Self::lora_delta) (the update as a tensor to add).
    pub fn merged_lora(&self, target: LoraTarget) -> Option<&Tensor> {
        match self {
            LayerPetl::Lora(parts) => parts
                .iter()
                .find(|p| p.target == target)
                .and_then(|p| p.merged_weight.as_ref()),
            _ => None,
        }
    }

    /// The prefix keys and values `[P, H]`, or `None`.
    pub fn prefix_kv(&self) -> Option<(&Tensor, &Tensor)> {
        match self {
            LayerPetl::Prefix(p) => Some((&p.keys, &p.values)),
            _ => None,
        }
    }
}
