//! Export of trained LoRA / ProLoRA (and full fine-tuning) runs to the formats the rest of the
//! ecosystem reads.
//!
//! - [`ExportFormat::Peft`]: a PEFT LoRA adapter folder (`adapter_config.json` +
//!   `adapter_model.safetensors`), loadable with `PeftModel.from_pretrained` on the run's base
//!   checkpoint (transformers' `RobertaForSequenceClassification`). Every layer's masked
//!   factors `A ⊙ M_A`, `B ⊙ M_B` (method page §7) become that layer's `lora_A` / `lora_B`;
//!   `r` and `lora_alpha` are the run's, so PEFT's scaling `lora_alpha / r` is the run's `α/r`.
//!   The classification head is saved as PEFT saves a `modules_to_save` module.
//! - [`ExportFormat::Merged`]: a plain Hugging Face checkpoint (`config.json`,
//!   `model.safetensors`, `tokenizer.json`) with `ΔW_l = (α/r)(B⊙M_B)(A⊙M_A)` folded into the
//!   projection weights and the head as `classifier.*`: `RobertaForSequenceClassification` in
//!   transformers, a base checkpoint for `propetl train`, and [`MergedClassifier`] here (the
//!   frozen backbone alone, at plain-backbone speed). A `full` (full fine-tuning) run exports
//!   the same way, with its own fine-tuned backbone.
//!
//! Adapter and prefix runs add modules that neither format has a place for: they are refused
//! with a message that says so. Everything is validated before anything is written; the
//! folder is built in a hidden sibling and renamed into place at the end, so a failed export
//! leaves nothing behind and never a half-written folder.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use propetl::export::{export, ExportFormat, ExportOptions};
//! let out = "exports/sst2-peft".as_ref();
//! let s = export("runs/latest".as_ref(), ExportFormat::Peft, out, &ExportOptions::default())?;
//! println!("{} tensors in {}", s.tensors, s.out.display());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use propetl_models::roberta::{hf_tensors, Checkpoint, FrozenEncoder};
use propetl_models::tokenizer::EncoderTokenizer;
use propetl_runtime::{ops, LayerPetl, LoraTarget, Method, TaskKind, TaskModel, Variant};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

use crate::predict::{PredictInput, TaskInfo};
use crate::run::{
    absolute, check_output_folder, write_folder_atomically, ModelFamily, RunConfig, BUILTIN_CONFIG,
    BUILTIN_TOKENIZER,
};

/// Tokenizer files copied from the model folder into a merged checkpoint when present.
const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
];

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A PEFT LoRA adapter folder.
    Peft,
    /// A plain Hugging Face checkpoint with LoRA folded into the weights.
    Merged,
}

impl ExportFormat {
    /// The format's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Peft => "peft",
            ExportFormat::Merged => "merged",
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "peft" => Ok(ExportFormat::Peft),
            "merged" => Ok(ExportFormat::Merged),
            other => Err(format!("unknown export format `{other}` (peft, merged)")),
        }
    }
}

/// Options of [`export`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Replace a non-empty output folder (the new one is built beside it and swapped in at
    /// the end).
    pub overwrite: bool,
    /// `base_model_name_or_path` of a PEFT adapter (default: the run's model folder as an
    /// absolute path, or its Hub id). Needed for runs on the built-in tiny model, which has
    /// no folder.
    pub base_model: Option<String>,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// The format.
    pub format: ExportFormat,
    /// The folder written.
    pub out: PathBuf,
    /// File names in it.
    pub files: Vec<String>,
    /// Tensors in its safetensors file.
    pub tensors: usize,
    /// Encoder layers.
    pub layers: usize,
    /// LoRA targets as Hugging Face module names (`query`, `value`, …; empty for a `full` run).
    pub target_modules: Vec<String>,
    /// LoRA rank (0 for a `full` run).
    pub r: usize,
    /// LoRA α (PEFT's `lora_alpha`; the update is scaled by α/r).
    pub alpha: f64,
}

/// A run directory loaded for export: its configuration, task, base checkpoint and restored
/// model (on the CPU).
struct LoadedRun {
    cfg: RunConfig,
    /// The model folder (a Hub id resolved to its cached snapshot); `None`: built-in tiny.
    model_dir: Option<PathBuf>,
    info: TaskInfo,
    ckpt: Checkpoint,
    model: Box<dyn TaskModel>,
}

/// The files of an export folder: (file name, bytes).
type Files = Vec<(String, Vec<u8>)>;

/// One layer's masked LoRA factors of one target.
struct LoraFactors {
    layer: usize,
    target: LoraTarget,
    /// `A ⊙ M_A`, `[r, in]`.
    a: Tensor,
    /// `B ⊙ M_B`, `[out, r]`.
    b: Tensor,
    scale: f64,
}

/// The Hugging Face module of a LoRA target inside `encoder.layer.{l}`, and PEFT's
/// `target_modules` name of it (a suffix that matches only that module).
fn hf_module(target: LoraTarget) -> (&'static str, &'static str) {
    match target {
        LoraTarget::Q => ("attention.self.query", "query"),
        LoraTarget::K => ("attention.self.key", "key"),
        LoraTarget::V => ("attention.self.value", "value"),
        LoraTarget::O => ("attention.output.dense", "attention.output.dense"),
    }
}

/// The transformers class of a sequence-classification model of `model_type`.
fn architecture(model_type: &str) -> Option<&'static str> {
    match model_type {
        "roberta" => Some("RobertaForSequenceClassification"),
        "xlm-roberta" => Some("XLMRobertaForSequenceClassification"),
        "camembert" => Some("CamembertForSequenceClassification"),
        _ => None,
    }
}

/// Refuse a variant that has no LoRA to export, naming what works.
fn check_variant(variant: Variant, format: ExportFormat, dir: &Path) -> Result<()> {
    match variant {
        Variant::Lora | Variant::ProLora => Ok(()),
        Variant::Full => match format {
            ExportFormat::Merged => Ok(()),
            ExportFormat::Peft => bail!(
                "{} is a `full` run: there is no adapter to export to PEFT; `--format merged` \
                 writes its fine-tuned backbone as a Hugging Face checkpoint",
                dir.display()
            ),
        },
        other => match format {
            ExportFormat::Peft => bail!(
                "{} is a `{other}` run: PEFT export writes LoRA adapters, so it works for `lora` and \
                 `pro_lora` runs only (use `propetl predict` on the run directory for the others)",
                dir.display()
            ),
            ExportFormat::Merged => bail!(
                "{} is a `{other}` run: adapters and prefixes add modules to the network and cannot be \
                 folded into the backbone's weights; `--format merged` (and `--format peft`) work for \
                 `lora` and `pro_lora` runs only",
                dir.display()
            ),
        },
    }
}

/// Load and validate a run directory: configuration, task, variant, base checkpoint, saved
/// state. Nothing is written.
fn load_run(dir: &Path, format: ExportFormat) -> Result<LoadedRun> {
    if !dir.is_dir() {
        bail!("run directory {} does not exist", dir.display());
    }
    let cfg = RunConfig::from_toml_file(&dir.join("config.toml"))
        .with_context(|| format!("is {} a run directory?", dir.display()))?;
    check_variant(cfg.variant, format, dir)?;
    let info: TaskInfo = serde_json::from_str(
        &std::fs::read_to_string(dir.join("task.json"))
            .with_context(|| format!("reading {}/task.json", dir.display()))?,
    )
    .with_context(|| format!("{}/task.json is malformed", dir.display()))?;
    let model_dir = cfg.resolved_model_dir().with_context(|| {
        format!(
            "the model of run {} (`model_dir` in its config.toml)",
            dir.display()
        )
    })?;
    if cfg.model_family()? == ModelFamily::TextToText {
        bail!(
            "{} is a T5 run: export writes RoBERTa-family sequence classifiers (PEFT \
             SEQ_CLS adapters, RobertaForSequenceClassification checkpoints); T5 runs \
             cannot be exported yet",
            dir.display()
        );
    }
    if let (TaskKind::Classification { num_labels }, false) = (info.kind, info.labels.is_empty()) {
        if info.labels.len() != num_labels {
            bail!(
                "{}/task.json names {} labels for {num_labels} classes",
                dir.display(),
                info.labels.len()
            );
        }
    }
    let (ckpt, model) = crate::run::load_encoder_run(dir, &cfg, info.kind, &Device::Cpu)?;
    if architecture(&ckpt.config.model_type).is_none() {
        bail!(
            "the run's model is a `{}` checkpoint: export writes RoBERTa-family sequence \
             classifiers (roberta, xlm-roberta, camembert), whose classifier.dense / \
             classifier.out_proj head is the one propetl trains; BertForSequenceClassification \
             has another head",
            ckpt.config.model_type
        );
    }
    Ok(LoadedRun {
        cfg,
        model_dir,
        info,
        ckpt,
        model,
    })
}

/// Every layer's masked LoRA factors, in layer then target order, and (r, α, targets).
fn lora_factors(model: &dyn TaskModel) -> Result<(Vec<LoraFactors>, usize, f64, Vec<LoraTarget>)> {
    let (r, alpha, targets) = match &model.petl().config().method {
        Method::Lora { r, alpha, targets } => (*r, *alpha, targets.to_vec()),
        other => bail!("the run's PETL method is {other:?}, not LoRA"),
    };
    let task = model
        .petl()
        .layout()
        .tasks
        .first()
        .cloned()
        .context("the PETL state has no task")?;
    let ctx = model.petl_context(&task)?;
    let mut out = Vec::new();
    for l in 0..ctx.len() {
        let LayerPetl::Lora(parts) = ctx.layer(l) else {
            bail!("layer {l} has no LoRA module");
        };
        for &target in &targets {
            let p = parts
                .iter()
                .find(|p| p.target == target)
                .with_context(|| format!("layer {l} has no LoRA pair for `{target}`"))?;
            let expected = alpha / r as f64;
            if (p.scale - expected).abs() > 1e-12 * expected.abs().max(1.0) {
                bail!(
                    "layer {l} `{target}`: LoRA scale {} is not α/r = {expected}",
                    p.scale
                );
            }
            out.push(LoraFactors {
                layer: l,
                target,
                a: p.a.detach().to_dtype(DType::F32)?,
                b: p.b.detach().to_dtype(DType::F32)?,
                scale: p.scale,
            });
        }
    }
    Ok((out, r, alpha, targets))
}

/// The head's tensors under transformers' names (`classifier.dense.weight`, …).
fn classifier_tensors(model: &dyn TaskModel) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in model.head_tensors() {
        let rest = name
            .strip_prefix("head.")
            .with_context(|| format!("unexpected head tensor `{name}`"))?;
        out.insert(format!("classifier.{rest}"), t.to_dtype(DType::F32)?);
    }
    for need in [
        "classifier.dense.weight",
        "classifier.dense.bias",
        "classifier.out_proj.weight",
        "classifier.out_proj.bias",
    ] {
        if !out.contains_key(need) {
            bail!("the run's head has no `{need}`");
        }
    }
    Ok(out)
}

/// safetensors bytes of f32 tensors (refusing non-finite values), with `metadata`.
fn safetensors_bytes(
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut blobs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if v.iter().any(|x| !x.is_finite()) {
            bail!("tensor `{name}` has a non-finite value: refusing to export it");
        }
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        blobs.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = blobs
        .iter()
        .map(|(n, shape, bytes)| {
            Ok((
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::tensor::serialize(views, Some(metadata))?)
}

/// A JSON number for α: an integer when it is one (as PEFT writes `lora_alpha`).
fn alpha_json(alpha: f64) -> Value {
    if alpha.fract() == 0.0 && alpha.abs() < 1e15 {
        json!(alpha as i64)
    } else {
        json!(alpha)
    }
}

/// The files of a PEFT LoRA adapter folder.
fn peft_files(run: &LoadedRun, base_model: &str) -> Result<(Files, ExportSummary)> {
    let (factors, r, alpha, targets) = lora_factors(run.model.as_ref())?;
    let mut tensors = BTreeMap::new();
    for f in &factors {
        let (module, _) = hf_module(f.target);
        let p = format!(
            "base_model.model.roberta.encoder.layer.{}.{module}",
            f.layer
        );
        tensors.insert(format!("{p}.lora_A.weight"), f.a.clone());
        tensors.insert(format!("{p}.lora_B.weight"), f.b.clone());
    }
    for (name, t) in classifier_tensors(run.model.as_ref())? {
        tensors.insert(format!("base_model.model.{name}"), t);
    }
    let target_modules: Vec<String> = targets
        .iter()
        .map(|&t| hf_module(t).1.to_string())
        .collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "revision": null,
        "r": r,
        "lora_alpha": alpha_json(alpha),
        "lora_dropout": 0.0,
        "target_modules": target_modules,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "bias": "none",
        "lora_bias": false,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": ["classifier"],
        "init_lora_weights": true,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true,
        "auto_mapping": null,
    });
    let weights = safetensors_bytes(&tensors, [("format".into(), "pt".into())].into())?;
    let files = vec![
        (
            "adapter_config.json".to_string(),
            (serde_json::to_string_pretty(&config)? + "\n").into_bytes(),
        ),
        ("adapter_model.safetensors".to_string(), weights),
    ];
    let summary = ExportSummary {
        format: ExportFormat::Peft,
        out: PathBuf::new(),
        files: files.iter().map(|(n, _)| n.clone()).collect(),
        tensors: tensors.len(),
        layers: run.ckpt.config.num_hidden_layers,
        target_modules,
        r,
        alpha,
    };
    Ok((files, summary))
}

/// The files of a merged Hugging Face checkpoint.
fn merged_files(run: &LoadedRun) -> Result<(Files, ExportSummary)> {
    let ckpt = &run.ckpt;
    let mut tensors = BTreeMap::new();
    let (factors, r, alpha, targets) = if run.cfg.variant.is_full() {
        // full fine-tuning: the run's own backbone, every tensor of the layout
        let trained: BTreeMap<String, Tensor> = run
            .model
            .backbone_trainables()
            .into_iter()
            .map(|t| (t.name, t.var.as_tensor().detach()))
            .collect();
        for t in hf_tensors(&ckpt.config) {
            let name = format!("{}{}", ckpt.prefix, t.name);
            let w = trained
                .get(&name)
                .with_context(|| format!("the full run's model has no trained `{name}`"))?;
            tensors.insert(t.name, w.to_dtype(DType::F32)?);
        }
        (Vec::new(), 0, 0.0, Vec::new())
    } else {
        let vb = ckpt.backbone();
        for t in hf_tensors(&ckpt.config) {
            let w = vb
                .get(t.shape.as_slice(), &t.name)
                .with_context(|| format!("reading `{}` from the base checkpoint", t.name))?;
            tensors.insert(t.name, w.to_dtype(DType::F32)?);
        }
        lora_factors(run.model.as_ref())?
    };
    for f in &factors {
        let (module, _) = hf_module(f.target);
        let name = format!("encoder.layer.{}.{module}.weight", f.layer);
        let w = tensors
            .get(&name)
            .with_context(|| format!("the base checkpoint has no `{name}`"))?;
        // ΔW = (α/r)·(B ⊙ M_B)(A ⊙ M_A), [out, r]·[r, in] = [out, in]
        let delta = (f.b.matmul(&f.a)? * f.scale)?;
        if delta.dims() != w.dims() {
            bail!(
                "layer {} `{}`: LoRA update {:?} does not fit the weight {:?}",
                f.layer,
                f.target,
                delta.dims(),
                w.dims()
            );
        }
        let folded = w.add(&delta)?;
        tensors.insert(name, folded);
    }
    let mut tensors: BTreeMap<String, Tensor> = tensors
        .into_iter()
        .map(|(n, t)| (format!("roberta.{n}"), t))
        .collect();
    tensors.extend(classifier_tensors(run.model.as_ref())?);

    // config.json: the base config, as a sequence classifier of this task
    let base_text = match &run.model_dir {
        Some(d) => std::fs::read_to_string(d.join("config.json"))
            .with_context(|| format!("reading {}/config.json", d.display()))?,
        None => BUILTIN_CONFIG.to_string(),
    };
    let mut config: Value = serde_json::from_str(&base_text).context("the base config.json")?;
    let obj = config
        .as_object_mut()
        .context("the base config.json is not a JSON object")?;
    let arch = architecture(&ckpt.config.model_type).expect("checked when loading");
    obj.insert("architectures".into(), json!([arch]));
    let labels: Vec<String> = match run.info.kind {
        TaskKind::Regression => vec!["LABEL_0".into()],
        TaskKind::Classification { num_labels } if run.info.labels.len() == num_labels => {
            run.info.labels.clone()
        }
        TaskKind::Classification { num_labels } => {
            (0..num_labels).map(|i| format!("LABEL_{i}")).collect()
        }
    };
    let id2label: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), json!(n)))
        .collect();
    let label2id: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), json!(i)))
        .collect();
    obj.insert("id2label".into(), Value::Object(id2label));
    obj.insert("label2id".into(), Value::Object(label2id));
    obj.remove("num_labels");
    obj.insert(
        "problem_type".into(),
        json!(match run.info.kind {
            TaskKind::Regression => "regression",
            TaskKind::Classification { .. } => "single_label_classification",
        }),
    );

    let weights = safetensors_bytes(&tensors, [("format".into(), "pt".into())].into())?;
    let mut files = vec![
        (
            "config.json".to_string(),
            (serde_json::to_string_pretty(&config)? + "\n").into_bytes(),
        ),
        ("model.safetensors".to_string(), weights),
    ];
    match &run.model_dir {
        Some(d) => {
            for name in TOKENIZER_FILES {
                let p = d.join(name);
                if p.is_file() {
                    let bytes =
                        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                    files.push((name.to_string(), bytes));
                }
            }
        }
        None => files.push(("tokenizer.json".to_string(), BUILTIN_TOKENIZER.to_vec())),
    }
    let summary = ExportSummary {
        format: ExportFormat::Merged,
        out: PathBuf::new(),
        files: files.iter().map(|(n, _)| n.clone()).collect(),
        tensors: tensors.len(),
        layers: ckpt.config.num_hidden_layers,
        target_modules: targets
            .iter()
            .map(|&t| hf_module(t).1.to_string())
            .collect(),
        r,
        alpha,
    };
    Ok((files, summary))
}

/// Write `files` into a hidden sibling of `out` and rename it into place (replacing `out`,
/// which the caller has checked may be replaced). On any error nothing is left behind.
fn write_atomically(out: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    write_folder_atomically(out, "export", |staging| {
        for (file, bytes) in files {
            let p = staging.join(file);
            let mut f =
                std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
            std::io::Write::write_all(&mut f, bytes)
                .with_context(|| format!("writing {}", p.display()))?;
            f.sync_all()
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    })
}

/// Export the best state of the LoRA / ProLoRA run in `run_dir` as `format` into the folder
/// `out`. The run and `out` are validated before anything is written; a non-empty `out` is
/// refused unless `options.overwrite`; the folder appears complete or not at all.
pub fn export(
    run_dir: &Path,
    format: ExportFormat,
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportSummary> {
    // the output folder first: cheap, and a refusal should not wait for a model to load
    check_output_folder(out, options.overwrite)?;
    let out_abs = absolute(out);
    let run_abs = absolute(run_dir);
    if run_abs.starts_with(&out_abs) {
        bail!(
            "--out {} would replace the run directory {} itself: choose another folder",
            out.display(),
            run_dir.display()
        );
    }
    let run = load_run(run_dir, format)?;
    if let Some(d) = &run.model_dir {
        if absolute(d).starts_with(&out_abs) {
            bail!(
                "--out {} would replace the run's base model folder {}: choose another folder",
                out.display(),
                d.display()
            );
        }
    }
    let (files, mut summary) = match format {
        ExportFormat::Peft => {
            let base = match (&options.base_model, &run.cfg.model_dir) {
                (Some(b), _) => b.clone(),
                // a local folder as an absolute path; a Hub id as the id
                (None, Some(d)) if d.exists() => absolute(d).to_string_lossy().to_string(),
                (None, Some(id)) => id.to_string_lossy().to_string(),
                (None, None) => bail!(
                    "{} was trained on the built-in tiny RoBERTa, which has no model folder for \
                     the adapter's base_model_name_or_path: pass --base-model (e.g. the folder \
                     tests/fixtures/tiny-roberta it is built from), or use --format merged",
                    run_dir.display()
                ),
            };
            peft_files(&run, &base)?
        }
        ExportFormat::Merged => merged_files(&run)?,
    };
    write_atomically(out, &files)?;
    summary.out = out.to_path_buf();
    Ok(summary)
}

/// A merged checkpoint loaded by propetl: the frozen backbone (LoRA already in its weights)
/// and the `classifier.*` head, no PETL module at all.
pub struct MergedClassifier {
    encoder: FrozenEncoder,
    tokenizer: EncoderTokenizer,
    dense_w: Tensor,
    dense_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    labels: Vec<String>,
    max_len: usize,
}

impl MergedClassifier {
    /// Load a folder written by [`export`] with [`ExportFormat::Merged`] (or any
    /// `RobertaForSequenceClassification` checkpoint with a `tokenizer.json`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let ckpt = Checkpoint::open(dir, device)
            .with_context(|| format!("opening {} as a checkpoint", dir.display()))?;
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json"))
                .with_context(|| format!("reading {}/config.json", dir.display()))?,
        )
        .with_context(|| format!("{}/config.json", dir.display()))?;
        let mut labels: Vec<(usize, String)> = config
            .get("id2label")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        labels.sort();
        let weights = dir.join("model.safetensors");
        let st = candle_core::safetensors::load(&weights, device)
            .with_context(|| format!("reading {}", weights.display()))?;
        let h = ckpt.config.hidden_size;
        let get = |name: &str| -> Result<Tensor> {
            let t = st
                .get(name)
                .with_context(|| format!("{}: no `{name}`", weights.display()))?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let (dense_w, dense_b) = (
            get("classifier.dense.weight")?,
            get("classifier.dense.bias")?,
        );
        let (out_w, out_b) = (
            get("classifier.out_proj.weight")?,
            get("classifier.out_proj.bias")?,
        );
        let c = out_w.dim(0)?;
        if dense_w.dims() != [h, h]
            || dense_b.dims() != [h]
            || out_w.dims() != [c, h]
            || out_b.dims() != [c]
        {
            bail!(
                "{}: classifier shapes {:?} {:?} {:?} {:?} do not fit hidden size {h}",
                weights.display(),
                dense_w.dims(),
                dense_b.dims(),
                out_w.dims(),
                out_b.dims()
            );
        }
        let labels = if labels.len() == c {
            labels.into_iter().map(|(_, n)| n).collect()
        } else {
            (0..c).map(|i| format!("LABEL_{i}")).collect()
        };
        Ok(Self {
            encoder: FrozenEncoder::from_checkpoint(&ckpt)?,
            tokenizer: ckpt.tokenizer()?,
            dense_w,
            dense_b,
            out_w,
            out_b,
            labels,
            max_len: ckpt.config.max_position_embeddings.saturating_sub(2).max(1),
        })
    }

    /// Class names in index order (`id2label`).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Logits `[C]` of every input (one forward pass per `batch_size` inputs), in input order.
    pub fn logits(&self, inputs: &[PredictInput], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(batch_size) {
            let seqs = chunk
                .iter()
                .map(|x| {
                    Ok(match &x.text_pair {
                        Some(b) => self.tokenizer.encode_pair(&x.text, b)?,
                        None => self.tokenizer.encode(&x.text)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let (ids, mask) = self.tokenizer.batch(&seqs, self.max_len)?;
            let hidden = self.encoder.hidden(&ids, &mask)?;
            let x = hidden.narrow(1, 0, 1)?.squeeze(1)?;
            let x = ops::linear(&x, &self.dense_w, Some(&self.dense_b))?.tanh()?;
            let logits = ops::linear(&x, &self.out_w, Some(&self.out_b))?;
            out.extend(logits.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}
