//! Import of PEFT LoRA adapter folders (`adapter_config.json` + `adapter_model.safetensors`)
//! as run directories: the reverse of [`crate::export`]'s PEFT format.
//!
//! The folder becomes an unshared LoRA state (variant `lora`, the folder's `r` and
//! `lora_alpha` as the run's `[petl]` overrides): every `lora_A` / `lora_B` tensor is copied,
//! bit for bit (f16 / bf16 widened to f32), into the LoRA pair of the layer and target PEFT
//! applies it to. The run directory has what `propetl predict`, `propetl eval` (when the
//! config's data exists) and, for T5, `propetl generate --run` read: `config.toml`,
//! `task.json`, `best.safetensors` (the runtime save format), T5 runs also `answers.json`,
//! and `import.json` saying where it came from.
//!
//! | family | PEFT key (after `base_model.model.`) | propetl LoRA layer |
//! |---|---|---|
//! | RoBERTa | `roberta.encoder.layer.{l}.attention.self.{query,value}.lora_{A,B}.weight` | `{l}` |
//! | RoBERTa | `classifier.{dense,out_proj}.{weight,bias}` (`modules_to_save`) | the head |
//! | T5 | `{encoder,decoder}.block.{l}.layer.0.SelfAttention.{q,v}.lora_{A,B}.weight` | `enc.{l}`, `dec.{l}` |
//! | T5 | `decoder.block.{l}.layer.1.EncDecAttention.{q,v}.lora_{A,B}.weight` | `cross.{l}` |
//!
//! Everything is checked before anything is written, and the import fails naming the
//! problem: a `peft_type` other than LORA, options that change the math (`fan_in_fan_out`,
//! `use_dora`, `use_rslora`, `rank_pattern`, `alpha_pattern`, `lora_bias`, a `bias` other
//! than `none`, …), target modules the model has no LoRA site for, tensors whose shapes do
//! not fit the base checkpoint, tensors that land nowhere and LoRA pairs the folder lacks.
//! The run directory is built in a hidden sibling and renamed into place at the end.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use propetl::import::{import_peft, ImportOptions};
//! let s = import_peft(
//!     "adapters/sst2-lora".as_ref(),
//!     "models/roberta-base".as_ref(),
//!     "runs/imported".as_ref(),
//!     &ImportOptions::default(),
//! )?;
//! println!("{} tensors, r {}, alpha {}", s.tensors, s.r, s.alpha);
//! let p = propetl::predict::Predictor::load(&s.out, None)?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use propetl_models::roberta::{self, Checkpoint};
use propetl_models::t5::{self, T5Checkpoint, T5Config};
use propetl_runtime::{
    LoraTarget, Method, NumericOverrides, PetlConfig, PetlRng, Plan, TaskKind, Variant,
};
use serde::Serialize;
use serde_json::Value;

use crate::data::GlueTask;
use crate::predict::TaskInfo;
use crate::run::{
    absolute, check_output_folder, label_names, write_folder_atomically, RunConfig, Task, BEST_FILE,
};
use crate::text_to_text::{TaskAnswers, ANSWERS_FILE};

/// The file of a run directory that records an import.
pub const IMPORT_FILE: &str = "import.json";

/// PEFT's file names.
const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Options of [`import_peft`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOptions {
    /// The run's task (`sst2`, `stsb`, …): label names, metrics and, with `data_dir`, the data
    /// `propetl eval` evaluates on. Default `custom` (RoBERTa: classes from the head, named
    /// `0`, `1`, …; T5: two classes answered "0" / "1").
    pub task: Option<Task>,
    /// The run's `data_dir` (for `propetl eval`).
    pub data_dir: Option<PathBuf>,
    /// Replace a non-empty output folder.
    pub overwrite: bool,
}

/// The backbone family an adapter is imported onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// RoBERTa-family sequence classifier (`SEQ_CLS`, head in `modules_to_save`).
    Roberta,
    /// T5 (`SEQ_2_SEQ_LM`).
    T5,
}

/// What [`import_peft`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportSummary {
    /// The run directory written.
    pub out: PathBuf,
    /// The backbone family.
    pub family: Family,
    /// The run's task.
    pub task: String,
    /// LoRA rank.
    pub r: usize,
    /// LoRA α (the update is scaled by α/r).
    pub alpha: f64,
    /// Tensors read from the adapter (every one landed).
    pub tensors: usize,
    /// LoRA layers filled (`0`…, or `enc.0`…, `dec.0`…, `cross.0`…).
    pub layers: Vec<String>,
    /// LoRA targets (`q`, `v`).
    pub targets: Vec<String>,
    /// The adapter's `base_model_name_or_path`.
    pub base_model_name_or_path: Option<String>,
}

/// A PEFT LoRA adapter folder, read and checked.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    /// The folder.
    pub dir: PathBuf,
    /// `adapter_config.json`.
    pub config: Value,
    /// LoRA rank (`r`).
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Every tensor of `adapter_model.safetensors`, as f32 on the CPU.
    pub tensors: BTreeMap<String, Tensor>,
}

/// Which LoRA factor a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// `lora_A`, `[r, in]`.
    A,
    /// `lora_B`, `[out, r]`.
    B,
}

/// Where PEFT applies a LoRA tensor: propetl's layer name, target and factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraPlacement {
    /// PETL layer (`3`, `enc.3`, `dec.3`, `cross.3`).
    pub layer: String,
    /// The projection.
    pub target: LoraTarget,
    /// A or B.
    pub factor: Factor,
}

/// Where a tensor of a PEFT folder lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A LoRA factor.
    Lora(LoraPlacement),
    /// A head tensor (propetl's name, `head.dense.weight`, …).
    Head(String),
}

fn lora_target(name: &str, family: Family) -> Option<LoraTarget> {
    match (family, name) {
        (Family::Roberta, "query") | (Family::T5, "q") => Some(LoraTarget::Q),
        (Family::Roberta, "key") | (Family::T5, "k") => Some(LoraTarget::K),
        (Family::Roberta, "value") | (Family::T5, "v") => Some(LoraTarget::V),
        (Family::T5, "o") => Some(LoraTarget::O),
        _ => None,
    }
}

fn lora_factor(s: &str) -> Option<Factor> {
    match s {
        "lora_A" => Some(Factor::A),
        "lora_B" => Some(Factor::B),
        _ => None,
    }
}

/// Where PEFT puts the tensor `key` of a `family` model, or `None` for a key that names no
/// module propetl has a place for. Layer indices are not range-checked here.
pub fn placement(family: Family, key: &str) -> Option<Placement> {
    let rest = key.strip_prefix("base_model.model.")?;
    let parts: Vec<&str> = rest.split('.').collect();
    match family {
        Family::Roberta => {
            if let ["classifier", module @ ("dense" | "out_proj"), p @ ("weight" | "bias")] =
                parts.as_slice()
            {
                return Some(Placement::Head(format!("head.{module}.{p}")));
            }
            // roberta.encoder.layer.{l}.attention.self.{query|key|value}.lora_X.weight
            // roberta.encoder.layer.{l}.attention.output.dense.lora_X.weight
            let (l, target, factor) = match parts.as_slice() {
                ["roberta", "encoder", "layer", l, "attention", "self", t, f, "weight"] => {
                    (*l, lora_target(t, family)?, lora_factor(f)?)
                }
                ["roberta", "encoder", "layer", l, "attention", "output", "dense", f, "weight"] => {
                    (*l, LoraTarget::O, lora_factor(f)?)
                }
                _ => return None,
            };
            let l: usize = l.parse().ok()?;
            Some(Placement::Lora(LoraPlacement {
                layer: l.to_string(),
                target,
                factor,
            }))
        }
        Family::T5 => {
            let (l, layer, target, factor) = match parts.as_slice() {
                [stack @ ("encoder" | "decoder"), "block", l, "layer", sub, attn, t, f, "weight"] =>
                {
                    let layer = match (*stack, *sub, *attn) {
                        ("encoder", "0", "SelfAttention") => "enc",
                        ("decoder", "0", "SelfAttention") => "dec",
                        ("decoder", "1", "EncDecAttention") => "cross",
                        _ => return None,
                    };
                    (*l, layer, lora_target(t, family)?, lora_factor(f)?)
                }
                _ => return None,
            };
            let l: usize = l.parse().ok()?;
            Some(Placement::Lora(LoraPlacement {
                layer: format!("{layer}.{l}"),
                target,
                factor,
            }))
        }
    }
}

/// The PEFT key of a LoRA factor (the inverse of [`placement`]).
pub fn peft_key(family: Family, p: &LoraPlacement) -> String {
    let f = match p.factor {
        Factor::A => "lora_A",
        Factor::B => "lora_B",
    };
    match family {
        Family::Roberta => {
            let module = match p.target {
                LoraTarget::Q => "attention.self.query",
                LoraTarget::K => "attention.self.key",
                LoraTarget::V => "attention.self.value",
                LoraTarget::O => "attention.output.dense",
            };
            format!(
                "base_model.model.roberta.encoder.layer.{}.{module}.{f}.weight",
                p.layer
            )
        }
        Family::T5 => {
            let (kind, l) = p.layer.split_once('.').unwrap_or(("enc", &p.layer));
            let (stack, sub) = match kind {
                "enc" => ("encoder", "0.SelfAttention"),
                "dec" => ("decoder", "0.SelfAttention"),
                _ => ("decoder", "1.EncDecAttention"),
            };
            format!(
                "base_model.model.{stack}.block.{l}.layer.{sub}.{}.{f}.weight",
                p.target
            )
        }
    }
}

/// The `target_modules` names a family's model has LoRA sites for (with propetl's `lora`
/// variant targets `targets`).
fn site_module_names(family: Family, targets: &[LoraTarget]) -> Vec<&'static str> {
    targets
        .iter()
        .map(|t| match (family, t) {
            (Family::Roberta, LoraTarget::Q) => "query",
            (Family::Roberta, LoraTarget::K) => "key",
            (Family::Roberta, LoraTarget::V) => "value",
            (Family::Roberta, LoraTarget::O) => "attention.output.dense",
            (Family::T5, LoraTarget::Q) => "q",
            (Family::T5, LoraTarget::K) => "k",
            (Family::T5, LoraTarget::V) => "v",
            (Family::T5, LoraTarget::O) => "o",
        })
        .collect()
}

/// A JSON value that is "not set": absent, null, false, an empty object/array/string.
fn unset(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// Options of `adapter_config.json` that change what a LoRA layer computes (or add modules):
/// each must be unset. (key, what it does)
const MATH_OPTIONS: [(&str, &str); 13] = [
    (
        "fan_in_fan_out",
        "the base layer stores its weight transposed (Conv1D)",
    ),
    (
        "use_dora",
        "DoRA rescales the weight by a learned magnitude",
    ),
    ("use_rslora", "rsLoRA scales by lora_alpha/sqrt(r)"),
    ("use_qalora", "QA-LoRA pools the input"),
    ("lora_bias", "lora_B has a bias"),
    ("rank_pattern", "layers have their own ranks"),
    ("alpha_pattern", "layers have their own alphas"),
    ("layer_replication", "layers are replicated"),
    (
        "trainable_token_indices",
        "embedding rows are trained as well",
    ),
    ("target_parameters", "LoRA is applied to raw parameters"),
    (
        "alora_invocation_tokens",
        "activated LoRA applies only after its invocation tokens",
    ),
    ("megatron_config", "Megatron parallel layers"),
    ("arrow_config", "Arrow routes between several LoRAs"),
];

/// Read and check a PEFT LoRA folder's config and tensors (not yet against a model).
pub fn read_peft(dir: &Path) -> Result<PeftAdapter> {
    if !dir.is_dir() {
        bail!("PEFT adapter folder {} does not exist", dir.display());
    }
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "reading {} (is {} a PEFT adapter folder?)",
            config_path.display(),
            dir.display()
        )
    })?;
    let config: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let c = config
        .as_object()
        .with_context(|| format!("{} is not a JSON object", config_path.display()))?;
    let where_ = config_path.display();
    match c.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        Some(other) => bail!(
            "{where_}: peft_type is `{other}`: propetl imports LoRA adapters (peft_type LORA) only"
        ),
        None => bail!("{where_}: no peft_type (propetl imports LoRA adapters, peft_type LORA)"),
    }
    for (key, what) in MATH_OPTIONS {
        if !unset(c.get(key)) {
            bail!(
                "{where_}: `{key}` is {} ({what}): propetl's LoRA computes W·x + (lora_alpha/r)·B·A·x only, so this adapter cannot be imported",
                c[key]
            );
        }
    }
    match c.get("bias").and_then(Value::as_str) {
        None | Some("none") => {}
        Some(other) => bail!(
            "{where_}: bias is `{other}` (the adapter trains the base model's biases too): propetl imports adapters with bias \"none\" only"
        ),
    }
    let r = c
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .with_context(|| format!("{where_}: `r` must be a positive integer"))? as usize;
    let alpha = c
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .filter(|a| a.is_finite())
        .with_context(|| format!("{where_}: `lora_alpha` must be a number"))?;

    let weights = dir.join(WEIGHTS_FILE);
    if !weights.exists() {
        let bin = dir.join("adapter_model.bin");
        if bin.exists() {
            bail!(
                "{} has adapter_model.bin (a pickle) but no {WEIGHTS_FILE}: save the adapter with safe_serialization=True",
                dir.display()
            );
        }
        bail!("{} has no {WEIGHTS_FILE}", dir.display());
    }
    let raw = candle_core::safetensors::load(&weights, &Device::Cpu)
        .with_context(|| format!("reading {}", weights.display()))?;
    let mut tensors = BTreeMap::new();
    for (name, t) in raw {
        let t = match t.dtype() {
            DType::F32 => t,
            DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
            other => bail!(
                "{}: tensor `{name}` is {other:?}; LoRA factors are floating point (f32, f16, bf16)",
                weights.display()
            ),
        };
        tensors.insert(name, t);
    }
    if tensors.is_empty() {
        bail!("{} holds no tensor", weights.display());
    }
    Ok(PeftAdapter {
        dir: dir.to_path_buf(),
        config,
        r,
        alpha,
        tensors,
    })
}

impl PeftAdapter {
    fn str_list(&self, key: &str) -> Option<Vec<String>> {
        self.config.get(key).and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect()
        })
    }

    /// `base_model_name_or_path`.
    pub fn base_model(&self) -> Option<String> {
        self.config
            .get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// Check the config against a family and propetl's LoRA targets there: task type,
    /// `target_modules`, `modules_to_save`.
    pub fn check_for(&self, family: Family, targets: &[LoraTarget]) -> Result<()> {
        let where_ = self.dir.join(CONFIG_FILE);
        let where_ = where_.display();
        let task_type = self.config.get("task_type").and_then(Value::as_str);
        match (family, task_type) {
            (_, None) | (Family::Roberta, Some("SEQ_CLS")) | (Family::T5, Some("SEQ_2_SEQ_LM")) => {}
            (Family::Roberta, Some(t)) => bail!(
                "{where_}: task_type is `{t}`: onto a RoBERTa-family model propetl imports sequence-classification adapters (SEQ_CLS, the classifier in modules_to_save)"
            ),
            (Family::T5, Some(t)) => bail!(
                "{where_}: task_type is `{t}`: onto a T5 model propetl imports SEQ_2_SEQ_LM adapters"
            ),
        }
        let sites = site_module_names(family, targets);
        if let Some(mods) = self.str_list("target_modules") {
            for m in &mods {
                // PEFT matches a list entry against the end of module names
                let last = m.rsplit('.').next().unwrap_or(m);
                let ok = sites.contains(&last)
                    || (family == Family::Roberta
                        && m.ends_with("attention.output.dense")
                        && sites.contains(&"attention.output.dense"));
                if !ok {
                    bail!(
                        "{where_}: target module `{m}` has no LoRA site in propetl's {} `lora` variant (its targets: {})",
                        family_name(family),
                        sites.join(", ")
                    );
                }
            }
        }
        if let Some(mods) = self.str_list("modules_to_save") {
            for m in &mods {
                // PEFT's SEQ_CLS models list both of transformers' head names; RoBERTa's is
                // `classifier` (a `score` module does not exist there, so it saves nothing)
                let ok = family == Family::Roberta && (m == "classifier" || m == "score");
                if !ok {
                    bail!(
                        "{where_}: modules_to_save names `{m}`, which propetl has no place for ({})",
                        match family {
                            Family::Roberta => "a RoBERTa run keeps the `classifier` head only",
                            Family::T5 => "a T5 run has no saved modules, only LoRA",
                        }
                    );
                }
            }
        }
        Ok(())
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Roberta => "RoBERTa",
        Family::T5 => "T5",
    }
}

/// At most this many problems are listed in one error.
const MAX_LISTED: usize = 8;

fn listed(problems: &[String]) -> String {
    let mut s = problems
        .iter()
        .take(MAX_LISTED)
        .map(|p| format!("\n  - {p}"))
        .collect::<String>();
    if problems.len() > MAX_LISTED {
        s += &format!("\n  … and {} more", problems.len() - MAX_LISTED);
    }
    s
}

/// Map every tensor of `adapter` onto propetl's tensor names: LoRA factors onto the unshared
/// LoRA plan's `lora.{layer}.{t}.{A|B}` (shapes in `expected`), RoBERTa head tensors onto
/// `head.*` (shapes in `expected` too). Every tensor must land on an expected name with its
/// shape and every expected name must be filled, or the error lists what does not fit.
pub fn map_tensors(
    adapter: &PeftAdapter,
    family: Family,
    plan: &Plan,
    expected: &BTreeMap<String, Vec<usize>>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut source: HashMap<String, String> = HashMap::new();
    let mut problems = Vec::new();
    let layers = &plan.layout.layers;
    let targets: Vec<LoraTarget> = match &plan.config.method {
        Method::Lora { targets, .. } => targets.to_vec(),
        _ => Vec::new(),
    };
    let describe_sites = || {
        let mut kinds: Vec<String> = Vec::new();
        for l in layers {
            let k = l.split_once('.').map_or("", |(k, _)| k).to_string();
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        let kinds = if kinds == [""] {
            format!("layers 0…{}", layers.len().saturating_sub(1))
        } else {
            kinds
                .iter()
                .map(|k| format!("{k}.*"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{kinds}; targets {}",
            targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    for (key, t) in &adapter.tensors {
        let name = match placement(family, key) {
            Some(Placement::Lora(p)) => {
                let what = match p.layer.split_once('.') {
                    Some(("cross", _)) => " (decoder cross-attention)",
                    _ => "",
                };
                if !layers.contains(&p.layer) || !targets.contains(&p.target) {
                    problems.push(format!(
                        "`{key}`: LoRA on layer `{}`{what} `{}` has no site in propetl's {} `lora` variant on this checkpoint ({})",
                        p.layer,
                        p.target,
                        family_name(family),
                        describe_sites()
                    ));
                    continue;
                }
                let f = match p.factor {
                    Factor::A => "A",
                    Factor::B => "B",
                };
                plan.instance_name(&p.layer, &format!("{}.{f}", p.target))
            }
            Some(Placement::Head(h)) => h,
            None => {
                problems.push(format!(
                    "`{key}` is no tensor propetl has a place for ({})",
                    match family {
                        Family::Roberta => "RoBERTa: base_model.model.roberta.encoder.layer.{l}.attention.self.{query,value}.lora_{A,B}.weight and base_model.model.classifier.{dense,out_proj}.{weight,bias}",
                        Family::T5 => "T5: base_model.model.{encoder,decoder}.block.{l}.layer.0.SelfAttention.{q,v}.lora_{A,B}.weight, base_model.model.decoder.block.{l}.layer.1.EncDecAttention.{q,v}.lora_{A,B}.weight",
                    }
                ));
                continue;
            }
        };
        let Some(shape) = expected.get(&name) else {
            problems.push(format!(
                "`{key}` would be `{name}`, which this model does not have"
            ));
            continue;
        };
        if t.dims() != shape.as_slice() {
            problems.push(format!(
                "`{key}` has shape {:?}; the base checkpoint needs {:?} for `{name}` (r {})",
                t.dims(),
                shape,
                adapter.r
            ));
            continue;
        }
        if let Some(prev) = source.insert(name.clone(), key.clone()) {
            problems.push(format!("`{key}` and `{prev}` both land on `{name}`"));
            continue;
        }
        out.insert(name, t.clone());
    }
    if !problems.is_empty() {
        bail!(
            "{}: {} of {} tensors do not fit the base checkpoint{}:{}",
            adapter.dir.join(WEIGHTS_FILE).display(),
            problems.len(),
            adapter.tensors.len(),
            adapter
                .base_model()
                .map(|b| format!(" (the adapter's base_model_name_or_path is `{b}`)"))
                .unwrap_or_default(),
            listed(&problems)
        );
    }
    // every LoRA pair and head tensor the model has must come from the adapter
    let missing: Vec<String> = expected
        .keys()
        .filter(|n| !out.contains_key(*n))
        .map(|n| {
            let peft = missing_peft_key(family, plan, n);
            match peft {
                Some(k) => format!("`{n}` (PEFT key `{k}`)"),
                None => format!("`{n}`"),
            }
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: the adapter lacks {} of the {} tensors propetl's {} `lora` variant needs on this checkpoint (every layer's {} lora_A and lora_B{}):{}",
            adapter.dir.join(WEIGHTS_FILE).display(),
            missing.len(),
            expected.len(),
            family_name(family),
            targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            match family {
                Family::Roberta => ", and the classifier head",
                Family::T5 => "",
            },
            listed(&missing)
        );
    }
    Ok(out)
}

/// The PEFT key of a propetl tensor name, where it is a LoRA factor of `plan`.
fn missing_peft_key(family: Family, plan: &Plan, name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("head.") {
        return Some(format!("base_model.model.classifier.{rest}"));
    }
    for layer in &plan.layout.layers {
        for &t in LoraTarget::ALL.iter() {
            for (f, factor) in [("A", Factor::A), ("B", Factor::B)] {
                if plan.instance_name(layer, &format!("{t}.{f}")) == name {
                    return Some(peft_key(
                        family,
                        &LoraPlacement {
                            layer: layer.clone(),
                            target: t,
                            factor,
                        },
                    ));
                }
            }
        }
    }
    None
}

/// The `[petl]` overrides of an imported adapter: its r and α.
pub fn overrides_of(adapter: &PeftAdapter) -> NumericOverrides {
    NumericOverrides {
        r: Some(adapter.r),
        alpha: Some(adapter.alpha),
        ..Default::default()
    }
}

/// The prototype names and shapes of a plan.
fn plan_shapes(plan: &Plan) -> BTreeMap<String, Vec<usize>> {
    plan.prototype
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect()
}

/// The plan of T5's unshared `lora` variant on a checkpoint of `config` with one task,
/// without loading (or allocating) the backbone: the layers and the spec come from the
/// variant itself, built on a narrow copy of `config` (same depth, width 8), and the shapes
/// from `config`'s width. For checking an adapter against a checkpoint too large to load.
pub fn t5_lora_plan(config: &T5Config, overrides: &NumericOverrides, task: &str) -> Result<Plan> {
    let mut narrow = config.clone();
    narrow.d_model = 8;
    narrow.d_kv = 4;
    narrow.num_heads = 2;
    narrow.d_ff = 8;
    narrow.vocab_size = narrow.vocab_size.min(64);
    narrow.pad_token_id = narrow.pad_token_id.min(63);
    narrow.eos_token_id = narrow.eos_token_id.min(63);
    if let Some(s) = narrow.decoder_start_token_id.as_mut() {
        *s = (*s).min(63);
    }
    let ckpt = T5Checkpoint::random(narrow, 0.02, &mut PetlRng::seed(0), &Device::Cpu)?;
    let model = t5::build(
        Variant::Lora,
        &ckpt,
        &[task],
        overrides,
        &VarMap::new(),
        &mut PetlRng::seed(0),
    )?;
    let mut layout = model.petl().layout().clone();
    layout.hidden = config.d_model;
    layout.num_heads = config.num_heads;
    if config.num_heads * config.d_kv != config.d_model {
        bail!(
            "LoRA on T5 q/v needs num_heads · d_kv = d_model; this config has {} · {} ≠ {}",
            config.num_heads,
            config.d_kv,
            config.d_model
        );
    }
    Ok(Plan::new(model.petl().config(), &layout)?)
}

/// The LoRA targets of a family's `lora` variant.
fn variant_targets(spec: &PetlConfig) -> Vec<LoraTarget> {
    match &spec.method {
        Method::Lora { targets, .. } => targets.to_vec(),
        _ => Vec::new(),
    }
}

/// The model family of a model folder (`config.json` `model_type`).
fn family_of(model_dir: &Path) -> Result<Family> {
    let path = model_dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is malformed", path.display()))?;
    Ok(match v["model_type"].as_str() {
        Some("t5") => Family::T5,
        _ => Family::Roberta,
    })
}

/// The files of the run directory, written into `staging` (which exists, empty).
struct Staged {
    summary: ImportSummary,
}

/// Import the PEFT LoRA folder `peft_dir` onto the base checkpoint `model_dir` (a folder or
/// a Hub id) as the run directory `out`. Everything is checked before anything is written;
/// a non-empty `out` is refused unless `options.overwrite`; the run directory appears
/// complete or not at all.
pub fn import_peft(
    peft_dir: &Path,
    model_dir: &Path,
    out: &Path,
    options: &ImportOptions,
) -> Result<ImportSummary> {
    check_output_folder(out, options.overwrite)?;
    let out_abs = absolute(out);
    if absolute(peft_dir).starts_with(&out_abs) {
        bail!(
            "--out {} would replace the adapter folder {} itself: choose another folder",
            out.display(),
            peft_dir.display()
        );
    }
    if options.task == Some(Task::GlueMulti) {
        bail!("an imported adapter is one task: --task glue (multi-task) cannot be imported; name one GLUE task or leave --task out");
    }
    let adapter = read_peft(peft_dir)?;
    let resolved = crate::hub::resolve_model(model_dir)
        .with_context(|| format!("the base model {}", model_dir.display()))?;
    if absolute(&resolved).starts_with(&out_abs) {
        bail!(
            "--out {} would replace the base model folder {}: choose another folder",
            out.display(),
            resolved.display()
        );
    }
    // the run's model_dir: a local folder as an absolute path, a Hub id as the id
    let run_model = if model_dir.exists() {
        absolute(model_dir)
    } else {
        model_dir.to_path_buf()
    };
    let family = family_of(&resolved)?;
    let task = options.task.unwrap_or(Task::Custom);
    let mut cfg = RunConfig::new(task, Variant::Lora);
    cfg.model_dir = Some(run_model);
    cfg.data_dir = options.data_dir.clone();
    cfg.petl = overrides_of(&adapter);

    // build and fill the model (all checks) before creating anything
    let dev = Device::Cpu;
    let prepared = match family {
        Family::Roberta => prepare_roberta(&adapter, &resolved, &cfg, &dev)?,
        Family::T5 => prepare_t5(&adapter, &resolved, &cfg, &dev)?,
    };

    let staged = write_folder_atomically(out, "import", |staging| {
        prepared.write(staging, &cfg, &adapter, out)
    })?;
    Ok(staged.summary)
}

/// A model filled from an adapter, ready to be written as a run directory.
enum Prepared {
    Roberta {
        model: Box<dyn propetl_runtime::TaskModel>,
        info: TaskInfo,
        summary: ImportSummary,
    },
    T5 {
        model: Box<dyn t5::Seq2Seq>,
        info: TaskInfo,
        answers: BTreeMap<String, TaskAnswers>,
        summary: ImportSummary,
    },
}

impl Prepared {
    fn write(
        self,
        dir: &Path,
        cfg: &RunConfig,
        adapter: &PeftAdapter,
        out: &Path,
    ) -> Result<Staged> {
        let write = |file: &str, bytes: &[u8]| -> Result<()> {
            propetl_runtime::io::atomic_write(&dir.join(file), bytes)
                .with_context(|| format!("writing {}/{file}", dir.display()))
        };
        write("config.toml", toml::to_string_pretty(cfg)?.as_bytes())?;
        let best = dir.join(BEST_FILE);
        let mut summary = match self {
            Prepared::Roberta {
                mut model,
                info,
                summary,
            } => {
                write("task.json", serde_json::to_string_pretty(&info)?.as_bytes())?;
                model.save(&best)?;
                // the file loads back through the normal run loading
                model
                    .restore(&best)
                    .with_context(|| format!("reloading {}", best.display()))?;
                summary
            }
            Prepared::T5 {
                model,
                info,
                answers,
                summary,
            } => {
                write("task.json", serde_json::to_string_pretty(&info)?.as_bytes())?;
                write(
                    ANSWERS_FILE,
                    serde_json::to_string_pretty(&answers)?.as_bytes(),
                )?;
                model
                    .petl()
                    .save(&best, &BTreeMap::new(), model.config().backbone_params())?;
                model
                    .load_petl(&best)
                    .with_context(|| format!("reloading {}", best.display()))?;
                summary
            }
        };
        summary.out = out.to_path_buf();
        let record = serde_json::json!({
            "source": absolute(&adapter.dir),
            "adapter_config": adapter.config,
            "summary": summary,
        });
        write(
            IMPORT_FILE,
            (serde_json::to_string_pretty(&record)? + "\n").as_bytes(),
        )?;
        Ok(Staged { summary })
    }
}

fn summary_of(
    family: Family,
    cfg: &RunConfig,
    adapter: &PeftAdapter,
    plan: &Plan,
    targets: &[LoraTarget],
) -> ImportSummary {
    ImportSummary {
        out: PathBuf::new(),
        family,
        task: cfg.task.name().to_string(),
        r: adapter.r,
        alpha: adapter.alpha,
        tensors: adapter.tensors.len(),
        layers: plan.layout.layers.clone(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        base_model_name_or_path: adapter.base_model(),
    }
}

/// Set every trainable of a model from `values` (all present, shapes checked by the mapping).
fn fill(
    trainables: Vec<propetl_runtime::Trainable>,
    values: &BTreeMap<String, Tensor>,
) -> Result<()> {
    for t in trainables {
        let v = values
            .get(&t.name)
            .with_context(|| format!("no value for `{}`", t.name))?;
        let v = v.to_device(t.var.device())?.to_dtype(t.var.dtype())?;
        t.var.set(&v)?;
    }
    Ok(())
}

fn prepare_roberta(
    adapter: &PeftAdapter,
    model_dir: &Path,
    cfg: &RunConfig,
    dev: &Device,
) -> Result<Prepared> {
    let spec = roberta::spec(Variant::Lora)?;
    let targets = variant_targets(&spec);
    adapter.check_for(Family::Roberta, &targets)?;
    // the head's classes come from the adapter's classifier
    let out_proj = adapter
        .tensors
        .get("base_model.model.classifier.out_proj.weight")
        .with_context(|| {
            format!(
                "{}: no `base_model.model.classifier.out_proj.weight`: propetl's RoBERTa runs are sequence classifiers, and the adapter must carry its classifier head (PEFT task_type SEQ_CLS saves it through modules_to_save)",
                adapter.dir.join(WEIGHTS_FILE).display()
            )
        })?;
    let classes = out_proj.dims().first().copied().unwrap_or(0);
    let kind = match classes {
        0 => bail!("the adapter's classifier has no output"),
        1 => TaskKind::Regression,
        n => TaskKind::Classification { num_labels: n },
    };
    if let Some(glue) = cfg.task.glue() {
        if glue.num_labels() != classes {
            bail!(
                "--task {}: the task has {} {}, the adapter's classifier {classes} output{}",
                glue.name(),
                glue.num_labels(),
                if glue.num_labels() == 1 {
                    "score"
                } else {
                    "classes"
                },
                if classes == 1 { "" } else { "s" }
            );
        }
    }
    let ckpt = Checkpoint::open(model_dir, dev)
        .with_context(|| format!("opening the base model {}", model_dir.display()))?;
    if !matches!(
        ckpt.config.model_type.as_str(),
        "roberta" | "xlm-roberta" | "camembert"
    ) {
        bail!(
            "the base model is a `{}` checkpoint: PEFT sequence-classification adapters are imported onto RoBERTa-family models (roberta, xlm-roberta, camembert) and T5",
            ckpt.config.model_type
        );
    }
    let model = roberta::build(
        Variant::Lora,
        &ckpt,
        kind,
        &cfg.petl,
        &VarMap::new(),
        &mut PetlRng::seed(cfg.train.seed),
    )
    .context("building the unshared LoRA model with the adapter's r and lora_alpha")?;
    let plan = model.petl().plan().clone();
    let mut expected = plan_shapes(&plan);
    for t in model.head_trainables() {
        expected.insert(t.name.clone(), t.var.dims().to_vec());
    }
    let values = map_tensors(adapter, Family::Roberta, &plan, &expected)?;
    fill(model.trainables(), &values)?;
    let info = TaskInfo {
        kind,
        labels: label_names(cfg, cfg.task, kind),
    };
    let summary = summary_of(Family::Roberta, cfg, adapter, &plan, &targets);
    Ok(Prepared::Roberta {
        model,
        info,
        summary,
    })
}

fn prepare_t5(
    adapter: &PeftAdapter,
    model_dir: &Path,
    cfg: &RunConfig,
    dev: &Device,
) -> Result<Prepared> {
    let spec = t5::spec_for(Variant::Lora, 1)?;
    let targets = variant_targets(&spec);
    adapter.check_for(Family::T5, &targets)?;
    let tok = model_dir.join("tokenizer.json");
    if !tok.exists() {
        bail!(
            "{} is missing: a T5 run needs the checkpoint's tokenizer",
            tok.display()
        );
    }
    let (kind, score_range) = match cfg.task {
        Task::Glue(GlueTask::Stsb) => (TaskKind::Regression, Some((0.0, 5.0))),
        Task::Glue(g) => (
            TaskKind::Classification {
                num_labels: g.num_labels(),
            },
            None,
        ),
        _ => (TaskKind::Classification { num_labels: 2 }, None),
    };
    let ckpt = T5Checkpoint::open(model_dir, dev)
        .with_context(|| format!("opening the base model {}", model_dir.display()))?;
    let task = cfg.task.name();
    let model = t5::build(
        Variant::Lora,
        &ckpt,
        &[task],
        &cfg.petl,
        &VarMap::new(),
        &mut PetlRng::seed(cfg.train.seed),
    )
    .context("building the unshared LoRA model with the adapter's r and lora_alpha")?;
    let plan = model.petl().plan().clone();
    let values = map_tensors(adapter, Family::T5, &plan, &plan_shapes(&plan))?;
    fill(model.petl().trainables(), &values)?;
    let info = TaskInfo {
        kind,
        labels: label_names(cfg, cfg.task, kind),
    };
    let answers = [(task.to_string(), TaskAnswers { kind, score_range })].into();
    let summary = summary_of(Family::T5, cfg, adapter, &plan, &targets);
    Ok(Prepared::T5 {
        model,
        info,
        answers,
        summary,
    })
}
