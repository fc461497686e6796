//! T5's `config.json`: Hugging Face keys and defaults, validation, PETL layout (`enc.{l}`,
//! `dec.{l}`) and parameter count.

use propetl_runtime::{Activation, PetlLayout};
use serde::Deserialize;

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
fn d_eos() -> u32 {
    1
}
fn d_dropout() -> f64 {
    0.1
}

/// `eos_token_id` as Hugging Face writes it: a number, `null` (T5's default 1) or a list (its
/// first entry: generation stops at one EOS id).
fn lenient_eos<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Eos {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<Eos>::deserialize(d)? {
        None => d_eos(),
        Some(Eos::One(id)) => id,
        Some(Eos::Many(ids)) => ids.first().copied().unwrap_or_else(d_eos),
    })
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
    /// The FFN: `relu`, `gelu` (`wi` → activation → `wo`), or gated (T5 v1.1, FLAN-T5):
    /// `gated-gelu` (gelu_new, as transformers maps it) or `gated-relu`
    /// (`act(wi_0 x) · wi_1 x` → `wo`).
    #[serde(default = "d_ff_proj")]
    pub feed_forward_proj: String,
    /// Tied input/output embeddings (scales decoder outputs by d_model^-0.5); untied models
    /// (T5 v1.1) have their own `lm_head.weight` and no scaling.
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// Whether decoder outputs are scaled by d_model^-0.5 before the LM head (transformers 5
    /// writes it; absent: `tie_word_embeddings`, as original T5 and v1.1 configs imply).
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    /// Dropout probability of training mode (embeddings, attention probabilities, sub-layer
    /// outputs, the FFN's hidden layer, final norms), as transformers applies it.
    #[serde(default = "d_dropout")]
    pub dropout_rate: f64,
    /// Padding id (also the decoder start token unless `decoder_start_token_id` is set).
    #[serde(default)]
    pub pad_token_id: u32,
    /// End-of-sequence id: generation stops a row when it emits it (default 1, T5's `</s>`).
    #[serde(default = "d_eos", deserialize_with = "lenient_eos")]
    pub eos_token_id: u32,
    /// First decoder input of generation (default: `pad_token_id`, see
    /// [`decoder_start`](Self::decoder_start)).
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
}

impl T5Config {
    /// t5-base's shape (the model of method page §5–§6), for storage reports and benchmarks.
    pub fn t5_base() -> Self {
        Self::from_json(
            r#"{"model_type": "t5", "vocab_size": 32128, "d_model": 768, "d_kv": 64,
                "d_ff": 3072, "num_layers": 12, "num_heads": 12, "feed_forward_proj": "relu",
                "pad_token_id": 0}"#,
        )
        .expect("t5-base's config is valid")
    }

    /// Parse and check config JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let c: Self =
            crate::common::parse_hf_config(text, &["t5"], "this model loads T5 checkpoints")?;
        c.feed_forward()?;
        if !(c.dropout_rate.is_finite() && (0.0..1.0).contains(&c.dropout_rate)) {
            return Err(ModelError::Config(format!(
                "dropout_rate must lie in [0, 1), got {}",
                c.dropout_rate
            )));
        }
        use crate::common::{ConfigCheck, MAX_DIMENSION, MAX_LAYERS};
        ConfigCheck::new()
            .count("vocab_size", c.vocab_size, MAX_DIMENSION)
            .count("d_model", c.d_model, MAX_DIMENSION)
            .count("d_kv", c.d_kv, MAX_DIMENSION)
            .count("d_ff", c.d_ff, MAX_DIMENSION)
            .count("num_heads", c.num_heads, MAX_DIMENSION)
            .count("num_layers", c.num_layers, MAX_LAYERS)
            .count("num_decoder_layers", c.decoder_layers(), MAX_LAYERS)
            .count(
                "relative_attention_num_buckets",
                c.relative_attention_num_buckets,
                MAX_DIMENSION,
            )
            .count(
                "relative_attention_max_distance",
                c.relative_attention_max_distance,
                MAX_DIMENSION,
            )
            .positive("layer_norm_epsilon", c.layer_norm_epsilon)
            .token("pad_token_id", c.pad_token_id as usize, c.vocab_size)
            .token("eos_token_id", c.eos_token_id as usize, c.vocab_size)
            .token(
                "decoder_start_token_id",
                c.decoder_start() as usize,
                c.vocab_size,
            )
            .finish()?;
        Ok(c)
    }

    /// The FFN shape: whether it is gated (`wi_0`, `wi_1`) and its activation, from
    /// `feed_forward_proj` as transformers reads it.
    pub fn feed_forward(&self) -> Result<(bool, Activation)> {
        Ok(match self.feed_forward_proj.as_str() {
            "relu" => (false, Activation::Relu),
            "gelu" => (false, Activation::Gelu),
            // transformers: "gated-gelu" means gelu_new (the tanh approximation)
            "gated-gelu" => (true, Activation::GeluNew),
            "gated-relu" => (true, Activation::Relu),
            other => {
                return Err(ModelError::Config(format!(
                    "unsupported feed_forward_proj `{other}` (relu, gelu, gated-gelu, gated-relu)"
                )))
            }
        })
    }

    /// Whether decoder outputs are scaled by d_model^-0.5 before the LM head.
    pub fn scales_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings)
    }

    /// The first decoder input of generation: `decoder_start_token_id`, else `pad_token_id`.
    pub fn decoder_start(&self) -> u32 {
        self.decoder_start_token_id.unwrap_or(self.pad_token_id)
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

    /// The PETL layout of the LoRA variants, whose layers are T5's attention modules: every
    /// block's self-attention (`enc.{l}`, `dec.{l}`), then every decoder block's
    /// cross-attention (`cross.{l}`).
    pub fn attention_layout(&self, tasks: &[&str]) -> PetlLayout {
        let mut layout = self.layout(tasks);
        layout
            .layers
            .extend((0..self.decoder_layers()).map(|l| format!("cross.{l}")));
        layout
    }

    /// Backbone parameters (shared embedding counted once; encoder and decoder stacks).
    pub fn backbone_params(&self) -> usize {
        let (d, inner, f) = (self.d_model, self.num_heads * self.d_kv, self.d_ff);
        let attn = 4 * d * inner;
        let gated = self.feed_forward().is_ok_and(|(g, _)| g);
        let ffn = if gated { 3 * d * f } else { 2 * d * f };
        let enc = self.num_layers * (attn + d + ffn + d);
        let dec = self.decoder_layers() * (2 * attn + 2 * d + ffn + d);
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d
            + head
            + enc
            + dec
            + 2 * d
            + 2 * self.relative_attention_num_buckets * self.num_heads
    }
}
