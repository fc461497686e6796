//! The frozen encoder: embeddings (RoBERTa or BERT positions), encoder layers with their
//! injection sites (Pfeiffer adapter after the FFN, LoRA on q/k/v/o, prefix keys/values), the
//! forward pass shared by every variant, and [`FrozenEncoder`] without any PETL module.
//! Weight paths mirror Hugging Face (`encoder.layer.{l}.attention.self.query.weight`, …; the
//! list is `checkpoint::hf_tensors`).

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;
use propetl_runtime::{ops, ForwardMode, LayerPetl, LoraTarget, PetlContext, PetlSites, Sites};

use super::checkpoint::Checkpoint;
use super::config::RobertaConfig;
use crate::common::{get, Linear};
use crate::error::{ModelError, Result};

/// A LayerNorm: frozen (the fused kernel, input gradients only) or, with trainable
/// parameters (full fine-tuning), the composed differentiable formulation.
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
        if self.weight.is_variable() {
            ops::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else {
            ops::frozen_layer_norm(x, &self.weight, &self.bias, self.eps)
        }
    }

    /// `LayerNorm(x + residual)`; frozen, one op that never materializes the sum
    /// (`ops::frozen_add_layer_norm`).
    fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        if self.weight.is_variable() {
            self.forward(&x.add(residual)?)
        } else {
            ops::frozen_add_layer_norm(x, residual, &self.weight, &self.bias, self.eps)
        }
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
    /// `[query; key; value]` stacked (frozen weights only); `query`, `key` and `value` are
    /// then views of its rows.
    qkv: Option<Linear>,
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
        let own = [
            Linear::load(att.pp("self").pp("query"), h, h)?,
            Linear::load(att.pp("self").pp("key"), h, h)?,
            Linear::load(att.pp("self").pp("value"), h, h)?,
        ];
        let (qkv, [query, key, value]) = match Linear::stacked(&own)? {
            Some((all, views)) => (
                Some(all),
                <[Linear; 3]>::try_from(views).expect("three views of three parts"),
            ),
            None => (None, own),
        };
        Ok(Self {
            query,
            key,
            value,
            qkv,
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
        if let Some(delta) = petl.merged_lora(target) {
            return lin.forward_with_delta(x, delta);
        }
        match petl.lora_pair(target) {
            Some(pair) => lin.forward_with_lora(x, pair),
            None => lin.forward(x),
        }
    }

    /// `x [B,S,H]`, `attention_bias [B,1,1,S(+P)]` (0 attend, large negative for padding).
    /// Returns `[B,S,H]`, or `[B,1,H]` with [`HiddenRows::First`]: the first position's
    /// query attends over every key and value, and only its row goes through the attention
    /// output, the FFN and the adapter (each is row-wise, so that row is the same as in the
    /// full output).
    fn forward(
        &self,
        x: &Tensor,
        attention_bias: &Tensor,
        petl: &LayerPetl,
        mode: &mut ForwardMode,
        rows: HiddenRows,
    ) -> candle_core::Result<Tensor> {
        let (_, _, h) = x.dims3()?;
        let nh = self.heads;
        let hd = h / nh;
        // the rows that are queried and carried to the output
        let x_out = match rows {
            HiddenRows::All => x.clone(),
            HiddenRows::First => x.narrow(1, 0, 1)?,
        };
        // projections [B, S, H]; ops::attention_scores / attention_context read them per head
        // in place and write the context back as [B, S, H]
        // one product for all three when they project the same rows (LoRA pairs included);
        // the attention ops read the three column blocks of its output in place
        let stacked = match (&self.qkv, rows) {
            (Some(qkv), HiddenRows::All) => qkv.forward_stacked(
                x,
                Some(petl),
                &[
                    (LoraTarget::Q, 0),
                    (LoraTarget::K, h),
                    (LoraTarget::V, 2 * h),
                ],
            )?,
            _ => None,
        };
        let (q, mut k, mut v) = match stacked {
            Some(all) => (
                all.narrow(2, 0, h)?,
                all.narrow(2, h, h)?,
                all.narrow(2, 2 * h, h)?,
            ),
            None => (
                self.proj(&self.query, &x_out, petl, LoraTarget::Q)?,
                self.proj(&self.key, x, petl, LoraTarget::K)?,
                self.proj(&self.value, x, petl, LoraTarget::V)?,
            ),
        };
        if let Some((pk, pv)) = petl.prefix_kv() {
            k = ops::prefix_cat(pk, &k)?;
            v = ops::prefix_cat(pv, &v)?;
        }
        let scores = ops::attention_scores(&q, &k, nh)?;
        let probs = ops::attention_softmax(&scores, 1.0 / (hd as f64).sqrt(), attention_bias)?;
        let probs = mode.dropout(&probs, self.attn_dropout)?;
        let ctx = ops::attention_context(&probs, &v)?;
        let att = mode.dropout(
            &self.proj(&self.attn_out, &ctx, petl, LoraTarget::O)?,
            self.dropout,
        )?;
        let x1 = self.attn_norm.forward_residual(&att, &x_out)?;
        let inter = self.intermediate.forward_activated(&x1, self.act)?;
        let hid = mode.dropout(&self.output.forward(&inter)?, self.dropout)?;
        if !matches!(petl, LayerPetl::Adapter(_)) {
            return self.out_norm.forward_residual(&hid, &x1);
        }
        // Pfeiffer placement (method page §3): u = LN(h + x); y = LN(A(u) + h + x)
        let res = hid.add(&x1)?;
        match petl
            .adapter(&self.out_norm.forward(&res)?)
            .map_err(candle_core::Error::wrap)?
        {
            Some(a) => self.out_norm.forward_residual(&a, &res),
            None => self.out_norm.forward(&res),
        }
    }
}

impl PetlSites for RobertaLayer {
    /// The Pfeiffer adapter after the FFN, LoRA on q/k/v/o, prefix keys/values.
    const SITES: Sites = Sites::ALL;
}

/// The frozen embeddings and config every RoBERTa variant shares.
#[derive(Debug, Clone)]
pub struct Backbone {
    /// Config.
    pub config: RobertaConfig,
    embeddings: Embeddings,
}

pub(crate) fn load_layers(ckpt: &Checkpoint) -> Result<(Backbone, Vec<RobertaLayer>)> {
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

/// Which rows of the last hidden state [`encode`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HiddenRows {
    /// Every position: `[B, S, H]`.
    All,
    /// The first position only (`<s>`, what the classification head reads): `[B, 1, H]`.
    /// The last layer then runs its attention output, FFN and adapter on one row per
    /// sequence instead of S, and the backward pass skips the rest too — about 7% of a
    /// roberta-base step's matrix work, with the same logits.
    First,
}

pub(crate) fn encode(
    bb: &Backbone,
    layers: &[RobertaLayer],
    ctx: &PetlContext,
    ids: &Tensor,
    attention_mask: &Tensor,
    mode: &mut ForwardMode,
    rows: HiddenRows,
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
    let last = layers.len().saturating_sub(1);
    for (l, layer) in layers.iter().enumerate() {
        let layer_rows = if l == last { rows } else { HiddenRows::All };
        x = layer.forward(&x, &bias, ctx.layer(l), mode, layer_rows)?;
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
            HiddenRows::All,
        )
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
