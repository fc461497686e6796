//! The frozen T5 stacks: attention (no score scaling, relative-position bias), blocks with
//! their injection site (one adapter after the FFN: `h + y + A(h + y)`), the relative-position
//! buckets, and the encoder–decoder forward pass. Weight paths mirror Hugging Face
//! (`encoder.block.{l}.layer.0.SelfAttention.q.weight`, …; the list is
//! `checkpoint::hf_tensors`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use propetl_runtime::{ops, ForwardMode, LayerPetl, LoraTarget, PetlContext, PetlSites, Sites};

use super::checkpoint::T5Checkpoint;
use super::config::T5Config;
use crate::common::{get, Linear};
use crate::error::{ModelError, Result};

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    /// `[q; k; v]` stacked (frozen weights): `q`, `k` and `v` are views of its rows, and so
    /// is `kv`, its rows `[k; v]`. Self-attention projects all three in one product,
    /// cross-attention and the key/value cache the two of `kv`.
    qkv: Option<Linear>,
    kv: Option<Linear>,
    o: Linear,
    heads: usize,
    /// `num_heads · d_kv`: the width of each of q, k, v.
    inner: usize,
}

impl Attention {
    fn load(vb: VarBuilder, c: &T5Config) -> Result<Self> {
        let inner = c.num_heads * c.d_kv;
        let own = [
            Linear::load_no_bias(vb.pp("q"), inner, c.d_model)?,
            Linear::load_no_bias(vb.pp("k"), inner, c.d_model)?,
            Linear::load_no_bias(vb.pp("v"), inner, c.d_model)?,
        ];
        let (qkv, [q, k, v]) = match Linear::stacked(&own)? {
            Some((all, views)) => (
                Some(all),
                <[Linear; 3]>::try_from(views).expect("three views of three parts"),
            ),
            None => (None, own),
        };
        let kv = qkv
            .as_ref()
            .map(|all| all.rows(inner, 2 * inner))
            .transpose()?;
        Ok(Self {
            q,
            k,
            v,
            qkv,
            kv,
            o: Linear::load_no_bias(vb.pp("o"), c.d_model, inner)?,
            heads: c.num_heads,
            inner,
        })
    }

    /// Query, keys and values `[B, S, H·d_kv]` of `x` attending to itself: one product
    /// through the stacked `[q; k; v]` (the LoRA pairs on q and v inside it), three views of
    /// its output; projection by projection where the layer has no stack or its pairs
    /// cannot share one op.
    fn project_self(
        &self,
        x: &Tensor,
        lora: Option<&LayerPetl>,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let i = self.inner;
        let parts = [
            (LoraTarget::Q, 0),
            (LoraTarget::K, i),
            (LoraTarget::V, 2 * i),
        ];
        if let Some(stack) = &self.qkv {
            if let Some(all) = stack.forward_stacked(x, lora, &parts)? {
                return Ok((
                    all.narrow(2, 0, i)?,
                    all.narrow(2, i, i)?,
                    all.narrow(2, 2 * i, i)?,
                ));
            }
        }
        let (k, v) = self.keys_values(x, lora)?;
        Ok((Self::proj(&self.q, x, lora, LoraTarget::Q)?, k, v))
    }

    /// `lin(x)` plus the LoRA update of `target` where `lora` has one (self-attention q/v).
    fn proj(
        lin: &Linear,
        x: &Tensor,
        lora: Option<&LayerPetl>,
        target: LoraTarget,
    ) -> candle_core::Result<Tensor> {
        if let Some(delta) = lora.and_then(|petl| petl.merged_lora(target)) {
            return lin.forward_with_delta(x, delta);
        }
        match lora.and_then(|petl| petl.lora_pair(target)) {
            Some(pair) => lin.forward_with_lora(x, pair),
            None => lin.forward(x),
        }
    }

    /// Keys and values `[B, Sk, H·d_kv]` of `kv [B,Sk,D]` (what a key/value cache holds;
    /// [`ops::attention_scores`] / [`ops::attention_context`] read them per head in place).
    fn keys_values(
        &self,
        kv: &Tensor,
        lora: Option<&LayerPetl>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let i = self.inner;
        if let Some(stack) = &self.kv {
            let parts = [(LoraTarget::K, 0), (LoraTarget::V, i)];
            if let Some(both) = stack.forward_stacked(kv, lora, &parts)? {
                return Ok((both.narrow(2, 0, i)?, both.narrow(2, i, i)?));
            }
        }
        Ok((
            self.k.forward(kv)?,
            Self::proj(&self.v, kv, lora, LoraTarget::V)?,
        ))
    }

    /// `x [B,S,D]` attends to itself (self-attention): [`project_self`](Self::project_self),
    /// then [`attend_projected`](Self::attend_projected).
    fn forward_self(
        &self,
        x: &Tensor,
        bias: &Tensor,
        lora: Option<&LayerPetl>,
        drop: &mut Dropout,
    ) -> candle_core::Result<Tensor> {
        let (q, k, v) = self.project_self(x, lora)?;
        self.attend_projected(&q, &k, &v, bias, drop)
    }

    /// `x [B,Sq,D]` attends to `kv [B,Sk,D]`; `bias [B|1, H, Sq, Sk]` (positions + attention
    /// mask); `lora`: the block's PETL for self-attention (LoRA on q and v), `None` for
    /// cross-attention.
    fn forward(
        &self,
        x: &Tensor,
        kv: &Tensor,
        bias: &Tensor,
        lora: Option<&LayerPetl>,
        drop: &mut Dropout,
    ) -> candle_core::Result<Tensor> {
        let (k, v) = self.keys_values(kv, lora)?;
        self.attend(x, &k, &v, bias, lora, drop)
    }

    /// `x [B,Sq,D]` attends to projected keys and values `[B, Sk, H·d_kv]`.
    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        lora: Option<&LayerPetl>,
        drop: &mut Dropout,
    ) -> candle_core::Result<Tensor> {
        let q = Self::proj(&self.q, x, lora, LoraTarget::Q)?;
        self.attend_projected(&q, k, v, bias, drop)
    }

    /// Projected queries `[B, Sq, H·d_kv]` attend to projected keys and values
    /// `[B, Sk, H·d_kv]`; the context through the output projection.
    fn attend_projected(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        drop: &mut Dropout,
    ) -> candle_core::Result<Tensor> {
        // T5 does not scale scores by 1/sqrt(d_kv); the position bias + padding mask is frozen
        let scores = ops::attention_scores(q, k, self.heads)?;
        let probs = drop.apply(&ops::attention_softmax(&scores, 1.0, bias)?)?;
        let ctx = ops::attention_context(&probs, v)?;
        self.o.forward(&ctx)
    }
}

/// One T5 block (encoder blocks have no cross-attention).
#[derive(Debug, Clone)]
pub struct T5Block {
    self_attn: Attention,
    self_norm: Tensor,
    cross: Option<(Attention, Tensor)>,
    /// `wi`, or the gated pair `wi_0` (activated), `wi_1`.
    wi: Vec<Linear>,
    wo: Linear,
    ff_norm: Tensor,
    eps: f64,
    act: propetl_runtime::Activation,
}

/// Training-mode dropout at rate `p` (the identity in evaluation and when `p` is 0).
pub(crate) struct Dropout<'m, 'r> {
    pub(crate) mode: &'m mut ForwardMode<'r>,
    pub(crate) p: f64,
}

impl Dropout<'_, '_> {
    pub(crate) fn apply(&mut self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.p > 0.0 && self.mode.is_train() {
            self.mode.dropout(x, self.p)
        } else {
            Ok(x.clone())
        }
    }
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
        let (gated, act) = c.feed_forward()?;
        let dense = l.pp(ff).pp("DenseReluDense");
        let wi_names: &[&str] = if gated { &["wi_0", "wi_1"] } else { &["wi"] };
        Ok(Self {
            self_attn: Attention::load(l.pp(0).pp("SelfAttention"), c)?,
            self_norm: get(&l.pp(0), &[d], "layer_norm.weight")?,
            cross,
            wi: wi_names
                .iter()
                .map(|n| Linear::load_no_bias(dense.pp(n), c.d_ff, d))
                .collect::<Result<_>>()?,
            wo: Linear::load_no_bias(dense.pp("wo"), d, c.d_ff)?,
            ff_norm: get(&l.pp(ff), &[d], "layer_norm.weight")?,
            eps: c.layer_norm_epsilon,
            act,
        })
    }

    /// `petl`: the block's PETL (FFN adapter, self-attention LoRA); `cross`: the decoder
    /// cross-attention's (LoRA), if the model has such sites.
    fn forward(
        &self,
        h: &Tensor,
        bias: &Tensor,
        enc: Option<(&Tensor, &Tensor)>,
        petl: &LayerPetl,
        cross: Option<&LayerPetl>,
        drop: &mut Dropout,
    ) -> candle_core::Result<Tensor> {
        let n = ops::frozen_rms_norm(h, &self.self_norm, self.eps)?;
        let a = self.self_attn.forward_self(&n, bias, Some(petl), drop)?;
        let mut h = h.add(&drop.apply(&a)?)?;
        if let (Some((attn, norm)), Some((enc_out, enc_bias))) = (&self.cross, enc) {
            let n = ops::frozen_rms_norm(&h, norm, self.eps)?;
            let a = attn.forward(&n, enc_out, enc_bias, cross, drop)?;
            h = h.add(&drop.apply(&a)?)?;
        }
        self.feed_forward(&h, petl, drop)
    }

    /// The FFN sub-layer and the injection site: `h + y + A(h + y)` with `y = dropout(FFN(n))`
    /// (method page §5); the FFN is `wo(dropout(act(wi n)))` or, gated,
    /// `wo(dropout(act(wi_0 n) · wi_1 n))`.
    fn feed_forward(
        &self,
        h: &Tensor,
        petl: &LayerPetl,
        drop: &mut Dropout,
    ) -> candle_core::Result<Tensor> {
        let n = ops::frozen_rms_norm(h, &self.ff_norm, self.eps)?;
        let mut hidden = ops::activate(&self.wi[0].forward(&n)?, self.act)?;
        if let Some(linear) = self.wi.get(1) {
            hidden = hidden.mul(&linear.forward(&n)?)?;
        }
        let out = self.wo.forward(&drop.apply(&hidden)?)?;
        let y = drop.apply(&out)?;
        let z = h.add(&y)?;
        // method page §5: block output h + y + A(h + y)
        match petl.adapter(&z).map_err(candle_core::Error::wrap)? {
            Some(a) => z.add(&a),
            None => Ok(z),
        }
    }

    /// Cross-attention keys and values `[B, S, H·d_kv]` of the encoder output (computed once
    /// per input by generation). Errors on an encoder block.
    pub(crate) fn cross_keys_values(
        &self,
        enc_out: &Tensor,
        cross: Option<&LayerPetl>,
    ) -> Result<(Tensor, Tensor)> {
        let (attn, _) = self
            .cross
            .as_ref()
            .ok_or_else(|| ModelError::Input("cross-attention keys of an encoder block".into()))?;
        Ok(attn.keys_values(enc_out, cross)?)
    }

    /// One decoder step with a key/value cache: `h [B,1,D]` is the newest position; its
    /// self-attention keys and values are appended to `cache.self_kv` (`[B, t, H·d_kv]` →
    /// `[B, t+1, H·d_kv]`) and it attends to all of them with `bias [1, H, 1, t+1]` (no causal
    /// mask needed: only past positions are cached); cross-attention uses the cached encoder
    /// keys and values with `enc_bias [B, 1, 1, S]`. The same ops as [`forward`](Self::forward)
    /// on the last position.
    pub(crate) fn decode_step(
        &self,
        h: &Tensor,
        bias: &Tensor,
        cache: &mut LayerCache,
        enc_bias: &Tensor,
        petl: &LayerPetl,
        cross: Option<&LayerPetl>,
    ) -> Result<Tensor> {
        let mut eval = ForwardMode::Eval;
        let drop = &mut Dropout {
            mode: &mut eval,
            p: 0.0,
        };
        let n = ops::frozen_rms_norm(h, &self.self_norm, self.eps)?;
        let (q, k, v) = self.self_attn.project_self(&n, Some(petl))?;
        // the new position's keys and values are column views of the stacked projection's
        // output: contiguous copies (one row each), so the cache stays contiguous (Candle's
        // `cat` of a view is a strided view; beam search selects the cache's rows)
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let (k, v) = match cache.self_kv.take() {
            Some((k0, v0)) => (Tensor::cat(&[&k0, &k], 1)?, Tensor::cat(&[&v0, &v], 1)?),
            None => (k, v),
        };
        let mut h = h.add(&self.self_attn.attend_projected(&q, &k, &v, bias, drop)?)?;
        cache.self_kv = Some((k, v));
        if let Some((attn, norm)) = &self.cross {
            let n = ops::frozen_rms_norm(&h, norm, self.eps)?;
            let (ck, cv) = &cache.cross_kv;
            h = h.add(&attn.attend(&n, ck, cv, enc_bias, cross, drop)?)?;
        }
        Ok(self.feed_forward(&h, petl, drop)?)
    }
}

/// The key/value cache of one decoder block: self-attention keys and values of every position
/// so far (grows by one position per step), cross-attention keys and values of the encoder
/// output (computed once per input).
#[derive(Debug, Clone)]
pub(crate) struct LayerCache {
    pub(crate) self_kv: Option<(Tensor, Tensor)>,
    pub(crate) cross_kv: (Tensor, Tensor),
}

impl LayerCache {
    /// Keep the rows `rows` (beam search: the parent beam of every new beam).
    pub(crate) fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        if let Some((k, v)) = &self.self_kv {
            self.self_kv = Some((k.index_select(rows, 0)?, v.index_select(rows, 0)?));
        }
        Ok(())
    }
}

impl PetlSites for T5Block {
    /// One adapter after the FFN of every encoder and decoder block (method page §5).
    const SITES: Sites = Sites::ADAPTER;
}

/// One attention module of T5 as a PETL site: LoRA on its query and value projections. The
/// LoRA variants' layers are T5's attention modules — every block's self-attention (`enc.{l}`,
/// `dec.{l}`), then every decoder block's cross-attention (`cross.{l}`), as PEFT's
/// `target_modules = ["q", "v"]` places them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSite;

impl PetlSites for AttentionSite {
    /// LoRA on q and v.
    const SITES: Sites = Sites {
        adapter: false,
        lora: &[LoraTarget::Q, LoraTarget::V],
        prefix: false,
    };
}

/// The PETL of decoder block `l`'s cross-attention: layer `num_layers + 2·decoder_layers`
/// contexts (LoRA variants) have one per decoder block after the blocks' own.
pub(crate) fn cross_site<'c>(
    c: &T5Config,
    petl: &'c PetlContext,
    l: usize,
) -> Option<&'c LayerPetl> {
    let blocks = c.num_layers + c.decoder_layers();
    (petl.len() == blocks + c.decoder_layers()).then(|| petl.layer(blocks + l))
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
pub(crate) struct Stacks {
    pub(crate) config: T5Config,
    pub(crate) shared: Tensor,
    enc_bias_table: Tensor,
    pub(crate) dec_bias_table: Tensor,
    enc_final: Tensor,
    dec_final: Tensor,
    /// Untied models' output embedding (`lm_head.weight`); tied models use `shared`.
    lm_head: Option<Tensor>,
}

impl Stacks {
    pub(crate) fn position_bias(
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

pub(crate) fn load_stacks(ckpt: &T5Checkpoint) -> Result<(Stacks, Vec<T5Block>)> {
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
        lm_head: if c.tie_word_embeddings {
            None
        } else {
            Some(get(vb, &[c.vocab_size, c.d_model], "lm_head.weight")?)
        },
    };
    Ok((stacks, blocks))
}

pub(crate) fn embed(shared: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, s) = ids.dims2()?;
    crate::common::check_vocab(ids, shared.dim(0)?)?;
    Ok(shared
        .index_select(&ids.to_dtype(DType::U32)?.flatten_all()?, 0)?
        .reshape((b, s, shared.dim(1)?))?)
}

/// LM logits `[B,T,V]` of the whole encoder–decoder; `mode` switches dropout on.
pub(crate) fn forward(
    st: &Stacks,
    blocks: &[T5Block],
    petl: &PetlContext,
    ids: &Tensor,
    attention_mask: &Tensor,
    dec_ids: &Tensor,
    mode: &mut ForwardMode,
) -> Result<Tensor> {
    let (enc_out, cross_bias) = encode_with(st, blocks, petl, ids, attention_mask, mode)?;
    decode_with(st, blocks, petl, &enc_out, &cross_bias, dec_ids, mode)
}

/// The encoder: its output `[B,S,D]` and the additive bias of cross-attention `[B,1,1,S]`
/// (the padding of `attention_mask`).
pub(crate) fn encode(
    st: &Stacks,
    blocks: &[T5Block],
    petl: &PetlContext,
    ids: &Tensor,
    attention_mask: &Tensor,
) -> Result<(Tensor, Tensor)> {
    encode_with(
        st,
        blocks,
        petl,
        ids,
        attention_mask,
        &mut ForwardMode::Eval,
    )
}

fn encode_with(
    st: &Stacks,
    blocks: &[T5Block],
    petl: &PetlContext,
    ids: &Tensor,
    attention_mask: &Tensor,
    mode: &mut ForwardMode,
) -> Result<(Tensor, Tensor)> {
    let c = &st.config;
    let drop = &mut Dropout {
        mode,
        p: c.dropout_rate,
    };
    let dev = ids.device();
    if ids.dims() != attention_mask.dims() {
        return Err(ModelError::Input(format!(
            "input_ids {:?} and attention_mask {:?} differ",
            ids.dims(),
            attention_mask.dims()
        )));
    }
    let (b, s) = ids.dims2()?;
    // padding of the encoder input: the bias of cross-attention, and with the positions the
    // bias of encoder self-attention
    let cross_bias =
        crate::common::additive_attention_mask(attention_mask)?.reshape((b, 1, 1, s))?;
    let enc_bias = st
        .position_bias(&st.enc_bias_table, s, s, true, dev)?
        .broadcast_add(&cross_bias)?;
    let mut h = drop.apply(&embed(&st.shared, ids)?)?;
    for (l, block) in blocks[..c.num_layers].iter().enumerate() {
        h = block.forward(&h, &enc_bias, None, petl.layer(l), None, drop)?;
    }
    let enc_out = drop.apply(&ops::frozen_rms_norm(
        &h,
        &st.enc_final,
        c.layer_norm_epsilon,
    )?)?;
    Ok((enc_out, cross_bias))
}

/// The decoder over all of `dec_ids [B,T]` (causal), attending to `enc_out`: LM logits
/// `[B,T,V]`.
pub(crate) fn decode(
    st: &Stacks,
    blocks: &[T5Block],
    petl: &PetlContext,
    enc_out: &Tensor,
    cross_bias: &Tensor,
    dec_ids: &Tensor,
) -> Result<Tensor> {
    decode_with(
        st,
        blocks,
        petl,
        enc_out,
        cross_bias,
        dec_ids,
        &mut ForwardMode::Eval,
    )
}

fn decode_with(
    st: &Stacks,
    blocks: &[T5Block],
    petl: &PetlContext,
    enc_out: &Tensor,
    cross_bias: &Tensor,
    dec_ids: &Tensor,
    mode: &mut ForwardMode,
) -> Result<Tensor> {
    let c = &st.config;
    let drop = &mut Dropout {
        mode,
        p: c.dropout_rate,
    };
    let dev = dec_ids.device();
    let t = dec_ids.dim(1)?;
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 }))
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, t, t), dev)?;
    let dec_bias = st
        .position_bias(&st.dec_bias_table, t, t, false, dev)?
        .broadcast_add(&causal)?;
    let mut h = drop.apply(&embed(&st.shared, dec_ids)?)?;
    for (l, block) in blocks[c.num_layers..].iter().enumerate() {
        h = block.forward(
            &h,
            &dec_bias,
            Some((enc_out, cross_bias)),
            petl.layer(c.num_layers + l),
            cross_site(c, petl, l),
            drop,
        )?;
    }
    let dec_out = drop.apply(&ops::frozen_rms_norm(
        &h,
        &st.dec_final,
        c.layer_norm_epsilon,
    )?)?;
    project(st, &dec_out)
}

/// Final decoder norm, the tied-embedding scale d_model^-0.5 and the LM head: `h [B,T,D]` →
/// logits `[B,T,V]`.
pub(crate) fn lm_head(st: &Stacks, h: &Tensor) -> Result<Tensor> {
    let c = &st.config;
    project(
        st,
        &ops::frozen_rms_norm(h, &st.dec_final, c.layer_norm_epsilon)?,
    )
}

/// Normed decoder output → logits: scaled by d_model^-0.5 where the config says so (original
/// T5), through `lm_head.weight` (untied) or the shared embedding (tied).
fn project(st: &Stacks, dec_out: &Tensor) -> Result<Tensor> {
    let c = &st.config;
    let scaled = if c.scales_decoder_outputs() {
        (dec_out * (c.d_model as f64).powf(-0.5))?
    } else {
        dec_out.clone()
    };
    let weight = st.lm_head.as_ref().unwrap_or(&st.shared);
    // a frozen output embedding needs no gradient: the fused frozen product (input gradient
    // only, no transposed copy of the [V, D] weight)
    Ok(if weight.is_variable() {
        ops::linear(&scaled, weight, None)?
    } else {
        ops::frozen_linear(&scaled, weight, None)?
    })
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
}
