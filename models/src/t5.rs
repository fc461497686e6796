//! T5 (encoder–decoder) with multi-task ProPETL — *One Network, Many Masks* (Zeng, Zhang &
//! Lu, ACL 2023), method page §5: one adapter after the FFN of every encoder and decoder block,
//! shared by all blocks and all tasks; a task mask per task combined (`or`) with a mask per
//! block.
//!
//! Loads Hugging Face `T5ForConditionalGeneration` checkpoints (`config.json`,
//! `model.safetensors` with `shared.weight`, `encoder.block.{l}…`, `decoder.block.{l}…`) as
//! frozen tensors. Layers are named `enc.{l}` and `dec.{l}` in the PETL state, so layer masks
//! are `mask.enc.0.down`, … and task masks `mask.task.{task}.down`, ….
//!
//! ```no_run
//! use propetl_models::t5::{T5Checkpoint, T5ProAdapter, Seq2Seq};
//! use propetl_runtime::{NumericOverrides, PetlRng};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ckpt = T5Checkpoint::open("t5-base", &candle_core::Device::Cpu)?;
//! let varmap = candle_nn::VarMap::new();
//! let tasks = ["rte", "sst2", "cola"];
//! let model = T5ProAdapter::from_checkpoint(&ckpt, &tasks, &NumericOverrides::default(), &varmap, &mut PetlRng::seed(42))?;
//! // token ids of "sst2 sentence: ...", its attention mask, and the decoder inputs
//! let ids = candle_core::Tensor::new(&[[834u32, 7, 1]], ckpt.device())?;
//! let attention_mask = candle_core::Tensor::new(&[[1u32, 1, 1]], ckpt.device())?;
//! let dec = candle_core::Tensor::new(&[[0u32]], ckpt.device())?;
//! let logits = model.logits(&ids, &attention_mask, &dec, "sst2")?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use propetl_macros::propetl;
use propetl_runtime::{
    ops, LayerPetl, NumericOverrides, PetlConfig, PetlLayout, PetlRng, PetlSites, PetlSpec,
    PetlState, ProPetlModel, Sites, Variant,
};
use serde::Deserialize;

use crate::common::get;
use crate::error::{ModelError, Result};

fn d_buckets() -> usize {
    32
}
fn d_max_distance() -> usize {
    128
}
fn d_eps() -> f64 {
    1e-6
}
fn d_ff_proj() -> String {
    "relu".into()
}
fn d_true() -> bool {
    true
}

/// The subset of a T5 `config.json` the model needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct T5Config {
    /// Must be `t5`.
    pub model_type: String,
    /// Vocabulary.
    pub vocab_size: usize,
    /// Model width.
    pub d_model: usize,
    /// Per-head width.
    pub d_kv: usize,
    /// FFN width.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Decoder blocks (default: `num_layers`).
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    /// Heads.
    pub num_heads: usize,
    /// Relative-position buckets.
    #[serde(default = "d_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Relative-position maximum distance.
    #[serde(default = "d_max_distance")]
    pub relative_attention_max_distance: usize,
    /// RMS-norm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` or `gelu` (gated variants are not supported).
    #[serde(default = "d_ff_proj")]
    pub feed_forward_proj: String,
    /// Tied input/output embeddings (scales decoder outputs by d_model^-0.5).
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// Padding id (also the decoder start token).
    #[serde(default)]
    pub pad_token_id: u32,
}

impl T5Config {
    /// Parse and check config JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let c: Self =
            crate::common::parse_hf_config(text, &["t5"], "this model loads T5 checkpoints")?;
        if !matches!(c.feed_forward_proj.as_str(), "relu" | "gelu") {
            return Err(ModelError::Config(format!("unsupported feed_forward_proj `{}` (relu or gelu; gated T5 v1.1 FFNs are not supported)", c.feed_forward_proj)));
        }
        if !c.tie_word_embeddings {
            return Err(ModelError::Config(
                "untied T5 output embeddings are not supported".into(),
            ));
        }
        if c.num_heads == 0 || c.d_kv == 0 || c.num_layers == 0 {
            return Err(ModelError::Config(
                "num_heads, d_kv and num_layers must be > 0".into(),
            ));
        }
        Ok(c)
    }

    /// Decoder blocks.
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// The PETL layout: layers `enc.0…`, `dec.0…`, the given tasks.
    pub fn layout(&self, tasks: &[&str]) -> PetlLayout {
        let layers = (0..self.num_layers)
            .map(|l| format!("enc.{l}"))
            .chain((0..self.decoder_layers()).map(|l| format!("dec.{l}")))
            .collect();
        PetlLayout {
            hidden: self.d_model,
            num_heads: self.num_heads,
            layers,
            tasks: tasks.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// Backbone parameters (shared embedding counted once; encoder and decoder stacks).
    pub fn backbone_params(&self) -> usize {
        let (d, inner, f) = (self.d_model, self.num_heads * self.d_kv, self.d_ff);
        let attn = 4 * d * inner;
        let enc = self.num_layers * (attn + d + 2 * d * f + d);
        let dec = self.decoder_layers() * (2 * attn + 2 * d + 2 * d * f + d);
        self.vocab_size * d
            + enc
            + dec
            + 2 * d
            + 2 * self.relative_attention_num_buckets * self.num_heads
    }
}

/// A T5 checkpoint folder.
#[derive(Clone)]
pub struct T5Checkpoint {
    /// The folder.
    pub dir: PathBuf,
    /// Parsed config.
    pub config: T5Config,
    vb: VarBuilder<'static>,
}

impl T5Checkpoint {
    /// Open `config.json` and memory-map `model.safetensors`.
    pub fn open(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let config = T5Config::from_json(&text)?;
        let weights = dir.join("model.safetensors");
        let vb = crate::common::mmap_safetensors(&weights, device)?;
        if !vb.contains_tensor("shared.weight") {
            return Err(ModelError::Weights(format!(
                "{}: no `shared.weight`: not a T5 checkpoint",
                weights.display()
            )));
        }
        Ok(Self { dir, config, vb })
    }

    /// The device.
    pub fn device(&self) -> &Device {
        self.vb.device()
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    heads: usize,
    d_kv: usize,
}

impl Attention {
    fn load(vb: VarBuilder, c: &T5Config) -> Result<Self> {
        let inner = c.num_heads * c.d_kv;
        Ok(Self {
            q: get(&vb, &[inner, c.d_model], "q.weight")?,
            k: get(&vb, &[inner, c.d_model], "k.weight")?,
            v: get(&vb, &[inner, c.d_model], "v.weight")?,
            o: get(&vb, &[c.d_model, inner], "o.weight")?,
            heads: c.num_heads,
            d_kv: c.d_kv,
        })
    }

    /// `x [B,Sq,D]` attends to `kv [B,Sk,D]`; `bias [B|1, H, Sq, Sk]` (positions + mask).
    fn forward(&self, x: &Tensor, kv: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (b, sq, _) = x.dims3()?;
        let sk = kv.dim(1)?;
        let split = |t: Tensor, s: usize| {
            t.reshape((b, s, self.heads, self.d_kv))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(ops::frozen_linear(x, &self.q, None)?, sq)?;
        let k = split(ops::frozen_linear(kv, &self.k, None)?, sk)?;
        let v = split(ops::frozen_linear(kv, &self.v, None)?, sk)?;
        // T5 does not scale scores by 1/sqrt(d_kv)
        let scores = q
            .matmul(&k.transpose(2, 3)?.contiguous()?)?
            .broadcast_add(bias)?;
        let ctx = ops::softmax_last_dim(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, sq, self.heads * self.d_kv))?;
        ops::frozen_linear(&ctx, &self.o, None)
    }
}

/// One T5 block (encoder blocks have no cross-attention).
#[derive(Debug, Clone)]
pub struct T5Block {
    self_attn: Attention,
    self_norm: Tensor,
    cross: Option<(Attention, Tensor)>,
    wi: Tensor,
    wo: Tensor,
    ff_norm: Tensor,
    eps: f64,
    act: propetl_runtime::Activation,
}

impl T5Block {
    fn load(vb: VarBuilder, c: &T5Config, decoder: bool) -> Result<Self> {
        let d = c.d_model;
        let l = vb.pp("layer");
        let ff = if decoder { 2 } else { 1 };
        let cross = if decoder {
            let x = l.pp(1);
            Some((
                Attention::load(x.pp("EncDecAttention"), c)?,
                get(&x, &[d], "layer_norm.weight")?,
            ))
        } else {
            None
        };
        Ok(Self {
            self_attn: Attention::load(l.pp(0).pp("SelfAttention"), c)?,
            self_norm: get(&l.pp(0), &[d], "layer_norm.weight")?,
            cross,
            wi: get(&l.pp(ff).pp("DenseReluDense"), &[c.d_ff, d], "wi.weight")?,
            wo: get(&l.pp(ff).pp("DenseReluDense"), &[d, c.d_ff], "wo.weight")?,
            ff_norm: get(&l.pp(ff), &[d], "layer_norm.weight")?,
            eps: c.layer_norm_epsilon,
            act: if c.feed_forward_proj == "gelu" {
                propetl_runtime::Activation::Gelu
            } else {
                propetl_runtime::Activation::Relu
            },
        })
    }

    fn forward(
        &self,
        h: &Tensor,
        bias: &Tensor,
        enc: Option<(&Tensor, &Tensor)>,
        petl: &LayerPetl,
    ) -> candle_core::Result<Tensor> {
        let n = ops::rms_norm(h, &self.self_norm, self.eps)?;
        let mut h = h.add(&self.self_attn.forward(&n, &n, bias)?)?;
        if let (Some((attn, norm)), Some((enc_out, enc_bias))) = (&self.cross, enc) {
            let n = ops::rms_norm(&h, norm, self.eps)?;
            h = h.add(&attn.forward(&n, enc_out, enc_bias)?)?;
        }
        let n = ops::rms_norm(&h, &self.ff_norm, self.eps)?;
        let y = ops::frozen_linear(
            &ops::activate(&ops::frozen_linear(&n, &self.wi, None)?, self.act)?,
            &self.wo,
            None,
        )?;
        let z = h.add(&y)?;
        // method page §5: block output h + y + A(h + y)
        match petl.adapter(&z).map_err(candle_core::Error::wrap)? {
            Some(a) => z.add(&a),
            None => Ok(z),
        }
    }
}

impl PetlSites for T5Block {
    /// One adapter after the FFN of every encoder and decoder block (method page §5).
    const SITES: Sites = Sites::ADAPTER;
}

/// T5's relative-position bucket (transformers' `_relative_position_bucket`).
pub fn relative_position_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut nb = num_buckets as i64;
    let mut bucket = 0i64;
    let mut rel = relative;
    if bidirectional {
        nb /= 2;
        if rel > 0 {
            bucket += nb;
        }
        rel = rel.abs();
    } else {
        rel = -rel.min(0);
    }
    let max_exact = nb / 2;
    if rel < max_exact {
        bucket += rel;
    } else {
        let large = max_exact
            + ((rel as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln()
                * (nb - max_exact) as f32) as i64;
        bucket += large.min(nb - 1);
    }
    bucket as usize
}

#[derive(Debug, Clone)]
struct Stacks {
    config: T5Config,
    shared: Tensor,
    enc_bias_table: Tensor,
    dec_bias_table: Tensor,
    enc_final: Tensor,
    dec_final: Tensor,
}

impl Stacks {
    fn position_bias(
        &self,
        table: &Tensor,
        q: usize,
        k: usize,
        bidirectional: bool,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let ids: Vec<u32> = (0..q)
            .flat_map(|i| {
                (0..k).map(move |j| {
                    relative_position_bucket(
                        j as i64 - i as i64,
                        bidirectional,
                        c.relative_attention_num_buckets,
                        c.relative_attention_max_distance,
                    ) as u32
                })
            })
            .collect();
        let ids = Tensor::from_vec(ids, q * k, dev)?;
        table
            .index_select(&ids, 0)?
            .reshape((q, k, c.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

fn load_stacks(ckpt: &T5Checkpoint) -> Result<(Stacks, Vec<T5Block>)> {
    let c = &ckpt.config;
    let vb = &ckpt.vb;
    let shared = get(vb, &[c.vocab_size, c.d_model], "shared.weight")?;
    let mut blocks = Vec::new();
    for l in 0..c.num_layers {
        blocks.push(T5Block::load(vb.pp("encoder").pp("block").pp(l), c, false)?);
    }
    for l in 0..c.decoder_layers() {
        blocks.push(T5Block::load(vb.pp("decoder").pp("block").pp(l), c, true)?);
    }
    let table = |stack: &str| {
        get(
            &vb.pp(stack)
                .pp("block")
                .pp(0)
                .pp("layer")
                .pp(0)
                .pp("SelfAttention"),
            &[c.relative_attention_num_buckets, c.num_heads],
            "relative_attention_bias.weight",
        )
    };
    let stacks = Stacks {
        config: c.clone(),
        shared,
        enc_bias_table: table("encoder")?,
        dec_bias_table: table("decoder")?,
        enc_final: get(&vb.pp("encoder"), &[c.d_model], "final_layer_norm.weight")?,
        dec_final: get(&vb.pp("decoder"), &[c.d_model], "final_layer_norm.weight")?,
    };
    Ok((stacks, blocks))
}

fn embed(shared: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, s) = ids.dims2()?;
    crate::common::check_vocab(ids, shared.dim(0)?)?;
    Ok(shared
        .index_select(&ids.to_dtype(DType::U32)?.flatten_all()?, 0)?
        .reshape((b, s, shared.dim(1)?))?)
}

fn forward(
    st: &Stacks,
    blocks: &[T5Block],
    petl: &propetl_runtime::PetlContext,
    ids: &Tensor,
    attention_mask: &Tensor,
    dec_ids: &Tensor,
) -> Result<Tensor> {
    let c = &st.config;
    let dev = ids.device();
    if ids.dims() != attention_mask.dims() {
        return Err(ModelError::Input(format!(
            "input_ids {:?} and attention_mask {:?} differ",
            ids.dims(),
            attention_mask.dims()
        )));
    }
    let (b, s) = ids.dims2()?;
    let t = dec_ids.dim(1)?;
    let enc_mask = crate::common::additive_attention_mask(attention_mask)?.reshape((b, 1, 1, s))?;
    let enc_bias = st
        .position_bias(&st.enc_bias_table, s, s, true, dev)?
        .broadcast_add(&enc_mask)?;
    let mut h = embed(&st.shared, ids)?;
    for (l, block) in blocks[..c.num_layers].iter().enumerate() {
        h = block.forward(&h, &enc_bias, None, petl.layer(l))?;
    }
    let enc_out = ops::rms_norm(&h, &st.enc_final, c.layer_norm_epsilon)?;
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 }))
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, t, t), dev)?;
    let dec_bias = st
        .position_bias(&st.dec_bias_table, t, t, false, dev)?
        .broadcast_add(&causal)?;
    let mut h = embed(&st.shared, dec_ids)?;
    for (l, block) in blocks[c.num_layers..].iter().enumerate() {
        h = block.forward(
            &h,
            &dec_bias,
            Some((&enc_out, &enc_mask)),
            petl.layer(c.num_layers + l),
        )?;
    }
    let dec_out = ops::rms_norm(&h, &st.dec_final, c.layer_norm_epsilon)?;
    let scaled = (dec_out * (c.d_model as f64).powf(-0.5))?;
    Ok(ops::linear(&scaled, &st.shared, None)?)
}

/// Label-smoothed NLL (fairseq form, ε/V on every class) **summed** over target tokens,
/// ignoring positions whose label is `pad` (method page §5).
pub fn label_smoothed_loss(logits: &Tensor, labels: &Tensor, eps: f64, pad: u32) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let logp = ops::log_softmax_last_dim(&logits.reshape((b * t, v))?)?;
    let labels = labels.to_dtype(DType::U32)?.reshape(b * t)?;
    let keep = labels.ne(pad)?.to_dtype(DType::F32)?;
    let safe = labels
        .to_dtype(DType::F32)?
        .mul(&keep)?
        .to_dtype(DType::U32)?;
    let nll = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let smooth = logp.sum(1)?.neg()?;
    let per = ((nll * (1.0 - eps))? + (smooth * (eps / v as f64))?)?;
    Ok(per.mul(&keep)?.sum_all()?)
}

/// The text-to-text interface of the T5 variants (on top of the PETL instance API).
pub trait Seq2Seq: ProPetlModel {
    /// The backbone config.
    fn config(&self) -> &T5Config;
    /// LM logits `[B, T, V]` for `task`.
    fn logits(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
        task: &str,
    ) -> Result<Tensor>;
    /// The method page §5 loss (label smoothing 0.1, summed, pad ignored).
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        label_smoothed_loss(logits, labels, 0.1, self.config().pad_token_id)
    }
}

macro_rules! t5_variant {
    ($(#[$doc:meta])* $name:ident, $($attr:tt)*) => {
        $(#[$doc])*
        #[propetl($($attr)*, crate = "propetl_runtime")]
        #[derive(Debug, Clone)]
        pub struct $name {
            stacks: Stacks,
            #[propetl(layers)]
            blocks: Vec<T5Block>,
            #[propetl(state)]
            petl: PetlState,
        }

        impl $name {
            /// Load the frozen backbone and create the PETL state for `tasks`.
            pub fn from_checkpoint(ckpt: &T5Checkpoint, tasks: &[&str], overrides: &NumericOverrides, varmap: &VarMap, rng: &mut PetlRng) -> Result<Self> {
                let (stacks, blocks) = load_stacks(ckpt)?;
                let petl = <Self as PetlSpec>::init_petl(&ckpt.config.layout(tasks), overrides, varmap, rng, ckpt.device())?;
                Ok(Self { stacks, blocks, petl })
            }
        }

        impl Seq2Seq for $name {
            fn config(&self) -> &T5Config { &self.stacks.config }
            fn logits(&self, ids: &Tensor, attention_mask: &Tensor, decoder_input_ids: &Tensor, task: &str) -> Result<Tensor> {
                let ctx = self.petl_context(task)?;
                forward(&self.stacks, &self.blocks, &ctx, ids, attention_mask, decoder_input_ids)
            }
        }
    };
}

t5_variant!(
    /// Multi-task ProPETL-T5: one adapter (rf 12, gelu_new, N(0, 0.01)) for all blocks and tasks; task masks `or` block masks, keep 0.3.
    T5ProAdapter, adapter(reduction = 12, activation = "gelu_new", init_std = 0.01), share = "layers+tasks", combine = "or", keep = 0.3
);
t5_variant!(
    /// Baseline: one adapter per block (24 for t5-base), shared by the tasks, no masks.
    T5Adapter, adapter(reduction = 12, activation = "gelu_new", init_std = 0.01), share = "none"
);

type Builder = fn(
    &T5Checkpoint,
    &[&str],
    &NumericOverrides,
    &VarMap,
    &mut PetlRng,
) -> Result<Box<dyn Seq2Seq>>;

/// The variants T5 supports (its blocks have only the adapter site): (variant, spec,
/// constructor).
const VARIANTS: [(Variant, PetlConfig, Builder); 2] = [
    (
        Variant::ProAdapter,
        T5ProAdapter::PROPETL,
        |c, t, o, v, r| Ok(Box::new(T5ProAdapter::from_checkpoint(c, t, o, v, r)?)),
    ),
    (Variant::Adapter, T5Adapter::PROPETL, |c, t, o, v, r| {
        Ok(Box::new(T5Adapter::from_checkpoint(c, t, o, v, r)?))
    }),
];

fn entry(variant: Variant) -> Result<&'static (Variant, PetlConfig, Builder)> {
    VARIANTS
        .iter()
        .find(|(v, _, _)| *v == variant)
        .ok_or_else(|| {
            let names: Vec<&str> = VARIANTS.iter().map(|(v, _, _)| v.name()).collect();
            ModelError::Config(format!(
                "T5 has no variant `{variant}` (supported: {}; its blocks declare only the adapter site)",
                names.join(", ")
            ))
        })
}

/// The PETL spec of a T5 variant.
pub fn spec(variant: Variant) -> Result<PetlConfig> {
    Ok(entry(variant)?.1.clone())
}

/// Build a T5 variant.
pub fn build(
    variant: Variant,
    ckpt: &T5Checkpoint,
    tasks: &[&str],
    overrides: &NumericOverrides,
    varmap: &VarMap,
    rng: &mut PetlRng,
) -> Result<Box<dyn Seq2Seq>> {
    (entry(variant)?.2)(ckpt, tasks, overrides, varmap, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers() {
        // hand-computed from the formula (e.g. −100 unidirectional: 16 + ⌊ln(100/16)/ln(8)·16⌋ = 30);
        // the T5 parity fixtures check the whole bias against transformers
        let bi = |r| relative_position_bucket(r, true, 32, 128);
        assert_eq!(
            [
                bi(0),
                bi(1),
                bi(-1),
                bi(7),
                bi(-8),
                bi(20),
                bi(-20),
                bi(200)
            ],
            [0, 17, 1, 23, 8, 26, 10, 31]
        );
        let uni = |r| relative_position_bucket(r, false, 32, 128);
        assert_eq!(
            [
                uni(0),
                uni(3),
                uni(-3),
                uni(-15),
                uni(-16),
                uni(-100),
                uni(-1000)
            ],
            [0, 0, 3, 15, 16, 30, 31]
        );
    }

    #[test]
    fn t5_base_storage_matches_method_page() {
        let c = T5Config {
            model_type: "t5".into(),
            vocab_size: 32128,
            d_model: 768,
            d_kv: 64,
            d_ff: 3072,
            num_layers: 12,
            num_decoder_layers: None,
            num_heads: 12,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            tie_word_embeddings: true,
            pad_token_id: 0,
        };
        let tasks = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"];
        let plan = propetl_runtime::Plan::new(&T5ProAdapter::PROPETL, &c.layout(&tasks)).unwrap();
        let r = propetl_runtime::StorageReport::from_plan(&plan, c.backbone_params(), 0).unwrap();
        assert_eq!(r.prototype_floats, 99_136);
        assert_eq!(r.mask_entries, (8 + 24) * 98_304);
        assert_eq!(r.float32_equivalents, 99_136.0 + 32.0 * 98_304.0 / 32.0); // ≈ 197k for all 8 tasks
        assert_eq!(r.baseline_floats, 24 * 99_136); // 2.38M for 24 unshared adapters
    }
}
