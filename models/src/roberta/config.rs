//! The encoder's `config.json`: Hugging Face keys and defaults, validation, parameter count
//! and PETL layout.

use std::path::Path;

use propetl_runtime::PetlLayout;
use serde::Deserialize;

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
        use crate::common::{ConfigCheck, MAX_DIMENSION, MAX_LAYERS};
        ConfigCheck::new()
            .count("vocab_size", cfg.vocab_size, MAX_DIMENSION)
            .count("hidden_size", cfg.hidden_size, MAX_DIMENSION)
            .count("intermediate_size", cfg.intermediate_size, MAX_DIMENSION)
            .count(
                "num_attention_heads",
                cfg.num_attention_heads,
                MAX_DIMENSION,
            )
            .count("num_hidden_layers", cfg.num_hidden_layers, MAX_LAYERS)
            .count(
                "max_position_embeddings",
                cfg.max_position_embeddings,
                MAX_DIMENSION,
            )
            .count("type_vocab_size", cfg.type_vocab_size, MAX_DIMENSION)
            .require(
                cfg.num_attention_heads == 0
                    || cfg.hidden_size.is_multiple_of(cfg.num_attention_heads),
                || {
                    format!(
                        "hidden_size {} is not a multiple of num_attention_heads {}",
                        cfg.hidden_size, cfg.num_attention_heads
                    )
                },
            )
            .dropout("hidden_dropout_prob", cfg.hidden_dropout_prob)
            .dropout(
                "attention_probs_dropout_prob",
                cfg.attention_probs_dropout_prob,
            )
            .positive("layer_norm_eps", cfg.layer_norm_eps)
            .token("pad_token_id", cfg.pad_token_id, cfg.vocab_size)
            .finish()?;
        Ok(cfg)
    }

    /// Whether positions are RoBERTa-style (`padding_idx + 1` offset).
    pub fn roberta_positions(&self) -> bool {
        self.model_type != "bert"
    }

    /// The FFN activation of `hidden_act`.
    pub(crate) fn activation(&self) -> Result<propetl_runtime::Activation> {
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
