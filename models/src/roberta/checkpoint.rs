//! A Hugging Face checkpoint (`config.json`, `model.safetensors`, `tokenizer.json`): its
//! tensor layout written once ([`hf_tensors`]), validated up front when a checkpoint is
//! opened, and the source of random checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use propetl_runtime::PetlRng;

use super::config::RobertaConfig;
use crate::common::{HfTensor, TensorKind, Weights};
use crate::error::{ModelError, Result};
use crate::tokenizer::EncoderTokenizer;

/// Every backbone tensor the encoder loads, in Hugging Face layout, with names relative to the
/// weight prefix (`roberta.`, `bert.` or none): the embeddings, then per layer the attention
/// (`attention.self.{query,key,value}`, `attention.output.dense`), the FFN
/// (`intermediate.dense`, `output.dense`) and both LayerNorms. The pooler and LM head of a
/// file are not used.
pub fn hf_tensors(config: &RobertaConfig) -> Vec<HfTensor> {
    use TensorKind::{Ones, Weight, Zeros};
    let (h, f) = (config.hidden_size, config.intermediate_size);
    let mut t = vec![
        HfTensor::new(
            "embeddings.word_embeddings.weight",
            &[config.vocab_size, h],
            Weight,
        ),
        HfTensor::new(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
            Weight,
        ),
        HfTensor::new(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
            Weight,
        ),
        HfTensor::new("embeddings.LayerNorm.weight", &[h], Ones),
        HfTensor::new("embeddings.LayerNorm.bias", &[h], Zeros),
    ];
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
            t.push(HfTensor::new(
                format!("{p}.{name}.weight"),
                &[out, inp],
                Weight,
            ));
            t.push(HfTensor::new(format!("{p}.{name}.bias"), &[out], Zeros));
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push(HfTensor::new(format!("{p}.{name}.weight"), &[h], Ones));
            t.push(HfTensor::new(format!("{p}.{name}.bias"), &[h], Zeros));
        }
    }
    t
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
    pub(crate) vb: VarBuilder<'static>,
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
    /// Open `config.json` and memory-map `model.safetensors` as frozen tensors; every tensor
    /// of [`hf_tensors`] must be there with its shape.
    pub fn open(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config = RobertaConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::mmap(&dir.join("model.safetensors"), device)?;
        Self::new(dir, config, weights, None)
    }

    /// A checkpoint from in-memory files: `config.json` text, `model.safetensors` bytes and
    /// optionally `tokenizer.json` bytes (e.g. a model embedded in a binary). Validated like
    /// [`open`](Self::open).
    pub fn from_bytes(
        config_json: &str,
        safetensors: Vec<u8>,
        tokenizer_json: Option<Vec<u8>>,
        device: &Device,
    ) -> Result<Self> {
        let config = RobertaConfig::from_json(config_json)?;
        let weights = Weights::buffered(safetensors, device)?;
        Self::new(PathBuf::new(), config, weights, tokenizer_json)
    }

    /// A checkpoint from in-memory tensors named like a Hugging Face file (prefix detected
    /// the same way, validated like [`open`](Self::open)). Used for models built in-process
    /// (demos, benchmarks).
    pub fn from_tensors(
        config: RobertaConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::new(
            PathBuf::new(),
            config,
            Weights::from_tensors(tensors, device),
            None,
        )
    }

    /// Random weights in Hugging Face layout for `config` (N(0, std²) weights, LayerNorm
    /// weights 1, biases 0), under the `roberta.` prefix: the tensors of [`hf_tensors`],
    /// weights drawn in its order.
    pub fn random(
        config: RobertaConfig,
        std: f64,
        rng: &mut PetlRng,
        device: &Device,
    ) -> Result<Self> {
        let tensors =
            crate::common::random_tensors(&hf_tensors(&config), "roberta.", std, rng, device)?;
        Self::from_tensors(config, tensors, device)
    }

    /// Detect the prefix, then validate every tensor before anything is built.
    fn new(
        dir: PathBuf,
        config: RobertaConfig,
        weights: Weights,
        tokenizer_json: Option<Vec<u8>>,
    ) -> Result<Self> {
        let prefix = detect_prefix(|n| weights.contains(n), &weights.source)?;
        weights.validate(&prefix, &hf_tensors(&config))?;
        Ok(Self {
            dir,
            config,
            prefix,
            vb: weights.vb,
            tokenizer_json,
        })
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
    pub fn tokenizer(&self) -> Result<EncoderTokenizer> {
        if let Some(bytes) = &self.tokenizer_json {
            return EncoderTokenizer::from_bytes(
                bytes,
                self.config.pad_token_id as u32,
                self.device(),
            );
        }
        EncoderTokenizer::from_file(
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::common::tests::{safetensors_bytes, RecordingBackend};
    use candle_core::DType;

    pub(crate) fn tiny() -> RobertaConfig {
        RobertaConfig {
            model_type: "roberta".into(),
            vocab_size: 50,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 20,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
        }
    }

    fn tiny_json(vocab_size: usize) -> String {
        serde_json::json!({
            "model_type": "roberta", "vocab_size": vocab_size, "hidden_size": 8,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 20, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
            "pad_token_id": 1
        })
        .to_string()
    }

    fn random_tensors(prefix: &str) -> HashMap<String, Tensor> {
        let layout = hf_tensors(&tiny());
        crate::common::random_tensors(&layout, prefix, 0.02, &mut PetlRng::seed(0), &Device::Cpu)
            .unwrap()
    }

    #[test]
    fn layout_has_every_backbone_tensor_once() {
        let c = tiny();
        let layout = hf_tensors(&c);
        assert_eq!(layout.len(), 5 + 2 * 16);
        let names: std::collections::HashSet<&str> =
            layout.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), layout.len());
        // the backbone_params count, less the pooler (not loaded)
        let floats: usize = layout
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        let pooler = c.hidden_size * c.hidden_size + c.hidden_size;
        assert_eq!(floats, c.backbone_params() - pooler);
    }

    /// The loaders' `vb.pp(...)` chains request exactly the tensors of `hf_tensors`, with
    /// their shapes: the layout is written once and the loaders agree with it.
    #[test]
    fn loaders_request_exactly_the_layout() {
        let dev = Device::Cpu;
        let recorder = RecordingBackend::new(random_tensors("bert."));
        let mut ckpt = Checkpoint::random(tiny(), 0.02, &mut PetlRng::seed(0), &dev).unwrap();
        ckpt.prefix = "bert.".into();
        ckpt.vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, dev.clone());
        super::super::FrozenEncoder::from_checkpoint(&ckpt).unwrap();
        let mut expected: Vec<(String, Vec<usize>)> = hf_tensors(&tiny())
            .into_iter()
            .map(|t| (format!("bert.{}", t.name), t.shape))
            .collect();
        expected.sort();
        assert_eq!(recorder.requested(), expected);
    }

    #[test]
    fn random_checkpoint_validates_and_loads() {
        let dev = Device::Cpu;
        let ckpt = Checkpoint::random(tiny(), 0.02, &mut PetlRng::seed(0), &dev).unwrap();
        assert_eq!(ckpt.prefix, "roberta.");
        super::super::FrozenEncoder::from_checkpoint(&ckpt).unwrap();
        // the same tensors validate through every constructor, under every prefix
        for prefix in ["roberta.", "bert.", ""] {
            let c = Checkpoint::from_tensors(tiny(), random_tensors(prefix), &dev).unwrap();
            assert_eq!(c.prefix, prefix);
        }
        let bytes = safetensors_bytes(&random_tensors("bert."));
        let c = Checkpoint::from_bytes(&tiny_json(50), bytes, None, &dev).unwrap();
        assert_eq!((c.prefix.as_str(), &c.config), ("bert.", &tiny()));
    }

    #[test]
    fn a_missing_tensor_is_named_up_front() {
        let mut t = random_tensors("roberta.");
        t.remove("roberta.encoder.layer.1.output.LayerNorm.bias");
        let e = Checkpoint::from_tensors(tiny(), t, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in-memory tensors: missing tensor `roberta.encoder.layer.1.output.LayerNorm.bias` (expected shape [8])"),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_shape_is_named_up_front() {
        let dev = Device::Cpu;
        let mut t = random_tensors("");
        t.insert(
            "encoder.layer.0.intermediate.dense.weight".into(),
            Tensor::zeros((8, 16), DType::F32, &dev).unwrap(),
        );
        let e = Checkpoint::from_bytes(&tiny_json(50), safetensors_bytes(&t), None, &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in-memory checkpoint: tensor `encoder.layer.0.intermediate.dense.weight` has shape [8, 16], expected shape [16, 8]")
                && !e.contains("more"),
            "{e}"
        );
        // a config that does not belong to the weights
        let bytes = safetensors_bytes(&random_tensors(""));
        let e = Checkpoint::from_bytes(&tiny_json(51), bytes, None, &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor `embeddings.word_embeddings.weight` has shape [50, 8], expected shape [51, 8]"),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_is_not_bert_family_is_refused() {
        let e = Checkpoint::from_tensors(
            tiny(),
            HashMap::from([(
                "shared.weight".to_string(),
                Tensor::zeros((50, 8), DType::F32, &Device::Cpu).unwrap(),
            )]),
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a BERT-family checkpoint"), "{e}");
    }
}
