//! The tensor plan of a PETL configuration on a concrete model layout: which prototype
//! tensors exist, their shapes and init, which sites are masked and the names of every score
//! tensor. Construction, saving, loading and the storage report all read the same plan.
//!
//! ## Variable names (stable; they are the keys in the `VarMap` and in saved files)
//! | what | shared (`layers`, `layers+tasks`) | unshared (`none`, `tasks`) |
//! |---|---|---|
//! | adapter | `adapter.down.weight [d,H]`, `adapter.down.bias`, `adapter.up.weight [H,d]`, `adapter.up.bias` | `adapter.{layer}.…` |
//! | LoRA | `lora.{q,v,…}.A [r,H]`, `lora.{t}.B [H,r]` | `lora.{layer}.{t}.…` |
//! | prefix | `prefix.wte [P,H]`, `prefix.mlp0.{weight,bias}`, `prefix.mlp2.{weight [2H,B],bias}` | same, `mlp2` has `L·2H` outputs |
//! | layer masks | `mask.{layer}.{site}` | — |
//! | task masks | `mask.task.{task}.{site}` (combined with layer masks) | `mask.task.{task}.{layer}.{site}` |
//!
//! Sites: adapter `down`, `up`; LoRA `{t}.A`, `{t}.B`; prefix `prefix` (the MLP output
//! `[P, 2H]`). Scores have the layout of what they mask.

use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};
use crate::optim::Role;
use crate::rng::fan_in;
use crate::spec::{AdapterSize, Method, PetlConfig, Share};

/// The model dimensions and names a PETL state is built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PetlLayout {
    /// Hidden size of the backbone.
    pub hidden: usize,
    /// Attention heads (prefixes are split per head).
    pub num_heads: usize,
    /// Names of the places the module is used, in order (e.g. `0`…`11`, or `enc.0`, `dec.0`).
    pub layers: Vec<String>,
    /// Task names (a single-task model has one, e.g. `default`).
    pub tasks: Vec<String>,
}

impl PetlLayout {
    /// A single-task layout with layers named `0..num_layers`.
    pub fn single_task(hidden: usize, num_heads: usize, num_layers: usize) -> Self {
        Self {
            hidden,
            num_heads,
            layers: (0..num_layers).map(|l| l.to_string()).collect(),
            tasks: vec!["default".to_string()],
        }
    }

    /// Set the task names.
    pub fn with_tasks<S: Into<String>>(mut self, tasks: impl IntoIterator<Item = S>) -> Self {
        self.tasks = tasks.into_iter().map(Into::into).collect();
        self
    }

    /// Index of a task name.
    pub fn task_index(&self, name: &str) -> Result<usize> {
        find(&self.tasks, name, "task")
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.hidden == 0 || self.num_heads == 0 || !self.hidden.is_multiple_of(self.num_heads) {
            return Err(PetlError::config(format!(
                "hidden {} must be a positive multiple of num_heads {}",
                self.hidden, self.num_heads
            )));
        }
        if self.layers.is_empty() || self.tasks.is_empty() {
            return Err(PetlError::config(
                "a layout needs at least one layer and one task",
            ));
        }
        for names in [&self.layers, &self.tasks] {
            let mut s = names.clone();
            s.sort();
            s.dedup();
            if s.len() != names.len() {
                return Err(PetlError::config(format!("duplicate names in {names:?}")));
            }
            if let Some(bad) = names
                .iter()
                .find(|n| n.is_empty() || n.contains(char::is_whitespace))
            {
                return Err(PetlError::config(format!(
                    "invalid layer/task name {bad:?}"
                )));
            }
        }
        Ok(())
    }
}

fn find(names: &[String], name: &str, kind: &'static str) -> Result<usize> {
    names
        .iter()
        .position(|n| n == name)
        .ok_or_else(|| PetlError::Unknown {
            kind,
            name: name.to_string(),
            known: names.join(", "),
        })
}

/// How a prototype tensor is initialized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, std²).
    Normal(f64),
    /// All zeros.
    Zeros,
    /// PyTorch `kaiming_uniform_(a = √5)` (also `nn.Linear`'s default weight init).
    KaimingUniform,
    /// `nn.Linear`'s default bias init U(−1/√fan_in, 1/√fan_in).
    LinearBias {
        /// Fan-in of the layer.
        fan_in: usize,
    },
}

/// One trainable prototype tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtoTensor {
    /// Variable name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Initialization.
    pub init: Init,
    /// Optimizer group (biases are not decayed).
    pub role: Role,
}

/// One trainable score tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreTensor {
    /// Variable name (`mask.…`).
    pub name: String,
    /// Shape (the layout of what it masks).
    pub shape: Vec<usize>,
    /// Fan-in used for the Kaiming-uniform init.
    pub fan_in: usize,
}

/// A masked site of the method: a name and the shape of the tensor it masks.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Site name (`down`, `up`, `q.A`, `prefix`, …).
    pub name: String,
    /// Shape of the masked tensor.
    pub shape: Vec<usize>,
    /// Fan-in for the score init (the reference's score layout).
    pub fan_in: usize,
}

/// Every tensor of a configuration on a layout.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The configuration.
    pub config: PetlConfig,
    /// The layout.
    pub layout: PetlLayout,
    /// Prototype tensors, in a stable order.
    pub prototype: Vec<ProtoTensor>,
    /// Masked sites.
    pub sites: Vec<Site>,
    /// Score tensors, in a stable order.
    pub scores: Vec<ScoreTensor>,
}

impl Plan {
    /// Build and validate the plan.
    pub fn new(config: &PetlConfig, layout: &PetlLayout) -> Result<Self> {
        config.validate()?;
        layout.validate()?;
        let h = layout.hidden;
        let n_layers = layout.layers.len();
        let shared = config.shares_layers();
        // (tensor suffix, shape, init) of one module instance
        let module: Vec<(String, Vec<usize>, Init)> = match &config.method {
            Method::Adapter { size, init_std, .. } => {
                let d = adapter_bottleneck(*size, h)?;
                vec![
                    ("down.weight".into(), vec![d, h], Init::Normal(*init_std)),
                    ("down.bias".into(), vec![d], Init::Zeros),
                    ("up.weight".into(), vec![h, d], Init::Normal(*init_std)),
                    ("up.bias".into(), vec![h], Init::Zeros),
                ]
            }
            Method::Lora { r, targets, .. } => targets
                .iter()
                .flat_map(|t| {
                    [
                        (format!("{t}.A"), vec![*r, h], Init::KaimingUniform),
                        (format!("{t}.B"), vec![h, *r], Init::Zeros),
                    ]
                })
                .collect(),
            Method::Prefix { length, hidden } => {
                let out = if shared { 2 * h } else { 2 * h * n_layers };
                vec![
                    ("wte".into(), vec![*length, h], Init::Normal(1.0)),
                    ("mlp0.weight".into(), vec![*hidden, h], Init::KaimingUniform),
                    (
                        "mlp0.bias".into(),
                        vec![*hidden],
                        Init::LinearBias { fan_in: h },
                    ),
                    (
                        "mlp2.weight".into(),
                        vec![out, *hidden],
                        Init::KaimingUniform,
                    ),
                    (
                        "mlp2.bias".into(),
                        vec![out],
                        Init::LinearBias { fan_in: *hidden },
                    ),
                ]
            }
        };
        let m = config.method.name();
        let mut prototype = Vec::new();
        // biases are the only prototype tensors without weight decay (method page §4)
        let role = |suffix: &str| {
            if suffix.ends_with("bias") {
                Role::NoDecay
            } else {
                Role::Decay
            }
        };
        if shared || matches!(config.method, Method::Prefix { .. }) {
            for (suffix, shape, init) in &module {
                prototype.push(ProtoTensor {
                    name: format!("{m}.{suffix}"),
                    shape: shape.clone(),
                    init: *init,
                    role: role(suffix),
                });
            }
        } else {
            for layer in &layout.layers {
                for (suffix, shape, init) in &module {
                    prototype.push(ProtoTensor {
                        name: format!("{m}.{layer}.{suffix}"),
                        shape: shape.clone(),
                        init: *init,
                        role: role(suffix),
                    });
                }
            }
        }
        let sites: Vec<Site> = match &config.method {
            Method::Adapter { .. } | Method::Lora { .. } => module
                .iter()
                .filter(|(s, _, _)| !s.ends_with("bias"))
                .map(|(s, shape, _)| Site {
                    name: s.trim_end_matches(".weight").to_string(),
                    shape: shape.clone(),
                    fan_in: fan_in(shape),
                })
                .collect(),
            Method::Prefix { length, .. } => vec![Site {
                name: "prefix".into(),
                shape: vec![*length, 2 * h],
                // the reference stacks all layers' scores as [L, P, 2H]
                fan_in: length * 2 * h,
            }],
        };
        let mut scores = Vec::new();
        if config.is_masked() {
            let mut push = |name: String, site: &Site| {
                scores.push(ScoreTensor {
                    name,
                    shape: site.shape.clone(),
                    fan_in: site.fan_in,
                })
            };
            match config.share {
                Share::None => {}
                Share::Layers => {
                    for l in &layout.layers {
                        for s in &sites {
                            push(layer_mask_name(l, &s.name), s);
                        }
                    }
                }
                Share::Tasks => {
                    for t in &layout.tasks {
                        for l in &layout.layers {
                            for s in &sites {
                                push(task_layer_mask_name(t, l, &s.name), s);
                            }
                        }
                    }
                }
                Share::LayersTasks => {
                    for t in &layout.tasks {
                        for s in &sites {
                            push(task_mask_name(t, &s.name), s);
                        }
                    }
                    for l in &layout.layers {
                        for s in &sites {
                            push(layer_mask_name(l, &s.name), s);
                        }
                    }
                }
            }
        }
        Ok(Self {
            config: config.clone(),
            layout: layout.clone(),
            prototype,
            sites,
            scores,
        })
    }

    /// Name of the prototype tensor `suffix` as used by `layer` (shared or per-layer instance).
    pub fn instance_name(&self, layer: &str, suffix: &str) -> String {
        let m = self.config.method.name();
        if self.config.shares_layers() || matches!(self.config.method, Method::Prefix { .. }) {
            format!("{m}.{suffix}")
        } else {
            format!("{m}.{layer}.{suffix}")
        }
    }

    /// Number of prototype floats trained (weights and biases).
    pub fn training_floats(&self) -> usize {
        self.prototype
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Number of prototype floats stored after training. For prefixes this is the
    /// materialized prefix `P·2H` per instance (the MLP is discarded, method page §6–§7).
    pub fn stored_floats(&self) -> usize {
        match &self.config.method {
            Method::Prefix { length, .. } => {
                let per = length * 2 * self.layout.hidden;
                if self.config.shares_layers() {
                    per
                } else {
                    per * self.layout.layers.len()
                }
            }
            _ => self.training_floats(),
        }
    }

    /// Total number of mask entries (1 bit each when stored).
    pub fn mask_entries(&self) -> usize {
        self.scores
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    }
}

/// Bottleneck width of an adapter on hidden size `h`.
pub fn adapter_bottleneck(size: AdapterSize, h: usize) -> Result<usize> {
    match size {
        AdapterSize::Bottleneck(0) | AdapterSize::Reduction(0) => {
            Err(PetlError::config("adapter bottleneck must be > 0"))
        }
        AdapterSize::Bottleneck(d) => Ok(d),
        AdapterSize::Reduction(r) => {
            let d = h / r;
            if d == 0 {
                Err(PetlError::config(format!(
                    "reduction {r} leaves no bottleneck on hidden size {h}"
                )))
            } else {
                Ok(d)
            }
        }
    }
}

/// `mask.{layer}.{site}`.
pub fn layer_mask_name(layer: &str, site: &str) -> String {
    format!("mask.{layer}.{site}")
}

/// `mask.task.{task}.{site}`.
pub fn task_mask_name(task: &str, site: &str) -> String {
    format!("mask.task.{task}.{site}")
}

/// `mask.task.{task}.{layer}.{site}`.
pub fn task_layer_mask_name(task: &str, layer: &str, site: &str) -> String {
    format!("mask.task.{task}.{layer}.{site}")
}
