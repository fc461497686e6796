//! A `T5ForConditionalGeneration` checkpoint (`config.json`, `model.safetensors`): its tensor
//! layout written once ([`hf_tensors`]), validated up front when a checkpoint is opened, and
//! the source of random checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use propetl_runtime::PetlRng;

use super::config::T5Config;
use crate::common::{HfTensor, TensorKind, Weights};
use crate::error::{ModelError, Result};

/// Every backbone tensor the model loads, in Hugging Face layout: the shared embedding, then
/// per encoder block `layer.0` (self-attention `q,k,v,o`, RMS norm) and `layer.1` (FFN
/// `wi,wo`, RMS norm), per decoder block `layer.0` (self-attention), `layer.1`
/// (`EncDecAttention`) and `layer.2` (FFN); the relative-position tables of block 0 of each
/// stack and both final norms; gated FFNs (T5 v1.1) have `wi_0`, `wi_1` for `wi`, untied
/// models their `lm_head.weight`. T5 has no biases; a tied `lm_head.weight` and
/// `{encoder,decoder}.embed_tokens.weight` of a file are not used.
pub fn hf_tensors(config: &T5Config) -> Vec<HfTensor> {
    use TensorKind::{Ones, Weight};
    let (d, inner, f) = (config.d_model, config.num_heads * config.d_kv, config.d_ff);
    let gated = config.feed_forward().is_ok_and(|(g, _)| g);
    let wi: &[&str] = if gated { &["wi_0", "wi_1"] } else { &["wi"] };
    let mut t = vec![HfTensor::new(
        "shared.weight",
        &[config.vocab_size, d],
        Weight,
    )];
    let attention = |t: &mut Vec<HfTensor>, p: &str| {
        for name in ["q", "k", "v"] {
            t.push(HfTensor::new(
                format!("{p}.{name}.weight"),
                &[inner, d],
                Weight,
            ));
        }
        t.push(HfTensor::new(format!("{p}.o.weight"), &[d, inner], Weight));
    };
    for (stack, blocks) in [
        ("encoder", config.num_layers),
        ("decoder", config.decoder_layers()),
    ] {
        let decoder = stack == "decoder";
        for l in 0..blocks {
            let p = format!("{stack}.block.{l}.layer");
            attention(&mut t, &format!("{p}.0.SelfAttention"));
            if l == 0 {
                t.push(HfTensor::new(
                    format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                    &[config.relative_attention_num_buckets, config.num_heads],
                    Weight,
                ));
            }
            t.push(HfTensor::new(
                format!("{p}.0.layer_norm.weight"),
                &[d],
                Ones,
            ));
            if decoder {
                attention(&mut t, &format!("{p}.1.EncDecAttention"));
                t.push(HfTensor::new(
                    format!("{p}.1.layer_norm.weight"),
                    &[d],
                    Ones,
                ));
            }
            let ff = if decoder { 2 } else { 1 };
            for wi in wi {
                t.push(HfTensor::new(
                    format!("{p}.{ff}.DenseReluDense.{wi}.weight"),
                    &[f, d],
                    Weight,
                ));
            }
            t.push(HfTensor::new(
                format!("{p}.{ff}.DenseReluDense.wo.weight"),
                &[d, f],
                Weight,
            ));
            t.push(HfTensor::new(
                format!("{p}.{ff}.layer_norm.weight"),
                &[d],
                Ones,
            ));
        }
        t.push(HfTensor::new(
            format!("{stack}.final_layer_norm.weight"),
            &[d],
            Ones,
        ));
    }
    if !config.tie_word_embeddings {
        t.push(HfTensor::new(
            "lm_head.weight",
            &[config.vocab_size, d],
            Weight,
        ));
    }
    t
}

/// A T5 checkpoint folder.
#[derive(Clone)]
pub struct T5Checkpoint {
    /// The folder.
    pub dir: PathBuf,
    /// Parsed config.
    pub config: T5Config,
    pub(crate) vb: VarBuilder<'static>,
}

impl std::fmt::Debug for T5Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Checkpoint")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .finish()
    }
}

impl T5Checkpoint {
    /// Open `config.json` and memory-map `model.safetensors`; every tensor of [`hf_tensors`]
    /// must be there with its shape.
    pub fn open(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let config = T5Config::from_json(&text)?;
        let weights = Weights::mmap(&dir.join("model.safetensors"), device)?;
        Self::new(dir, config, weights)
    }

    /// A checkpoint from in-memory tensors named like a Hugging Face file (validated like
    /// [`open`](Self::open)).
    pub fn from_tensors(
        config: T5Config,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::new(
            PathBuf::new(),
            config,
            Weights::from_tensors(tensors, device),
        )
    }

    /// Random weights in Hugging Face layout for `config` (N(0, std²) weights and
    /// relative-position tables, RMS-norm weights 1): the tensors of [`hf_tensors`], weights
    /// drawn in its order.
    pub fn random(config: T5Config, std: f64, rng: &mut PetlRng, device: &Device) -> Result<Self> {
        let tensors = crate::common::random_tensors(&hf_tensors(&config), "", std, rng, device)?;
        Self::from_tensors(config, tensors, device)
    }

    /// Check the architecture, then validate every tensor before anything is built.
    fn new(dir: PathBuf, config: T5Config, weights: Weights) -> Result<Self> {
        if !weights.contains("shared.weight") {
            return Err(ModelError::Weights(format!(
                "{}: no `shared.weight`: not a T5 checkpoint",
                weights.source
            )));
        }
        weights.validate("", &hf_tensors(&config))?;
        Ok(Self {
            dir,
            config,
            vb: weights.vb,
        })
    }

    /// The device.
    pub fn device(&self) -> &Device {
        self.vb.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::tests::{safetensors_bytes, RecordingBackend};
    use candle_core::DType;

    fn tiny() -> T5Config {
        T5Config {
            model_type: "t5".into(),
            vocab_size: 40,
            d_model: 24,
            d_kv: 4,
            d_ff: 16,
            num_layers: 2,
            num_decoder_layers: Some(3),
            num_heads: 2,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 16,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            tie_word_embeddings: true,
            scale_decoder_outputs: None,
            dropout_rate: 0.1,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: None,
        }
    }

    fn random_tensors() -> HashMap<String, Tensor> {
        crate::common::random_tensors(
            &hf_tensors(&tiny()),
            "",
            0.05,
            &mut PetlRng::seed(0),
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn layout_counts_the_backbone_parameters() {
        let c = tiny();
        let layout = hf_tensors(&c);
        let names: std::collections::HashSet<&str> =
            layout.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), layout.len());
        let floats: usize = layout
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        assert_eq!(floats, c.backbone_params());
    }

    /// The loaders' `vb.pp(...)` chains request exactly the tensors of `hf_tensors`, with
    /// their shapes (the relative-position tables are requested once per stack).
    #[test]
    fn loaders_request_exactly_the_layout() {
        let dev = Device::Cpu;
        let recorder = RecordingBackend::new(random_tensors());
        let mut ckpt = T5Checkpoint::random(tiny(), 0.05, &mut PetlRng::seed(0), &dev).unwrap();
        ckpt.vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, dev.clone());
        super::super::layers::load_stacks(&ckpt).unwrap();
        let mut expected: Vec<(String, Vec<usize>)> = hf_tensors(&tiny())
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        expected.sort();
        assert_eq!(recorder.requested(), expected);
    }

    #[test]
    fn random_checkpoint_validates_loads_and_runs() {
        use super::super::{Seq2Seq, T5ProAdapter};
        use propetl_runtime::NumericOverrides;
        let dev = Device::Cpu;
        let ckpt = T5Checkpoint::random(tiny(), 0.05, &mut PetlRng::seed(0), &dev).unwrap();
        let model = T5ProAdapter::from_checkpoint(
            &ckpt,
            &["a", "b"],
            &NumericOverrides::default(),
            &candle_nn::VarMap::new(),
            &mut PetlRng::seed(1),
        )
        .unwrap();
        let ids = Tensor::new(&[[5u32, 7, 1]], &dev).unwrap();
        let attention_mask = Tensor::new(&[[1u32, 1, 1]], &dev).unwrap();
        let dec = Tensor::new(&[[0u32, 5]], &dev).unwrap();
        let logits = model.logits(&ids, &attention_mask, &dec, "b").unwrap();
        assert_eq!(logits.dims(), [1, 2, 40]);
        // the same seed gives the same checkpoint
        let again = T5Checkpoint::random(tiny(), 0.05, &mut PetlRng::seed(0), &dev).unwrap();
        let name = "decoder.block.2.layer.1.EncDecAttention.o.weight";
        let (a, b) = (
            ckpt.vb.get((24, 8), name).unwrap(),
            again.vb.get((24, 8), name).unwrap(),
        );
        let diff = (a - b).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn a_missing_tensor_or_wrong_shape_is_named_up_front() {
        let dev = Device::Cpu;
        let mut t = random_tensors();
        t.remove("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
        let e = T5Checkpoint::from_tensors(tiny(), t, &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing tensor `decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight` (expected shape [8, 2])"),
            "{e}"
        );
        let mut t = random_tensors();
        t.insert(
            "encoder.block.1.layer.1.DenseReluDense.wo.weight".into(),
            Tensor::zeros((16, 24), DType::F32, &dev).unwrap(),
        );
        let e = T5Checkpoint::from_tensors(tiny(), t, &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor `encoder.block.1.layer.1.DenseReluDense.wo.weight` has shape [16, 24], expected shape [24, 16]"),
            "{e}"
        );
        // fewer decoder blocks in the file than in the config: the first missing one is named
        let mut c = tiny();
        c.num_decoder_layers = Some(4);
        let e = T5Checkpoint::from_tensors(c, random_tensors(), &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing tensor `decoder.block.3.layer.0.SelfAttention.q.weight`")
                && e.contains("more"),
            "{e}"
        );
        // not a T5 file at all
        let e = T5Checkpoint::from_tensors(tiny(), HashMap::new(), &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a T5 checkpoint"), "{e}");
    }

    #[test]
    fn open_validates_the_file() {
        let dir = std::env::temp_dir().join(format!("propetl-t5-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({
            "model_type": "t5", "vocab_size": 40, "d_model": 24, "d_kv": 4, "d_ff": 16,
            "num_layers": 2, "num_decoder_layers": 3, "num_heads": 2,
            "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let mut t = random_tensors();
        std::fs::write(dir.join("model.safetensors"), safetensors_bytes(&t)).unwrap();
        let ckpt = T5Checkpoint::open(&dir, &Device::Cpu).unwrap();
        assert_eq!(ckpt.config, tiny());
        t.remove("encoder.final_layer_norm.weight");
        std::fs::write(dir.join("model.safetensors"), safetensors_bytes(&t)).unwrap();
        let e = T5Checkpoint::open(&dir, &Device::Cpu)
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("model.safetensors: missing tensor `encoder.final_layer_norm.weight` (expected shape [24])"),
            "{e}"
        );
    }
}
