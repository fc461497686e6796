//! T5's `config.json`: Hugging Face keys and defaults, validation, PETL layout (`enc.{l}`,
//! `dec.{l}`) and parameter count.

use propetl_runtime::PetlLayout;
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
    /// `relu` or `gelu` (gated variants are not supported).
    #[serde(default = "d_ff_proj")]
    pub feed_forward_proj: String,
    /// Tied input/output embeddings (scales decoder outputs by d_model^-0.5).
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
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
        if !matches!(c.feed_forward_proj.as_str(), "relu" | "gelu") {
            return Err(ModelError::Config(format!("unsupported feed_forward_proj `{}` (relu or gelu; gated T5 v1.1 FFNs are not supported)", c.feed_forward_proj)));
        }
        if !c.tie_word_embeddings {
            return Err(ModelError::Config(
                "untied T5 output embeddings are not supported".into(),
            ));
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
