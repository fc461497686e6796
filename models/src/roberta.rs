//! RoBERTa / BERT encoders with ProPETL (ProAdapter, ProLoRA, ProPrefix) and their unshared
//! baselines — *One Network, Many Masks* (Zeng, Zhang & Lu, ACL 2023), method page §3.
//!
//! One file covers RoBERTa and BERT checkpoints in Hugging Face layout (`config.json`,
//! `model.safetensors`, `tokenizer.json`): the layer math is identical; they differ in the
//! position-id offset, the token-type vocabulary and the weight-name prefix (`roberta.`,
//! `bert.` or none), all detected from the checkpoint. The backbone is loaded as frozen
//! tensors (never `Var`s); only the PETL state and the head are trainable.
//!
//! ```no_run
//! use propetl_models::roberta::{Checkpoint, RobertaProAdapter, RobertaPetl};
//! use propetl_runtime::{PetlRng, NumericOverrides};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ckpt = Checkpoint::open("tiny-roberta", &candle_core::Device::Cpu)?;
//! let varmap = candle_nn::VarMap::new();
//! let model = RobertaProAdapter::from_checkpoint(&ckpt, 3, &NumericOverrides::default(), &varmap, &mut PetlRng::seed(42))?;
//! let (ids, mask) = ckpt.tokenizer()?.encode_batch(&["a sentence"], 128)?;
//! let logits = model.logits(&ids, &mask, None)?;
//! # Ok(()) }
//! ```
//!
//! Weight paths mirror Hugging Face (`{prefix}encoder.layer.{l}.attention.self.query.weight`,
//! …), so checkpoints load unchanged. Trainable names: the PETL names of
//! `propetl_runtime::plan` plus `head.dense.{weight,bias}`, `head.out_proj.{weight,bias}`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use propetl_macros::propetl;
use propetl_runtime::task::{collate_labeled, predictions_from_logits, task_loss};
use propetl_runtime::{
    ops, Batch, Example, ForwardMode, LayerPetl, LoraTarget, NumericOverrides, PetlConfig,
    PetlContext, PetlLayout, PetlRng, PetlSites, PetlSpec, PetlState, Prediction, ProPetlModel,
    Role, Sites, TaskKind, TaskModel, Trainable, Variant,
};
use serde::Deserialize;

use crate::common::get;
use crate::error::{ModelError, Result};

fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_type_vocab() -> usize {
    2
}
fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_pos() -> usize {
    512
}

/// The subset of a Hugging Face `config.json` the encoder needs (optional keys defaulted).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RobertaConfig {
    /// `roberta`, `bert`, `xlm-roberta` or `camembert`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// FFN activation (`gelu`, `gelu_new`, `relu`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Dropout on hidden states.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Position embeddings.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Token-type vocabulary.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: usize,
}

impl RobertaConfig {
    /// Parse and check a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            ModelError::Config(msg) => ModelError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parse and check config JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = crate::common::parse_hf_config(
            text,
            &["roberta", "bert", "xlm-roberta", "camembert"],
            "this encoder loads BERT-family checkpoints",
        )?;
        cfg.activation()?;
        if cfg.hidden_size == 0
            || cfg.num_attention_heads == 0
            || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(ModelError::Config(format!(
                "hidden_size {} is not a positive multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if cfg.num_hidden_layers == 0 {
            return Err(ModelError::Config("num_hidden_layers must be > 0".into()));
        }
        Ok(cfg)
    }

    /// Whether positions are RoBERTa-style (`padding_idx + 1` offset).
    pub fn roberta_positions(&self) -> bool {
        self.model_type != "bert"
    }

    fn activation(&self) -> Result<propetl_runtime::Activation> {
        use propetl_runtime::Activation::*;
        match self.hidden_act.as_str() {
            "gelu" => Ok(Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(GeluNew),
            "relu" => Ok(Relu),
            other => Err(ModelError::Config(format!(
                "unsupported hidden_act `{other}` (gelu, gelu_new, relu)"
            ))),
        }
    }

    /// Parameters of the backbone as Hugging Face's `RobertaModel`/`BertModel` counts them
    /// (embeddings, layers and pooler; no LM or classification head): 124,645,632 for
    /// roberta-base, the denominator of method page §6.
    pub fn backbone_params(&self) -> usize {
        let h = self.hidden_size;
        let f = self.intermediate_size;
        let emb =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h;
        let pooler = h * h + h;
        emb + self.num_hidden_layers * layer + pooler
    }

    /// A roberta-base-shaped config (for storage reports and benchmarks).
    pub fn roberta_base() -> Self {
        Self {
            model_type: "roberta".into(),
            vocab_size: 50265,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 514,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
        }
    }

    /// The PETL layout of this encoder (layers named `0..L`).
    pub fn layout(&self) -> PetlLayout {
        PetlLayout::single_task(
            self.hidden_size,
            self.num_attention_heads,
            self.num_hidden_layers,
        )
    }
}

/// A Hugging Face checkpoint folder.
#[derive(Clone)]
pub struct Checkpoint {
    /// The folder.
    pub dir: PathBuf,
    /// Parsed `config.json`.
    pub config: RobertaConfig,
    /// Weight-name prefix found in the file (`roberta.`, `bert.` or empty).
    pub prefix: String,
    vb: VarBuilder<'static>,
    tokenizer_json: Option<Vec<u8>>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Checkpoint {
    /// Open `config.json` and memory-map `model.safetensors` as frozen tensors.
    pub fn open(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config = RobertaConfig::from_file(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        let vb = crate::common::mmap_safetensors(&weights, device)?;
        let prefix = detect_prefix(|n| vb.contains_tensor(n), &weights.display().to_string())?;
        Ok(Self {
            dir,
            config,
            prefix,
            vb,
            tokenizer_json: None,
        })
    }

    /// A checkpoint from in-memory files: `config.json` text, `model.safetensors` bytes and
    /// optionally `tokenizer.json` bytes (e.g. a model embedded in a binary).
    pub fn from_bytes(
        config_json: &str,
        safetensors: Vec<u8>,
        tokenizer_json: Option<Vec<u8>>,
        device: &Device,
    ) -> Result<Self> {
        let config = RobertaConfig::from_json(config_json)?;
        let vb = VarBuilder::from_buffered_safetensors(safetensors, DType::F32, device)
            .map_err(|e| ModelError::Weights(e.to_string()))?;
        let prefix = detect_prefix(|n| vb.contains_tensor(n), "in-memory checkpoint")?;
        Ok(Self {
            dir: PathBuf::new(),
            config,
            prefix,
            vb,
            tokenizer_json,
        })
    }

    /// A checkpoint from in-memory tensors named like a Hugging Face file (prefix detected
    /// the same way). Used for models built in-process (demos, benchmarks).
    pub fn from_tensors(
        config: RobertaConfig,
        tensors: std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let prefix = detect_prefix(|n| tensors.contains_key(n), "in-memory tensors")?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Ok(Self {
            dir: PathBuf::new(),
            config,
            prefix,
            vb,
            tokenizer_json: None,
        })
    }

    /// Random weights in Hugging Face layout for `config` (N(0, std²) weights, LayerNorm
    /// weights 1, biases 0), under the `roberta.` prefix.
    pub fn random(
        config: RobertaConfig,
        std: f64,
        rng: &mut PetlRng,
        device: &Device,
    ) -> Result<Self> {
        let (h, f) = (config.hidden_size, config.intermediate_size);
        let mut t = std::collections::HashMap::new();
        let mut put = |name: String, shape: &[usize], kind: u8| -> Result<()> {
            let v = match kind {
                0 => rng.normal(shape, std, device)?,
                1 => Tensor::ones(shape, DType::F32, device)?,
                _ => Tensor::zeros(shape, DType::F32, device)?,
            };
            t.insert(format!("roberta.{name}"), v);
            Ok(())
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            &[config.vocab_size, h],
            0,
        )?;
        put(
            "embeddings.position_embeddings.weight".into(),
            &[config.max_position_embeddings, h],
            0,
        )?;
        put(
            "embeddings.token_type_embeddings.weight".into(),
            &[config.type_vocab_size, h],
            0,
        )?;
        put("embeddings.LayerNorm.weight".into(), &[h], 1)?;
        put("embeddings.LayerNorm.bias".into(), &[h], 2)?;
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", f, h),
                ("output.dense", h, f),
            ] {
                put(format!("{p}.{name}.weight"), &[out, inp], 0)?;
                put(format!("{p}.{name}.bias"), &[out], 2)?;
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                put(format!("{p}.{name}.weight"), &[h], 1)?;
                put(format!("{p}.{name}.bias"), &[h], 2)?;
            }
        }
        Self::from_tensors(config, t, device)
    }

    /// The backbone's `VarBuilder` rooted at the weight prefix.
    pub fn backbone(&self) -> VarBuilder<'static> {
        match self.prefix.trim_end_matches('.') {
            "" => self.vb.clone(),
            p => self.vb.pp(p),
        }
    }

    /// The device.
    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    /// The tokenizer of this checkpoint (`tokenizer.json`).
    pub fn tokenizer(&self) -> Result<crate::tokenizer::EncoderTokenizer> {
        if let Some(bytes) = &self.tokenizer_json {
            return crate::tokenizer::EncoderTokenizer::from_bytes(
                bytes,
                self.config.pad_token_id as u32,
                self.device(),
            );
        }
        crate::tokenizer::EncoderTokenizer::from_file(
            &self.dir.join("tokenizer.json"),
            self.config.pad_token_id as u32,
            self.device(),
        )
    }
}

/// The weight-name prefix (`roberta.`, `bert.` or none) under which `has` finds the word
/// embeddings.
fn detect_prefix(has: impl Fn(&str) -> bool, source: &str) -> Result<String> {
    ["roberta.", "bert.", ""]
        .into_iter()
        .find(|p| has(&format!("{p}embeddings.word_embeddings.weight")))
        .map(String::from)
        .ok_or_else(|| ModelError::Weights(format!("{source}: no `embeddings.word_embeddings.weight` (with prefix roberta./bert./none): not a BERT-family checkpoint")))
}

/// A frozen linear layer (PyTorch layout).
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(vb: VarBuilder, out: usize, inp: usize) -> Result<Self> {
        Ok(Self {
            weight: get(&vb, &[out, inp], "weight")?,
            bias: get(&vb, &[out], "bias")?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::frozen_linear(x, &self.weight, Some(&self.bias))
    }
}

/// A frozen LayerNorm, applied with the differentiable formulation.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(vb: VarBuilder, h: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: get(&vb, &[h], "weight")?,
            bias: get(&vb, &[h], "bias")?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::frozen_layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Word, position and token-type embeddings.
#[derive(Debug, Clone)]
pub struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    roberta_positions: bool,
    pad: u32,
    dropout: f64,
}

impl Embeddings {
    fn load(vb: VarBuilder, c: &RobertaConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            word: get(&vb, &[c.vocab_size, h], "word_embeddings.weight")?,
            position: get(
                &vb,
                &[c.max_position_embeddings, h],
                "position_embeddings.weight",
            )?,
            token_type: get(&vb, &[c.type_vocab_size, h], "token_type_embeddings.weight")?,
            norm: LayerNorm::load(vb.pp("LayerNorm"), h, c.layer_norm_eps)?,
            roberta_positions: c.roberta_positions(),
            pad: c.pad_token_id as u32,
            dropout: c.hidden_dropout_prob,
        })
    }

    fn forward(&self, ids: &Tensor, mode: &mut ForwardMode) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let ids_host = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let max_pos = self.position.dim(0)?;
        let mut pos = Vec::with_capacity(b * s);
        for row in &ids_host {
            let mut count = 0u32;
            for &t in row {
                let p = if self.roberta_positions {
                    // cumsum(ids != pad) * (ids != pad) + pad
                    if t != self.pad {
                        count += 1;
                        count + self.pad
                    } else {
                        self.pad
                    }
                } else {
                    let p = count;
                    count += 1;
                    p
                };
                if p as usize >= max_pos {
                    return Err(ModelError::Input(format!(
                        "sequence too long: position {p} >= max_position_embeddings {max_pos}"
                    )));
                }
                pos.push(p);
            }
        }
        crate::common::check_vocab(ids, self.word.dim(0)?)?;
        let pos = Tensor::from_vec(pos, (b * s,), ids.device())?;
        let flat = ids.to_dtype(DType::U32)?.flatten_all()?;
        let h = self.word.dim(1)?;
        let e = self
            .word
            .index_select(&flat, 0)?
            .add(&self.position.index_select(&pos, 0)?)?
            .broadcast_add(&self.token_type.get(0)?)?
            .reshape((b, s, h))?;
        let e = self.norm.forward(&e)?;
        Ok(mode.dropout(&e, self.dropout)?)
    }
}

/// One encoder layer (frozen).
#[derive(Debug, Clone)]
pub struct RobertaLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    heads: usize,
    act: propetl_runtime::Activation,
    dropout: f64,
    attn_dropout: f64,
}

impl RobertaLayer {
    fn load(vb: VarBuilder, c: &RobertaConfig) -> Result<Self> {
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let att = vb.pp("attention");
        Ok(Self {
            query: Linear::load(att.pp("self").pp("query"), h, h)?,
            key: Linear::load(att.pp("self").pp("key"), h, h)?,
            value: Linear::load(att.pp("self").pp("value"), h, h)?,
            attn_out: Linear::load(att.pp("output").pp("dense"), h, h)?,
            attn_norm: LayerNorm::load(att.pp("output").pp("LayerNorm"), h, c.layer_norm_eps)?,
            intermediate: Linear::load(vb.pp("intermediate").pp("dense"), f, h)?,
            output: Linear::load(vb.pp("output").pp("dense"), h, f)?,
            out_norm: LayerNorm::load(vb.pp("output").pp("LayerNorm"), h, c.layer_norm_eps)?,
            heads: c.num_attention_heads,
            act: c.activation()?,
            dropout: c.hidden_dropout_prob,
            attn_dropout: c.attention_probs_dropout_prob,
        })
    }

    fn proj(
        &self,
        lin: &Linear,
        x: &Tensor,
        petl: &LayerPetl,
        target: LoraTarget,
    ) -> candle_core::Result<Tensor> {
        let y = lin.forward(x)?;
        match petl
            .lora_delta(target, x)
            .map_err(candle_core::Error::wrap)?
        {
            Some(d) => y.add(&d),
            None => Ok(y),
        }
    }

    /// `x [B,S,H]`, `attention_bias [B,1,1,S(+P)]` (0 attend, large negative for padding).
    fn forward(
        &self,
        x: &Tensor,
        attention_bias: &Tensor,
        petl: &LayerPetl,
        mode: &mut ForwardMode,
    ) -> candle_core::Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let nh = self.heads;
        let hd = h / nh;
        let split = |t: Tensor| t.reshape((b, s, nh, hd))?.transpose(1, 2)?.contiguous();
        let q = split(self.proj(&self.query, x, petl, LoraTarget::Q)?)?;
        let mut k = split(self.proj(&self.key, x, petl, LoraTarget::K)?)?;
        let mut v = split(self.proj(&self.value, x, petl, LoraTarget::V)?)?;
        if let Some((pk, pv)) = petl.prefix_kv() {
            let p = pk.dim(0)?;
            let heads = |t: &Tensor| -> candle_core::Result<Tensor> {
                t.reshape((1, p, nh, hd))?
                    .transpose(1, 2)?
                    .broadcast_as((b, nh, p, hd))?
                    .contiguous()
            };
            k = Tensor::cat(&[heads(pk)?, k], 2)?;
            v = Tensor::cat(&[heads(pv)?, v], 2)?;
        }
        let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? / (hd as f64).sqrt())?;
        let scores = scores.broadcast_add(attention_bias)?;
        let probs = mode.dropout(&ops::softmax_last_dim(&scores)?, self.attn_dropout)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
        let att = mode.dropout(
            &self.proj(&self.attn_out, &ctx, petl, LoraTarget::O)?,
            self.dropout,
        )?;
        let x1 = self.attn_norm.forward(&att.add(x)?)?;
        let inter = ops::activate(&self.intermediate.forward(&x1)?, self.act)?;
        let hid = mode.dropout(&self.output.forward(&inter)?, self.dropout)?;
        let res = hid.add(&x1)?;
        // Pfeiffer placement (method page §3): u = LN(h + x); y = LN(A(u) + h + x)
        match petl
            .adapter(&self.out_norm.forward(&res)?)
            .map_err(candle_core::Error::wrap)?
        {
            Some(a) => self.out_norm.forward(&a.add(&res)?),
            None => self.out_norm.forward(&res),
        }
    }
}

impl PetlSites for RobertaLayer {
    /// The Pfeiffer adapter after the FFN, LoRA on q/k/v/o, prefix keys/values.
    const SITES: Sites = Sites::ALL;
}

/// The classification / regression head: `out_proj(tanh(dense(dropout(x[:,0]))))`.
#[derive(Debug, Clone)]
pub struct ClassificationHead {
    dense_w: candle_core::Var,
    dense_b: candle_core::Var,
    out_w: candle_core::Var,
    out_b: candle_core::Var,
    dropout: f64,
    /// What the head predicts (one output = regression with MSE).
    pub kind: TaskKind,
}

impl ClassificationHead {
    /// Create a trainable head (`head.*`) for `kind`, init N(0, 0.02), zero biases, registered
    /// in `varmap`.
    pub fn new(
        hidden: usize,
        kind: TaskKind,
        dropout: f64,
        varmap: &VarMap,
        rng: &mut PetlRng,
        dev: &Device,
    ) -> Result<Self> {
        let outputs = match kind {
            TaskKind::Classification { num_labels } if num_labels >= 2 => num_labels,
            TaskKind::Classification { num_labels } => {
                return Err(ModelError::Config(format!(
                    "a classification head needs at least 2 labels, got {num_labels}"
                )))
            }
            TaskKind::Regression => 1,
        };
        let mut data = varmap.data().lock().expect("varmap lock");
        let mut var = |name: &str, t: Tensor| -> Result<candle_core::Var> {
            let v = candle_core::Var::from_tensor(&t)?;
            data.insert(name.to_string(), v.clone());
            Ok(v)
        };
        Ok(Self {
            dense_w: var(
                "head.dense.weight",
                rng.normal((hidden, hidden), 0.02, dev)?,
            )?,
            dense_b: var("head.dense.bias", Tensor::zeros(hidden, DType::F32, dev)?)?,
            out_w: var(
                "head.out_proj.weight",
                rng.normal((outputs, hidden), 0.02, dev)?,
            )?,
            out_b: var(
                "head.out_proj.bias",
                Tensor::zeros(outputs, DType::F32, dev)?,
            )?,
            dropout,
            kind,
        })
    }

    fn forward(&self, hidden: &Tensor, mode: &mut ForwardMode) -> candle_core::Result<Tensor> {
        let x = mode.dropout(&hidden.narrow(1, 0, 1)?.squeeze(1)?, self.dropout)?;
        let x =
            ops::linear(&x, self.dense_w.as_tensor(), Some(self.dense_b.as_tensor()))?.tanh()?;
        let x = mode.dropout(&x, self.dropout)?;
        ops::linear(&x, self.out_w.as_tensor(), Some(self.out_b.as_tensor()))
    }

    /// The head's trainable tensors: weights decayed, biases not.
    pub fn trainables(&self) -> Vec<Trainable> {
        vec![
            Trainable::new("head.dense.weight", self.dense_w.clone(), Role::Decay),
            Trainable::new("head.dense.bias", self.dense_b.clone(), Role::NoDecay),
            Trainable::new("head.out_proj.weight", self.out_w.clone(), Role::Decay),
            Trainable::new("head.out_proj.bias", self.out_b.clone(), Role::NoDecay),
        ]
    }
}

/// The frozen embeddings and config every RoBERTa variant shares.
#[derive(Debug, Clone)]
pub struct Backbone {
    /// Config.
    pub config: RobertaConfig,
    embeddings: Embeddings,
}

fn load_layers(ckpt: &Checkpoint) -> Result<(Backbone, Vec<RobertaLayer>)> {
    let vb = ckpt.backbone();
    let c = &ckpt.config;
    let embeddings = Embeddings::load(vb.pp("embeddings"), c)?;
    let layers = (0..c.num_hidden_layers)
        .map(|l| RobertaLayer::load(vb.pp("encoder").pp("layer").pp(l), c))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        Backbone {
            config: c.clone(),
            embeddings,
        },
        layers,
    ))
}

fn encode(
    bb: &Backbone,
    layers: &[RobertaLayer],
    ctx: &PetlContext,
    ids: &Tensor,
    attention_mask: &Tensor,
    mode: &mut ForwardMode,
) -> Result<Tensor> {
    if ids.dims() != attention_mask.dims() {
        return Err(ModelError::Input(format!(
            "input_ids {:?} and attention_mask {:?} differ in shape",
            ids.dims(),
            attention_mask.dims()
        )));
    }
    let mut x = bb.embeddings.forward(ids, mode)?;
    let b = ids.dim(0)?;
    let mut bias = crate::common::additive_attention_mask(attention_mask)?;
    if let Some((pk, _)) = ctx.layer(0).prefix_kv() {
        let p = pk.dim(0)?;
        bias = Tensor::cat(&[Tensor::zeros((b, p), DType::F32, ids.device())?, bias], 1)?;
    }
    let bias = bias.unsqueeze(1)?.unsqueeze(1)?;
    for (l, layer) in layers.iter().enumerate() {
        x = layer.forward(&x, &bias, ctx.layer(l), mode)?;
    }
    Ok(x)
}

/// The frozen encoder without any PETL module: sentence embeddings, feature extraction, and
/// the reference against which PETL variants are compared.
#[derive(Debug, Clone)]
pub struct FrozenEncoder {
    backbone: Backbone,
    layers: Vec<RobertaLayer>,
}

impl FrozenEncoder {
    /// Load from a checkpoint.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let (backbone, layers) = load_layers(ckpt)?;
        Ok(Self { backbone, layers })
    }

    /// Last hidden state `[B, S, H]` (eval mode).
    pub fn hidden(&self, ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        encode(
            &self.backbone,
            &self.layers,
            &PetlContext::identity(self.layers.len()),
            ids,
            attention_mask,
            &mut ForwardMode::Eval,
        )
    }
}

/// Construction shared by the six variant types (what the variant table dispatches to).
trait FromCheckpoint: TaskModel + Sized + 'static {
    fn from_checkpoint(
        ckpt: &Checkpoint,
        kind: TaskKind,
        overrides: &NumericOverrides,
        varmap: &VarMap,
        rng: &mut PetlRng,
    ) -> Result<Self>;
}

macro_rules! roberta_variant {
    ($(#[$doc:meta])* $name:ident, $($attr:tt)*) => {
        $(#[$doc])*
        #[propetl($($attr)*, crate = "propetl_runtime")]
        #[derive(Debug, Clone)]
        pub struct $name {
            backbone: Backbone,
            #[propetl(layers)]
            layers: Vec<RobertaLayer>,
            #[propetl(state)]
            petl: PetlState,
            head: ClassificationHead,
        }

        impl $name {
            /// Load the frozen backbone from `ckpt`, create the PETL state (compile-time spec
            /// plus run-time numeric `overrides`) and a head for `kind` in `varmap`.
            pub fn from_checkpoint(ckpt: &Checkpoint, kind: TaskKind, overrides: &NumericOverrides, varmap: &VarMap, rng: &mut PetlRng) -> Result<Self> {
                <Self as FromCheckpoint>::from_checkpoint(ckpt, kind, overrides, varmap, rng)
            }

            /// Last hidden state and logits `[B, C]`.
            pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor, task: &str, mode: &mut ForwardMode) -> Result<(Tensor, Tensor)> {
                let ctx = self.petl_context(task)?;
                let h = encode(&self.backbone, &self.layers, &ctx, ids, attention_mask, mode)?;
                let logits = self.head.forward(&h, mode)?;
                Ok((h, logits))
            }

            /// The backbone config.
            pub fn config(&self) -> &RobertaConfig {
                &self.backbone.config
            }
        }

        impl FromCheckpoint for $name {
            fn from_checkpoint(ckpt: &Checkpoint, kind: TaskKind, overrides: &NumericOverrides, varmap: &VarMap, rng: &mut PetlRng) -> Result<Self> {
                let (backbone, layers) = load_layers(ckpt)?;
                let dev = ckpt.device();
                let petl = <Self as PetlSpec>::init_petl(&ckpt.config.layout(), overrides, varmap, rng, dev)?;
                let head = ClassificationHead::new(ckpt.config.hidden_size, kind, ckpt.config.hidden_dropout_prob, varmap, rng, dev)?;
                Ok(Self { backbone, layers, petl, head })
            }
        }

        impl TaskModel for $name {
            fn task_kind(&self) -> TaskKind {
                self.head.kind
            }
            fn collate(&self, examples: &[&Example], max_len: usize, task: &str) -> propetl_runtime::Result<Batch> {
                collate_labeled(examples, self.head.kind, max_len, self.backbone.config.pad_token_id as u32, task, self.petl.device())
            }
            fn loss(&self, batch: &Batch, mode: &mut ForwardMode) -> propetl_runtime::Result<Tensor> {
                let (_, logits) = self.forward(&batch.input_ids, &batch.attention_mask, &batch.task, mode).map_err(ModelError::into_petl)?;
                task_loss(self.head.kind, &logits, &batch.labels)
            }
            fn predict(&self, batch: &Batch) -> propetl_runtime::Result<Vec<Prediction>> {
                let (_, logits) = self.forward(&batch.input_ids, &batch.attention_mask, &batch.task, &mut ForwardMode::Eval).map_err(ModelError::into_petl)?;
                predictions_from_logits(self.head.kind, &logits)
            }
            fn logits(&self, batch: &Batch, mode: &mut ForwardMode) -> propetl_runtime::Result<Tensor> {
                Ok(self.forward(&batch.input_ids, &batch.attention_mask, &batch.task, mode).map_err(ModelError::into_petl)?.1)
            }
            fn hidden_states(&self, batch: &Batch) -> propetl_runtime::Result<Tensor> {
                let ctx = self.petl_context(&batch.task)?;
                encode(&self.backbone, &self.layers, &ctx, &batch.input_ids, &batch.attention_mask, &mut ForwardMode::Eval).map_err(ModelError::into_petl)
            }
            fn head_trainables(&self) -> Vec<Trainable> {
                self.head.trainables()
            }
            fn backbone_params(&self) -> usize {
                self.backbone.config.backbone_params()
            }
        }
    };
}

roberta_variant!(
    /// ProAdapter (method page §3): one Pfeiffer adapter (rf 12, ReLU) shared by all layers, per-layer masks, keep 0.5.
    RobertaProAdapter, adapter, share = "layers", keep = 0.5
);
roberta_variant!(
    /// ProLoRA: one LoRA prototype for q and one for v (r 32, α 48), per-layer masks, keep 0.1.
    RobertaProLora, lora(r = 32, alpha = 48, targets = ["q", "v"]), share = "layers", keep = 0.1
);
roberta_variant!(
    /// ProPrefix: one prefix (64, MLP 512) shared by all layers, per-layer masks on its output, keep 0.1.
    RobertaProPrefix, prefix(length = 64, hidden = 512), share = "layers", keep = 0.1
);
roberta_variant!(
    /// Unshared adapter baseline: one adapter per layer, no masks.
    RobertaAdapter, adapter, share = "none"
);
roberta_variant!(
    /// Unshared LoRA baseline (r 32 on q, v).
    RobertaLora, lora(r = 32, alpha = 48, targets = ["q", "v"]), share = "none"
);
roberta_variant!(
    /// Unshared prefix baseline (one MLP with per-layer outputs).
    RobertaPrefix, prefix(length = 64, hidden = 512), share = "none"
);

type Builder = fn(
    &Checkpoint,
    TaskKind,
    &NumericOverrides,
    &VarMap,
    &mut PetlRng,
) -> Result<Box<dyn TaskModel>>;

fn boxed<M: FromCheckpoint>(
    ckpt: &Checkpoint,
    kind: TaskKind,
    overrides: &NumericOverrides,
    varmap: &VarMap,
    rng: &mut PetlRng,
) -> Result<Box<dyn TaskModel>> {
    Ok(Box::new(M::from_checkpoint(
        ckpt, kind, overrides, varmap, rng,
    )?))
}

/// The variants RoBERTa supports: (variant, compile-time spec, constructor). The one place a
/// run-time variant name meets a type.
const VARIANTS: [(Variant, PetlConfig, Builder); 6] = [
    (
        Variant::ProAdapter,
        RobertaProAdapter::PROPETL,
        boxed::<RobertaProAdapter>,
    ),
    (
        Variant::ProLora,
        RobertaProLora::PROPETL,
        boxed::<RobertaProLora>,
    ),
    (
        Variant::ProPrefix,
        RobertaProPrefix::PROPETL,
        boxed::<RobertaProPrefix>,
    ),
    (
        Variant::Adapter,
        RobertaAdapter::PROPETL,
        boxed::<RobertaAdapter>,
    ),
    (Variant::Lora, RobertaLora::PROPETL, boxed::<RobertaLora>),
    (
        Variant::Prefix,
        RobertaPrefix::PROPETL,
        boxed::<RobertaPrefix>,
    ),
];

fn entry(variant: Variant) -> Result<&'static (Variant, PetlConfig, Builder)> {
    VARIANTS
        .iter()
        .find(|(v, _, _)| *v == variant)
        .ok_or_else(|| {
            let names: Vec<&str> = VARIANTS.iter().map(|(v, _, _)| v.name()).collect();
            ModelError::Config(format!(
                "RoBERTa has no variant `{variant}` (supported: {})",
                names.join(", ")
            ))
        })
}

/// The compile-time spec of a RoBERTa variant.
pub fn spec(variant: Variant) -> Result<PetlConfig> {
    Ok(entry(variant)?.1.clone())
}

/// Build a RoBERTa variant with a head for `kind` (the trainer's model).
pub fn build(
    variant: Variant,
    ckpt: &Checkpoint,
    kind: TaskKind,
    overrides: &NumericOverrides,
    varmap: &VarMap,
    rng: &mut PetlRng,
) -> Result<Box<dyn TaskModel>> {
    (entry(variant)?.2)(ckpt, kind, overrides, varmap, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roberta_base_parameter_count() {
        assert_eq!(RobertaConfig::roberta_base().backbone_params(), 124_645_632);
    }

    #[test]
    fn config_errors_are_clear() {
        let e = RobertaConfig::from_json("{").unwrap_err().to_string();
        assert!(e.contains("malformed config.json"), "{e}");
        let e = RobertaConfig::from_json(r#"{"model_type": "t5"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported model_type `t5`"), "{e}");
        let e = RobertaConfig::from_json(r#"{"model_type": "bert", "vocab_size": 10}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field"), "{e}");
        let ok = r#"{"model_type":"bert","vocab_size":10,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"hidden_act":"swish"}"#;
        let e = RobertaConfig::from_json(ok).unwrap_err().to_string();
        assert!(e.contains("unsupported hidden_act `swish`"), "{e}");
        let c = RobertaConfig::from_json(&ok.replace("swish", "gelu")).unwrap();
        assert_eq!(
            (
                c.type_vocab_size,
                c.layer_norm_eps,
                c.max_position_embeddings
            ),
            (2, 1e-12, 512)
        );
        assert!(!c.roberta_positions());
    }
}

/// Mean-pool `hidden [B,S,H]` over attended positions and L2-normalize (sentence embeddings).
pub fn mean_pool_normalized(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let m = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(mean.broadcast_div(&norm)?)
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    /// Method page §6 through the annotated model types' compile-time specs.
    #[test]
    fn roberta_base_storage_of_every_variant() {
        let cfg = RobertaConfig::roberta_base();
        let expect = [
            (Variant::ProAdapter, 136_000.0, "0.109"),
            (Variant::ProLora, 135_168.0, "0.108"),
            (Variant::ProPrefix, 135_168.0, "0.108"),
            (Variant::Adapter, 1_189_632.0, "0.954"),
            (Variant::Lora, 1_179_648.0, "0.946"),
            (Variant::Prefix, 1_179_648.0, "0.946"),
        ];
        for (v, floats, pct) in expect {
            let plan = propetl_runtime::Plan::new(&spec(v).unwrap(), &cfg.layout()).unwrap();
            let r =
                propetl_runtime::StorageReport::from_plan(&plan, cfg.backbone_params(), 0).unwrap();
            assert_eq!(r.float32_equivalents, floats, "{v:?}");
            assert_eq!(format!("{:.3}", r.percent_of_backbone), pct, "{v:?}");
        }
    }
}
