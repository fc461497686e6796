//! The real pretrained all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) loads from its Hugging Face
//! files and gives the sentence similarities of the original model. The files are fetched by
//! `scripts/fetch-assets.sh` (run by `scripts/test.sh` and CI); tests never download.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use propetl::models::roberta::{self, mean_pool_normalized, Checkpoint, FrozenEncoder};
use propetl::runtime::{Batch, ForwardMode, NumericOverrides, PetlRng, TaskKind, Variant};

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets.sh first",
        dir.display()
    );
    dir
}

fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    a.mul(b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn minilm_sentence_similarities_match_the_original() {
    let ckpt = Checkpoint::open(model_dir(), &Device::Cpu).unwrap();
    assert_eq!(ckpt.prefix, "");
    assert_eq!(ckpt.config.model_type, "bert");
    let tok = ckpt.tokenizer().unwrap();
    let first = tok.encode("A man is eating food.").unwrap();
    assert_eq!(first, vec![101, 1037, 2158, 2003, 5983, 2833, 1012, 102]);
    let texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market crashed today.",
    ];
    let (ids, mask) = tok.encode_batch(&texts, 128).unwrap();
    let enc = FrozenEncoder::from_checkpoint(&ckpt).unwrap();
    let emb = mean_pool_normalized(&enc.hidden(&ids, &mask).unwrap(), &mask).unwrap();
    let (a, b, c) = (
        emb.get(0).unwrap(),
        emb.get(1).unwrap(),
        emb.get(2).unwrap(),
    );
    let close = cosine(&a, &b);
    let far = cosine(&a, &c);
    assert!((close - 0.755).abs() < 0.01, "cos(food, bread) = {close}");
    assert!((far - 0.009).abs() < 0.02, "cos(food, stocks) = {far}");
    // a single sentence, unpadded, embeds the same as inside the padded batch
    let (ids1, mask1) = tok.encode_batch(&texts[..1], 128).unwrap();
    let alone = mean_pool_normalized(&enc.hidden(&ids1, &mask1).unwrap(), &mask1)
        .unwrap()
        .get(0)
        .unwrap();
    assert!((cosine(&alone, &a) - 1.0).abs() < 1e-5);
}

#[test]
fn every_variant_builds_on_minilm_and_starts_near_the_backbone() {
    let ckpt = Checkpoint::open(model_dir(), &Device::Cpu).unwrap();
    let tok = ckpt.tokenizer().unwrap();
    let (ids, mask) = tok.encode_batch(&["A man is eating food."], 32).unwrap();
    let frozen = FrozenEncoder::from_checkpoint(&ckpt)
        .unwrap()
        .hidden(&ids, &mask)
        .unwrap();
    for v in Variant::ALL {
        let varmap = VarMap::new();
        let model = roberta::build(
            v,
            &ckpt,
            TaskKind::Classification { num_labels: 2 },
            &NumericOverrides::default(),
            &varmap,
            &mut PetlRng::seed(1),
        )
        .unwrap();
        let batch = Batch {
            input_ids: ids.clone(),
            attention_mask: mask.clone(),
            labels: Tensor::new(&[1i64], &Device::Cpu).unwrap(),
            decoder_input_ids: None,
            task: "default".into(),
        };
        let hidden = model.hidden_states(&batch).unwrap();
        let logits = model.logits(&batch, &mut ForwardMode::Eval).unwrap();
        assert_eq!(logits.dims(), &[1, 2]);
        assert_eq!(hidden.dims(), frozen.dims());
        let storage = model.storage().unwrap();
        if v.is_full() {
            // the whole backbone but the unused pooler (384² + 384 of 22.7M)
            assert!(
                (99.0..100.0).contains(&storage.percent_of_backbone),
                "{}",
                storage.to_table()
            );
        } else {
            assert!(
                storage.percent_of_backbone < 5.0,
                "{v:?}: {}",
                storage.to_table()
            );
        }
        // LoRA starts exactly at the backbone (B = 0), full fine-tuning is the backbone
        // (through the differentiable LayerNorm instead of the fused frozen one)
        if matches!(v, Variant::ProLora | Variant::Lora | Variant::Full) {
            let d = hidden
                .sub(&frozen)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // full: other kernels (matmul + composed LayerNorm), the same function
            let tolerance = if v.is_full() { 1e-4 } else { 0.0 };
            assert!(d <= tolerance, "{v:?}: {d}");
        }
    }
}

#[test]
fn loading_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    // a config of another architecture is refused clearly
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "t5", "d_model": 64}"#,
    )
    .unwrap();
    let e = Checkpoint::open(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported model_type `t5`"), "{e}");
    // a T5 checkpoint with a BERT config: no BERT weights
    std::fs::write(
        dir.path().join("config.json"),
        std::fs::read(model_dir().join("config.json")).unwrap(),
    )
    .unwrap();
    let t5 = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-roberta/model.safetensors");
    std::fs::copy(&t5, dir.path().join("model.safetensors")).unwrap();
    // tiny-roberta weights under a MiniLM config: the shapes disagree, the error names the tensor
    // (checked up front, before anything is built)
    let e = Checkpoint::open(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("embeddings.word_embeddings.weight") && e.contains("[30522, 384]"),
        "{e}"
    );
    // a missing weight file
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = Checkpoint::open(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // malformed JSON
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let e = Checkpoint::open(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("malformed config.json"), "{e}");
}
