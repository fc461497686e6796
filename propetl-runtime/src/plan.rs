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
    /// A plan without any PETL tensor over `layout`: the plan of a model whose backbone
    /// itself trains (full fine-tuning). Its `config` is a placeholder (the unshared
    /// adapter's) that describes nothing; [`Plan::is_empty`] tells such a plan apart, and
    /// [`PetlState`](crate::PetlState) refuses to save one.
    pub fn empty(layout: &PetlLayout) -> Result<Self> {
        layout.validate()?;
        Ok(Self {
            config: PetlConfig::unshared(Method::ADAPTER),
            layout: layout.clone(),
            prototype: Vec::new(),
            sites: Vec::new(),
            scores: Vec::new(),
        })
    }

    /// Whether this plan has no PETL tensor at all ([`Plan::empty`]).
    pub fn is_empty(&self) -> bool {
        self.prototype.is_empty() && self.scores.is_empty()
    }

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
                let out = prefix_width(h, n_layers, shared)?;
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
            Method::Prefix { length, .. } => {
                let width = prefix_width(h, n_layers, true)?;
                vec![Site {
                    name: "prefix".into(),
                    shape: vec![*length, width],
                    // the reference stacks all layers' scores as [L, P, 2H]
                    fan_in: checked_mul(*length, width, || {
                        "prefix score fan-in = length × 2·hidden".to_string()
                    })?,
                }]
            }
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
        let plan = Self {
            config: config.clone(),
            layout: layout.clone(),
            prototype,
            sites,
            scores,
        };
        // every size derived from the shapes must fit in a usize (class 8: no wrapped counts)
        plan.checked_training_floats()?;
        plan.checked_mask_entries()?;
        plan.checked_payload_bytes()?;
        Ok(plan)
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

    /// Number of prototype floats trained (weights and biases). [`Plan::new`] rejects plans
    /// whose sizes overflow; on a hand-built plan this saturates at `usize::MAX` (see
    /// [`Plan::checked_training_floats`]).
    pub fn training_floats(&self) -> usize {
        self.checked_training_floats().unwrap_or(usize::MAX)
    }

    /// Number of prototype floats stored after training. For prefixes this is the
    /// materialized prefix `P·2H` per instance (the MLP is discarded, method page §6–§7).
    /// Saturates like [`Plan::training_floats`].
    pub fn stored_floats(&self) -> usize {
        self.checked_stored_floats().unwrap_or(usize::MAX)
    }

    /// Total number of mask entries (1 bit each when stored). Saturates like
    /// [`Plan::training_floats`].
    pub fn mask_entries(&self) -> usize {
        self.checked_mask_entries().unwrap_or(usize::MAX)
    }

    /// [`Plan::training_floats`], or a configuration error naming the overflowing value.
    pub fn checked_training_floats(&self) -> Result<usize> {
        let mut total = 0usize;
        for p in &self.prototype {
            let n = elem_count(&p.name, &p.shape, &self.layout)?;
            total = checked_add(total, n, || {
                format!(
                    "prototype floats (adding `{}`; {})",
                    p.name,
                    layout_words(&self.layout)
                )
            })?;
        }
        Ok(total)
    }

    /// [`Plan::stored_floats`], or a configuration error naming the overflowing value.
    pub fn checked_stored_floats(&self) -> Result<usize> {
        match &self.config.method {
            Method::Prefix { length, .. } => {
                let h = self.layout.hidden;
                let layers = self.layout.layers.len();
                let width = prefix_width(h, layers, self.config.shares_layers())?;
                checked_mul(*length, width, || {
                    format!("stored prefix floats = length × width (hidden {h}, {layers} layers)")
                })
            }
            _ => self.checked_training_floats(),
        }
    }

    /// [`Plan::mask_entries`], or a configuration error naming the overflowing value.
    pub fn checked_mask_entries(&self) -> Result<usize> {
        let mut total = 0usize;
        for s in &self.scores {
            let n = elem_count(&s.name, &s.shape, &self.layout)?;
            total = checked_add(total, n, || {
                format!(
                    "mask entries (adding `{}`, one of {} score tensors; {})",
                    s.name,
                    self.scores.len(),
                    layout_words(&self.layout)
                )
            })?;
        }
        Ok(total)
    }

    /// Bytes of the packed masks: `⌈entries/8⌉` per score tensor.
    pub fn checked_mask_bytes(&self) -> Result<usize> {
        let mut total = 0usize;
        for s in &self.scores {
            let n = elem_count(&s.name, &s.shape, &self.layout)?;
            total = checked_add(total, n.div_ceil(8), || {
                format!(
                    "packed mask bytes (adding `{}`; {})",
                    s.name,
                    layout_words(&self.layout)
                )
            })?;
        }
        Ok(total)
    }

    /// Exact payload bytes of a saved state (heads aside): 4 per stored prototype float plus
    /// the packed masks, or a configuration error naming the overflowing value.
    pub fn checked_payload_bytes(&self) -> Result<usize> {
        let floats = self.checked_stored_floats()?;
        let float_bytes = checked_mul(floats, 4, || {
            format!(
                "prototype bytes = stored floats × 4 ({})",
                layout_words(&self.layout)
            )
        })?;
        let mask_bytes = self.checked_mask_bytes()?;
        checked_add(float_bytes, mask_bytes, || {
            format!(
                "payload bytes = prototype bytes + packed mask bytes ({})",
                layout_words(&self.layout)
            )
        })
    }
}

/// `hidden 768, 12 layers, 2 tasks`: the layout's sizes, for overflow messages.
fn layout_words(layout: &PetlLayout) -> String {
    format!(
        "hidden {}, {} layers, {} tasks",
        layout.hidden,
        layout.layers.len(),
        layout.tasks.len()
    )
}

/// Width of the prefix MLP output: `2·H` shared, `2·H·L` unshared.
fn prefix_width(h: usize, layers: usize, shared: bool) -> Result<usize> {
    let two_h = checked_mul(2, h, || "prefix width = 2 × hidden".to_string())?;
    if shared {
        Ok(two_h)
    } else {
        checked_mul(two_h, layers, || {
            "unshared prefix width = 2·hidden × layers".to_string()
        })
    }
}

/// Number of elements of `shape`, or a configuration error naming the tensor.
fn elem_count(name: &str, shape: &[usize], layout: &PetlLayout) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            PetlError::config(format!(
                "size overflow: `{name}` of shape [{}] has more than usize::MAX ({}) \
                 elements ({})",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(" × "),
                usize::MAX,
                layout_words(layout)
            ))
        })
}

/// `a × b`, or the configuration error "size overflow: {what} ({a} × {b}) overflows usize",
/// where `what` names the quantity and the user's values behind it.
pub(crate) fn checked_mul(a: usize, b: usize, what: impl FnOnce() -> String) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| overflow(format!("{} ({a} × {b})", what())))
}

/// `a + b`, or a configuration error like [`checked_mul`]'s.
pub(crate) fn checked_add(a: usize, b: usize, what: impl FnOnce() -> String) -> Result<usize> {
    a.checked_add(b)
        .ok_or_else(|| overflow(format!("{} ({a} + {b})", what())))
}

fn overflow(what: String) -> PetlError {
    PetlError::config(format!(
        "size overflow: {what} overflows usize (max {}); check the model dimensions",
        usize::MAX
    ))
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
