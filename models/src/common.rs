//! What every model family needs: `config.json` parsing, frozen weights (memory-mapped,
//! in-memory or built in-process) with their shapes read up front, the Hugging Face tensor
//! list type ([`HfTensor`]) that drives both the up-front validation of a checkpoint and
//! random checkpoints, a weight getter whose errors name the tensor, a frozen linear layer,
//! the additive attention mask, the vocabulary check of input ids and the lookup in a
//! family's variant table.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use propetl_runtime::{ops, LayerPetl, LoraTarget, PetlConfig, PetlRng, Variant};

use crate::error::{ModelError, Result};

/// How a tensor of a Hugging Face layout is filled in a random checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// A weight matrix or embedding: N(0, std²).
    Weight,
    /// A norm weight: ones.
    Ones,
    /// A bias: zeros.
    Zeros,
}

/// One tensor of a family's Hugging Face layout: its name (relative to the family's weight
/// prefix), shape, and how a random checkpoint fills it. Each family writes its layout once
/// (`roberta::checkpoint::hf_tensors`, `t5::checkpoint::hf_tensors`); it drives the up-front
/// validation of every checkpoint and random checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfTensor {
    /// Name relative to the weight prefix, e.g. `encoder.layer.0.attention.self.query.weight`.
    pub name: String,
    /// Shape (PyTorch layout).
    pub shape: Vec<usize>,
    /// How a random checkpoint fills it.
    pub kind: TensorKind,
}

impl HfTensor {
    pub(crate) fn new(name: impl Into<String>, shape: &[usize], kind: TensorKind) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            kind,
        }
    }
}

/// Frozen weights and the shapes of every tensor they hold (read from the safetensors header
/// or the in-memory tensors: no data is loaded to know them).
pub(crate) struct Weights {
    /// The frozen tensors (f32).
    pub vb: VarBuilder<'static>,
    /// Shape of every tensor, by full name.
    pub shapes: HashMap<String, Vec<usize>>,
    /// Where they come from (a file path, "in-memory checkpoint", …), for error messages.
    pub source: String,
}

impl Weights {
    /// Memory-map a `model.safetensors` as frozen f32 tensors, with errors naming the file.
    pub fn mmap(weights: &Path, device: &Device) -> Result<Self> {
        let source = weights.display().to_string();
        if !weights.exists() {
            return Err(ModelError::io(
                weights,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model.safetensors not found"),
            ));
        }
        // SAFETY: the file is memory-mapped read-only; it must not be modified while in use.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&[weights]) }
            .map_err(|e| ModelError::Weights(format!("{source}: {e}")))?;
        let shapes = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        let vb = VarBuilder::from_backend(Box::new(st), DType::F32, device.clone());
        Ok(Self { vb, shapes, source })
    }

    /// The bytes of a `model.safetensors` as frozen f32 tensors.
    pub fn buffered(safetensors: Vec<u8>, device: &Device) -> Result<Self> {
        let st = candle_core::safetensors::BufferedSafetensors::new(safetensors)
            .map_err(|e| ModelError::Weights(e.to_string()))?;
        let shapes = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        let vb = VarBuilder::from_backend(Box::new(st), DType::F32, device.clone());
        Ok(Self {
            vb,
            shapes,
            source: "in-memory checkpoint".into(),
        })
    }

    /// In-memory tensors named like a Hugging Face file.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        let shapes = tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.dims().to_vec()))
            .collect();
        Self {
            vb: VarBuilder::from_tensors(tensors, DType::F32, device),
            shapes,
            source: "in-memory tensors".into(),
        }
    }

    /// Whether a tensor of this full name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// Check that every tensor of `layout` exists under `prefix` with its shape, before
    /// anything is built: the first problem is named with its expected shape (and how many
    /// more there are).
    pub fn validate(&self, prefix: &str, layout: &[HfTensor]) -> Result<()> {
        let problems: Vec<String> = layout
            .iter()
            .filter_map(|t| {
                let full = format!("{prefix}{}", t.name);
                match self.shapes.get(&full) {
                    None => Some(format!(
                        "missing tensor `{full}` (expected shape {:?})",
                        t.shape
                    )),
                    Some(s) if *s != t.shape => Some(format!(
                        "tensor `{full}` has shape {s:?}, expected shape {:?}",
                        t.shape
                    )),
                    Some(_) => None,
                }
            })
            .collect();
        match problems.as_slice() {
            [] => Ok(()),
            [one] => Err(ModelError::Weights(format!("{}: {one}", self.source))),
            [first, rest @ ..] => Err(ModelError::Weights(format!(
                "{}: {first} (and {} more tensors missing or of the wrong shape: does config.json belong to these weights?)",
                self.source,
                rest.len()
            ))),
        }
    }
}

/// Random tensors of `layout` under `prefix` (weights N(0, std²) drawn in `layout` order,
/// norm weights 1, biases 0).
pub(crate) fn random_tensors(
    layout: &[HfTensor],
    prefix: &str,
    std: f64,
    rng: &mut PetlRng,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    layout
        .iter()
        .map(|t| {
            let v = match t.kind {
                TensorKind::Weight => rng.normal(t.shape.as_slice(), std, device)?,
                TensorKind::Ones => Tensor::ones(t.shape.as_slice(), DType::F32, device)?,
                TensorKind::Zeros => Tensor::zeros(t.shape.as_slice(), DType::F32, device)?,
            };
            Ok((format!("{prefix}{}", t.name), v))
        })
        .collect()
}

/// Parse a Hugging Face `config.json`: malformed JSON, a `model_type` outside `accepted`
/// (`family` says what the model loads) and missing keys each get a clear error.
pub(crate) fn parse_hf_config<T: serde::de::DeserializeOwned>(
    text: &str,
    accepted: &[&str],
    family: &str,
) -> Result<T> {
    let raw: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ModelError::Config(format!("malformed config.json: {e}")))?;
    let mt = raw
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("<missing>");
    if !accepted.contains(&mt) {
        return Err(ModelError::Config(format!(
            "unsupported model_type `{mt}`: {family} ({})",
            accepted.join(", ")
        )));
    }
    serde_json::from_value(raw).map_err(|e| ModelError::Config(format!("config.json: {e}")))
}

/// Fetch a frozen tensor with an error naming its full path and the expected shape.
pub(crate) fn get(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    vb.get(shape, name).map_err(|e| {
        let full = if vb.prefix().is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", vb.prefix())
        };
        ModelError::Weights(format!("tensor `{full}` (expected shape {shape:?}): {e}"))
    })
}

/// A linear layer (PyTorch layout `weight [out, in]`, optional `bias [out]`). Frozen (plain
/// tensors) it is applied with `ops::frozen_linear` (no weight gradients); with a trainable
/// weight (a `Var`'s tensor: full fine-tuning) with the differentiable `ops::linear`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `weight` and `bias` under `vb`.
    pub fn load(vb: VarBuilder, out: usize, inp: usize) -> Result<Self> {
        Ok(Self {
            weight: get(&vb, &[out, inp], "weight")?,
            bias: Some(get(&vb, &[out], "bias")?),
        })
    }

    /// `weight` only under `vb`.
    pub fn load_no_bias(vb: VarBuilder, out: usize, inp: usize) -> Result<Self> {
        Ok(Self {
            weight: get(&vb, &[out, inp], "weight")?,
            bias: None,
        })
    }

    /// The projections `parts` (all of one input width) stacked into one layer,
    /// `weight [Σ out, in]`, and each part again as a view of its rows: one product computes
    /// them all (a wider gemm runs faster than three narrow ones, and the backward pass sums
    /// their input gradients inside one product instead of in two additions). `None` when a
    /// part trains (full fine-tuning keeps its own weights) or the parts differ in width or
    /// in having a bias.
    pub fn stacked(parts: &[Linear]) -> candle_core::Result<Option<(Linear, Vec<Linear>)>> {
        let first = match parts.first() {
            Some(p) => p,
            None => return Ok(None),
        };
        let width = first.weight.dim(1)?;
        for p in parts {
            if p.weight.is_variable()
                || p.bias.as_ref().is_some_and(|b| b.is_variable())
                || p.weight.dim(1)? != width
                || p.bias.is_some() != first.bias.is_some()
            {
                return Ok(None);
            }
        }
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        let all = Linear {
            weight: Tensor::cat(&weights, 0)?,
            bias: biases.map(|b| Tensor::cat(&b, 0)).transpose()?,
        };
        let mut views = Vec::with_capacity(parts.len());
        let mut at = 0;
        for p in parts {
            let out = p.weight.dim(0)?;
            views.push(all.rows(at, out)?);
            at += out;
        }
        Ok(Some((all, views)))
    }

    /// The rows `[start, start + len)` of this layer (weight and bias) as views: no copy.
    pub fn rows(&self, start: usize, len: usize) -> candle_core::Result<Linear> {
        Ok(Linear {
            weight: self.weight.narrow(0, start, len)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.narrow(0, start, len))
                .transpose()?,
        })
    }

    /// All parts of a stacked layer ([`Linear::stacked`]) of `x` in one product, with the
    /// layer's LoRA pairs (training) or folded LoRA deltas (inference) on their blocks:
    /// `parts` names each part's LoRA target and first output column, in order. `None` when
    /// the pairs cannot share one op (different ranks or scales): then project part by part.
    pub fn forward_stacked(
        &self,
        x: &Tensor,
        petl: Option<&LayerPetl>,
        parts: &[(LoraTarget, usize)],
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(petl) = petl else {
            return self.forward(x).map(Some);
        };
        let merged: Vec<(usize, &Tensor)> = parts
            .iter()
            .filter_map(|&(target, at)| petl.merged_lora(target).map(|d| (at, d)))
            .collect();
        if !merged.is_empty() {
            return self.forward_with_row_deltas(x, &merged).map(Some);
        }
        let pairs: Vec<(usize, (&Tensor, &Tensor, f64))> = parts
            .iter()
            .filter_map(|&(target, at)| petl.lora_pair(target).map(|p| (at, p)))
            .collect();
        let Some(&(_, (first_a, _, scale))) = pairs.first() else {
            return self.forward(x).map(Some);
        };
        if pairs
            .iter()
            .any(|(_, (a, _, s))| *s != scale || a.dims() != first_a.dims())
        {
            return Ok(None);
        }
        let blocks: Vec<ops::LoraBlock> = pairs
            .iter()
            .map(|&(at, (a, b, _))| ops::LoraBlock { at, a, b })
            .collect();
        self.forward_with_lora_blocks(x, &blocks, scale).map(Some)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.weight.is_variable() {
            ops::linear(x, &self.weight, self.bias.as_ref())
        } else {
            ops::frozen_linear(x, &self.weight, self.bias.as_ref())
        }
    }

    /// `act(x Wᵀ + b)`; with a frozen weight the bias is added by the activation's fused
    /// kernel where it has one (`ops::activate_with_bias`) instead of in a pass of its own.
    pub fn forward_activated(
        &self,
        x: &Tensor,
        act: propetl_runtime::Activation,
    ) -> candle_core::Result<Tensor> {
        if self.weight.is_variable() {
            ops::activate(&self.forward(x)?, act)
        } else {
            let y = ops::frozen_linear(x, &self.weight, None)?;
            ops::activate_with_bias(&y, self.bias.as_ref(), act)
        }
    }

    /// `x Wᵀ + b + scale · (x Aᵀ) Bᵀ` (a LoRA pair on this projection): with a frozen weight
    /// one op whose gemms accumulate the update (`ops::frozen_linear_lora`).
    pub fn forward_with_lora(
        &self,
        x: &Tensor,
        (a, b, scale): (&Tensor, &Tensor, f64),
    ) -> candle_core::Result<Tensor> {
        if self.weight.is_variable() {
            let delta = (ops::linear(&ops::linear(x, a, None)?, b, None)? * scale)?;
            self.forward(x)?.add(&delta)
        } else {
            ops::frozen_linear_lora(x, &self.weight, self.bias.as_ref(), a, b, scale)
        }
    }

    /// [`Linear::forward_with_lora`] for a stacked layer ([`Linear::stacked`]) with LoRA pairs
    /// on some of its parts: `blocks` names each pair's first output column
    /// (`ops::frozen_linear_lora_blocks`, one op for the whole stack).
    pub fn forward_with_lora_blocks(
        &self,
        x: &Tensor,
        blocks: &[ops::LoraBlock],
        scale: f64,
    ) -> candle_core::Result<Tensor> {
        if self.weight.is_variable() {
            candle_core::bail!("a stacked projection is frozen (Linear::stacked)")
        }
        ops::frozen_linear_lora_blocks(x, &self.weight, self.bias.as_ref(), blocks, scale)
    }

    /// `x (W + ΔW)ᵀ + b` for a frozen `W` and a weight delta `[out, in]` (a LoRA pair folded
    /// at inference, `LayerPetl::merged_lora`): one product instead of the layer's plus two
    /// low-rank ones and an addition.
    pub fn forward_with_delta(&self, x: &Tensor, delta: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with_row_deltas(x, &[(0, delta)])
    }

    /// [`Linear::forward_with_delta`] with deltas on row blocks of `W`: `(first row, ΔW)`, in
    /// order and disjoint (the folded query and value pairs of a stacked projection).
    pub fn forward_with_row_deltas(
        &self,
        x: &Tensor,
        deltas: &[(usize, &Tensor)],
    ) -> candle_core::Result<Tensor> {
        let out = self.weight.dim(0)?;
        let mut pieces = Vec::with_capacity(2 * deltas.len() + 1);
        let mut at = 0;
        for &(start, delta) in deltas {
            let rows = delta.dim(0)?;
            if start < at || start + rows > out {
                candle_core::bail!(
                    "weight deltas at rows {start}..{} of {out} overlap or overrun",
                    start + rows
                )
            }
            if start > at {
                pieces.push(self.weight.narrow(0, at, start - at)?);
            }
            pieces.push(self.weight.narrow(0, start, rows)?.add(delta)?);
            at = start + rows;
        }
        if at < out {
            pieces.push(self.weight.narrow(0, at, out - at)?);
        }
        let weight = match pieces.as_slice() {
            [one] => one.clone(),
            many => Tensor::cat(many, 0)?,
        };
        if self.weight.is_variable() {
            ops::linear(x, &weight, self.bias.as_ref())
        } else {
            ops::frozen_linear(x, &weight, self.bias.as_ref())
        }
    }
}

/// The additive form of an attention mask `[B, S]` (1 attend, 0 padding): 0 where attended,
/// −1e9 where padded, as f32 `[B, S]`.
pub fn additive_attention_mask(attention_mask: &Tensor) -> Result<Tensor> {
    Ok(((attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?)
}

/// Error when an input id is outside a vocabulary of `vocab` entries.
pub(crate) fn check_vocab(ids: &Tensor, vocab: usize) -> Result<()> {
    let flat = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
    match flat.into_iter().find(|&t| t as usize >= vocab) {
        Some(bad) => Err(ModelError::Input(format!(
            "token id {bad} outside the vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}

/// The entry of `variant` in a family's variant table (variant, compile-time spec,
/// constructor), or a config error listing what `family` supports (`hint` is appended to the
/// list, e.g. why some variants are missing).
pub(crate) fn find_variant<B>(
    table: &'static [(Variant, PetlConfig, B)],
    variant: Variant,
    family: &str,
    hint: &str,
) -> Result<&'static (Variant, PetlConfig, B)> {
    table.iter().find(|(v, _, _)| *v == variant).ok_or_else(|| {
        let names: Vec<&str> = table.iter().map(|(v, _, _)| v.name()).collect();
        ModelError::Config(format!(
            "{family} has no variant `{variant}` (supported: {}{hint})",
            names.join(", ")
        ))
    })
}

/// The largest dimension (width, vocabulary, positions) a `config.json` may give: far above
/// every real model, low enough that parameter counts cannot overflow.
pub const MAX_DIMENSION: usize = 1 << 24;
/// The largest number of layers a `config.json` may give.
pub const MAX_LAYERS: usize = 4096;

/// Range checks of `config.json` values; each error names the key, the value and the range.
pub(crate) struct ConfigCheck(Vec<String>);

impl ConfigCheck {
    pub(crate) fn new() -> Self {
        Self(Vec::new())
    }
    /// `1 ≤ value ≤ max`.
    pub(crate) fn count(&mut self, key: &str, value: usize, max: usize) -> &mut Self {
        if value == 0 || value > max {
            self.0
                .push(format!("{key} must lie in 1..={max}, got {value}"));
        }
        self
    }
    /// A probability in [0, 1).
    pub(crate) fn dropout(&mut self, key: &str, value: f64) -> &mut Self {
        if !(value.is_finite() && (0.0..1.0).contains(&value)) {
            self.0.push(format!(
                "{key} is a dropout probability and must lie in [0, 1), got {value}"
            ));
        }
        self
    }
    /// A finite positive number.
    pub(crate) fn positive(&mut self, key: &str, value: f64) -> &mut Self {
        if !(value.is_finite() && value > 0.0) {
            self.0
                .push(format!("{key} must be a finite number > 0, got {value}"));
        }
        self
    }
    /// A token id inside the vocabulary.
    pub(crate) fn token(&mut self, key: &str, id: usize, vocab: usize) -> &mut Self {
        if id >= vocab {
            self.0.push(format!(
                "{key} {id} is outside the vocabulary (vocab_size {vocab})"
            ));
        }
        self
    }
    /// Any other problem.
    pub(crate) fn require(&mut self, ok: bool, problem: impl FnOnce() -> String) -> &mut Self {
        if !ok {
            self.0.push(problem());
        }
        self
    }
    /// All problems at once, as one config error.
    pub(crate) fn finish(&mut self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Config(format!(
                "config.json: {}",
                self.0.join("; ")
            )))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use candle_core::Shape;
    use candle_nn::var_builder::SimpleBackend;

    /// `model.safetensors` bytes of f32 tensors.
    pub(crate) fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Vec<u8> {
        use safetensors::tensor::{Dtype, TensorView};
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(name, t)| {
                let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                (name.clone(), t.dims().to_vec(), bytes)
            })
            .collect();
        let views = data.iter().map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap();
            (name.as_str(), view)
        });
        safetensors::tensor::serialize(views, None).unwrap()
    }

    /// A requested tensor: name and shape.
    pub(crate) type Request = (String, Vec<usize>);

    /// Tensors that record which names and shapes a loader requests.
    #[derive(Clone)]
    pub(crate) struct RecordingBackend {
        tensors: Arc<HashMap<String, Tensor>>,
        requested: Arc<Mutex<Vec<Request>>>,
    }

    impl RecordingBackend {
        pub fn new(tensors: HashMap<String, Tensor>) -> Self {
            Self {
                tensors: Arc::new(tensors),
                requested: Arc::default(),
            }
        }

        /// The requested (name, shape) pairs, sorted.
        pub fn requested(&self) -> Vec<Request> {
            let mut r = self.requested.lock().unwrap().clone();
            r.sort();
            r
        }
    }

    impl SimpleBackend for RecordingBackend {
        fn get(
            &self,
            s: Shape,
            name: &str,
            h: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            let dims = s.dims().to_vec();
            self.requested
                .lock()
                .unwrap()
                .push((name.to_string(), dims));
            SimpleBackend::get(self.tensors.as_ref(), s, name, h, dtype, dev)
        }

        fn get_unchecked(
            &self,
            name: &str,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.tensors.as_ref().get_unchecked(name, dtype, dev)
        }

        fn contains_tensor(&self, name: &str) -> bool {
            self.tensors.contains_key(name)
        }
    }

    fn layout() -> Vec<HfTensor> {
        vec![
            HfTensor::new("a.weight", &[3, 2], TensorKind::Weight),
            HfTensor::new("a.bias", &[3], TensorKind::Zeros),
            HfTensor::new("norm.weight", &[2], TensorKind::Ones),
        ]
    }

    #[test]
    fn random_tensors_follow_the_layout() {
        let dev = Device::Cpu;
        let t = random_tensors(&layout(), "p.", 0.5, &mut PetlRng::seed(0), &dev).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t["p.a.weight"].dims(), [3, 2]);
        let ones = t["p.norm.weight"].to_vec1::<f32>().unwrap();
        let zeros = t["p.a.bias"].to_vec1::<f32>().unwrap();
        assert_eq!((ones, zeros), (vec![1.0; 2], vec![0.0; 3]));
        let w = Weights::from_tensors(t, &dev);
        w.validate("p.", &layout()).unwrap();
        // the same tensors under another prefix are all missing
        let e = w.validate("q.", &layout()).unwrap_err().to_string();
        assert!(
            e.contains("missing tensor `q.a.weight` (expected shape [3, 2])")
                && e.contains("and 2 more"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_tensor_and_its_expected_shape() {
        let dev = Device::Cpu;
        let mut t = random_tensors(&layout(), "", 0.5, &mut PetlRng::seed(0), &dev).unwrap();
        t.remove("a.bias");
        let e = Weights::from_tensors(t.clone(), &dev)
            .validate("", &layout())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing tensor `a.bias` (expected shape [3])") && !e.contains("more"),
            "{e}"
        );
        t.insert("a.bias".into(), Tensor::zeros(4, DType::F32, &dev).unwrap());
        let e = Weights::from_tensors(t, &dev)
            .validate("", &layout())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor `a.bias` has shape [4], expected shape [3]"),
            "{e}"
        );
    }

    #[test]
    fn unknown_variants_list_the_supported_ones() {
        type Table = [(Variant, PetlConfig, ()); 0];
        static EMPTY: Table = [];
        let e = find_variant(&EMPTY, Variant::Lora, "Toy", "; none at all")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Toy has no variant `lora` (supported: ; none at all)"),
            "{e}"
        );
    }

    /// The stacked product (`Linear::forward_stacked`: RoBERTa's `[q; k; v]`, T5's self- and
    /// cross-attention stacks) against the parts projected one by one: values and every
    /// gradient with LoRA pairs on two blocks (training), values with folded deltas
    /// (inference), with and without biases, and the `[k; v]` row view of a stack.
    #[test]
    fn stacked_projection_matches_part_by_part() -> Result<()> {
        use propetl_runtime::state::LoraModule;
        use propetl_runtime::LayerPetl;
        let dev = Device::Cpu;
        let mut rng = PetlRng::seed(11);
        let (h, i, r, scale) = (16usize, 8usize, 4usize, 1.5f64);
        let max_diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        for with_bias in [false, true] {
            let part = |rng: &mut PetlRng| -> Result<Linear> {
                Ok(Linear {
                    weight: rng.normal((i, h), 0.3, &dev)?,
                    bias: if with_bias {
                        Some(rng.normal(i, 0.1, &dev)?)
                    } else {
                        None
                    },
                })
            };
            let parts = [part(&mut rng)?, part(&mut rng)?, part(&mut rng)?];
            let (all, views) = Linear::stacked(&parts)?.expect("frozen parts stack");
            let layout = [
                (LoraTarget::Q, 0),
                (LoraTarget::K, i),
                (LoraTarget::V, 2 * i),
            ];
            let var = |rng: &mut PetlRng, shape: (usize, usize)| -> Result<candle_core::Var> {
                Ok(candle_core::Var::from_tensor(
                    &rng.normal(shape, 0.2, &dev)?,
                )?)
            };
            let (aq, bq) = (var(&mut rng, (r, h))?, var(&mut rng, (i, r))?);
            let (av, bv) = (var(&mut rng, (r, h))?, var(&mut rng, (i, r))?);
            let x = candle_core::Var::from_tensor(&rng.normal((2, 3, h), 1.0, &dev)?)?;
            let module = |target, a: &candle_core::Var, b: &candle_core::Var| LoraModule {
                target,
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale,
                merged_weight: None,
            };
            let petl = LayerPetl::Lora(vec![
                module(LoraTarget::Q, &aq, &bq),
                module(LoraTarget::V, &av, &bv),
            ]);
            let stacked = all
                .forward_stacked(&x, Some(&petl), &layout)?
                .expect("one rank and scale share one op");
            let separate = Tensor::cat(
                &[
                    views[0].forward_with_lora(&x, (&aq, &bq, scale))?,
                    views[1].forward(&x)?,
                    views[2].forward_with_lora(&x, (&av, &bv, scale))?,
                ],
                2,
            )?;
            assert!(max_diff(&stacked, &separate)? < 1e-5, "values");
            let weights = rng.normal(stacked.dims(), 1.0, &dev)?;
            let g1 = stacked.mul(&weights)?.sum_all()?.backward()?;
            let g2 = separate.mul(&weights)?.sum_all()?.backward()?;
            for v in [&aq, &bq, &av, &bv, &x] {
                let (a, b) = (g1.get(v).expect("gradient"), g2.get(v).expect("gradient"));
                assert!(max_diff(a, b)? < 1e-4, "gradients");
            }
            // the [k; v] rows of the stack, as T5's cross-attention and cache use them
            let kv = all.rows(i, 2 * i)?;
            let both = kv
                .forward_stacked(&x, Some(&petl), &[(LoraTarget::K, 0), (LoraTarget::V, i)])?
                .expect("one pair");
            assert!(
                max_diff(&both, &separate.narrow(2, i, 2 * i)?)? < 1e-5,
                "kv rows"
            );
            // no PETL: the plain product
            let plain = all.forward_stacked(&x, None, &layout)?.expect("plain");
            assert!(max_diff(&plain, &all.forward(&x)?)? == 0.0);
            // inference: the pairs folded into weight deltas on their row blocks
            let folded = |a: &candle_core::Var, b: &candle_core::Var| b.matmul(a)? * scale;
            let (dq, dv) = (folded(&aq, &bq)?, folded(&av, &bv)?);
            let merged = LayerPetl::Lora(vec![
                LoraModule {
                    merged_weight: Some(dq.clone()),
                    ..module(LoraTarget::Q, &aq, &bq)
                },
                LoraModule {
                    merged_weight: Some(dv.clone()),
                    ..module(LoraTarget::V, &av, &bv)
                },
            ]);
            let inferred = all
                .forward_stacked(&x, Some(&merged), &layout)?
                .expect("folded");
            let separate = Tensor::cat(
                &[
                    views[0].forward_with_delta(&x, &dq)?,
                    views[1].forward(&x)?,
                    views[2].forward_with_delta(&x, &dv)?,
                ],
                2,
            )?;
            assert!(max_diff(&inferred, &separate)? < 1e-5, "folded deltas");
            // pairs of different ranks cannot share one op: the caller projects part by part
            let (a2, b2) = (var(&mut rng, (r + 1, h))?, var(&mut rng, (i, r + 1))?);
            let mixed = LayerPetl::Lora(vec![
                module(LoraTarget::Q, &aq, &bq),
                module(LoraTarget::V, &a2, &b2),
            ]);
            assert!(all.forward_stacked(&x, Some(&mixed), &layout)?.is_none());
        }
        Ok(())
    }
}
