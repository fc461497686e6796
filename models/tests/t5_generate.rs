//! T5 generation: parity with Hugging Face transformers' `generate` on a tiny checkpoint with
//! large random weights (`tests/fixtures/t5-generate`, made by its `make_expected.py`), the
//! key/value cache against recomputing the decoder, beam search with one beam against greedy,
//! batched against one input at a time, EOS handling, PETL variants through `Seq2Seq`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use propetl_models::t5::{
    build, hf_tensors, until_eos, EarlyStopping, GenerationConfig, Seq2Seq, T5Checkpoint, T5Config,
    T5Plain, T5ProAdapter,
};
use propetl_models::TensorKind;
use propetl_runtime::{NumericOverrides, PetlRng, ProPetlModel, Variant};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/t5-generate")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_of(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// `(input_ids, attention_mask)` of rows padded on the right with 0.
fn batch(rows: &[Vec<u32>]) -> (Tensor, Tensor) {
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let longest = refs.iter().map(|r| r.len()).max().unwrap();
    propetl_runtime::task::pad_batch(&refs, longest, 0, &Device::Cpu).unwrap()
}

fn fixture_model() -> T5Plain {
    let ckpt = T5Checkpoint::open(fixture_dir(), &Device::Cpu).unwrap();
    T5Plain::from_checkpoint(&ckpt).unwrap()
}

fn fixture_inputs() -> Vec<Vec<u32>> {
    ids_of(&expected()["input_ids"])
}

/// A checkpoint with large random weights built here (another shape than the fixture: more
/// decoder than encoder blocks, 300 ids, a decoder start token other than pad).
fn random_large(seed: u64) -> T5Checkpoint {
    let config = T5Config::from_json(
        r#"{"model_type": "t5", "vocab_size": 300, "d_model": 48, "d_kv": 12, "d_ff": 96,
            "num_layers": 2, "num_decoder_layers": 3, "num_heads": 4,
            "relative_attention_num_buckets": 16, "relative_attention_max_distance": 24,
            "decoder_start_token_id": 2}"#,
    )
    .unwrap();
    let mut rng = PetlRng::seed(seed);
    let dev = Device::Cpu;
    let tensors: HashMap<String, Tensor> = hf_tensors(&config)
        .into_iter()
        .map(|t| {
            let v = match t.kind {
                TensorKind::Ones => Tensor::ones(t.shape.as_slice(), candle_core::DType::F32, &dev),
                _ => {
                    let std = if t.name == "shared.weight" {
                        1.0
                    } else if t.name.contains("relative_attention_bias") {
                        2.0
                    } else {
                        0.3
                    };
                    rng.normal(t.shape.as_slice(), std, &dev)
                }
            };
            (t.name, v.unwrap())
        })
        .collect();
    T5Checkpoint::from_tensors(config, tensors, &dev).unwrap()
}

/// Inputs of different lengths for the 300-id checkpoint (each ends with EOS 1).
fn random_inputs() -> Vec<Vec<u32>> {
    vec![
        vec![17, 250, 33, 4, 98, 160, 1],
        vec![200, 5, 1],
        vec![9, 9, 120, 121, 122, 45, 77, 280, 13, 56, 1],
        vec![64, 1],
    ]
}

fn config_of(kwargs: &Value) -> GenerationConfig {
    let mut cfg = GenerationConfig::greedy(kwargs["max_new_tokens"].as_u64().unwrap() as usize);
    if let Some(k) = kwargs.get("num_beams") {
        cfg.num_beams = k.as_u64().unwrap() as usize;
    }
    if let Some(lp) = kwargs.get("length_penalty") {
        cfg.length_penalty = lp.as_f64().unwrap();
    }
    cfg.early_stopping = match kwargs.get("early_stopping") {
        None | Some(Value::Bool(false)) => EarlyStopping::Heuristic,
        Some(Value::Bool(true)) => EarlyStopping::Always,
        Some(Value::String(s)) if s == "never" => EarlyStopping::Never,
        Some(other) => panic!("early_stopping {other}"),
    };
    cfg
}

fn trimmed(rows: &[Vec<u32>], eos: u32) -> Vec<Vec<u32>> {
    rows.iter().map(|r| until_eos(r, eos).to_vec()).collect()
}

#[test]
fn greedy_and_beam_search_match_transformers() {
    let model = fixture_model();
    let exp = expected();
    let (ids, mask) = batch(&fixture_inputs());
    let cases = exp["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg = config_of(&case["kwargs"]);
        let want = ids_of(&case["ids"]);
        let got = model.generate(&ids, &mask, &cfg).unwrap();
        if cfg.num_beams == 1 {
            // greedy: exactly transformers' rows, finished rows padded with pad
            assert_eq!(got, want, "{name}");
        } else {
            // beam: transformers fills beam rows with EOS when pad is 0 (the fixture is cut
            // after the first EOS); ours are filled with pad
            assert_eq!(trimmed(&got, 1), want, "{name}");
            for row in &got {
                let n = until_eos(row, 1).len();
                assert!(row[n..].iter().all(|&t| t == 0), "{name}: {row:?}");
            }
            assert_eq!(
                got[0].len(),
                want.iter().map(Vec::len).max().unwrap(),
                "{name}: width"
            );
        }
    }
}

#[test]
fn outputs_vary_from_input_to_input_and_step_to_step() {
    let exp = expected();
    let greedy = ids_of(&exp["cases"][0]["ids"]);
    let model = fixture_model();
    let (ids, mask) = batch(&fixture_inputs());
    let got = model
        .generate(&ids, &mask, &GenerationConfig::greedy(24))
        .unwrap();
    assert_eq!(got, greedy);
    let random = T5Plain::from_checkpoint(&random_large(3)).unwrap();
    let (rids, rmask) = batch(&random_inputs());
    let rgot = random
        .generate(&rids, &rmask, &GenerationConfig::greedy(16))
        .unwrap();
    for rows in [&got, &rgot] {
        let firsts: std::collections::HashSet<&[u32]> =
            rows.iter().map(|r| &r[..3.min(r.len())]).collect();
        assert!(firsts.len() >= 3, "inputs give the same start: {rows:?}");
        let distinct = |r: &Vec<u32>| r.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(
            rows.iter().any(|r| distinct(r) >= 6),
            "no row varies from step to step: {rows:?}"
        );
        assert!(
            rows.iter().all(|r| r.iter().any(|&t| t != 0)),
            "a row is only padding: {rows:?}"
        );
    }
}

/// Greedy and beam search give exactly the same tokens with the key/value cache as when the
/// decoder is recomputed over all tokens every step.
#[test]
fn the_cache_gives_the_tokens_of_recomputing() {
    let fixture = fixture_model();
    let random = T5Plain::from_checkpoint(&random_large(5)).unwrap();
    for (model, inputs) in [(&fixture, fixture_inputs()), (&random, random_inputs())] {
        let (ids, mask) = batch(&inputs);
        for mut cfg in [
            GenerationConfig::greedy(20),
            GenerationConfig::beams(3, 20),
            GenerationConfig {
                length_penalty: 0.6,
                ..GenerationConfig::beams(4, 12)
            },
            GenerationConfig {
                early_stopping: EarlyStopping::Always,
                ..GenerationConfig::beams(2, 12)
            },
        ] {
            let cached = model.generate(&ids, &mask, &cfg).unwrap();
            cfg.use_cache = false;
            let recomputed = model.generate(&ids, &mask, &cfg).unwrap();
            assert_eq!(cached, recomputed, "{cfg:?}");
            assert_eq!(cached.len(), inputs.len());
        }
    }
}

#[test]
fn one_beam_is_greedy() {
    let fixture = fixture_model();
    let random = T5Plain::from_checkpoint(&random_large(7)).unwrap();
    for (model, inputs) in [(&fixture, fixture_inputs()), (&random, random_inputs())] {
        let (ids, mask) = batch(&inputs);
        let g = model.generator();
        for max in [1, 5, 24] {
            let cfg = GenerationConfig::beams(1, max);
            let greedy = g.greedy(&ids, &mask, &cfg).unwrap();
            assert_eq!(g.beam_search(&ids, &mask, &cfg).unwrap(), greedy, "{max}");
            // generate with one beam is greedy search
            assert_eq!(model.generate(&ids, &mask, &cfg).unwrap(), greedy);
        }
    }
}

#[test]
fn batched_is_one_at_a_time() {
    let fixture = fixture_model();
    let random = T5Plain::from_checkpoint(&random_large(11)).unwrap();
    for (model, inputs) in [(&fixture, fixture_inputs()), (&random, random_inputs())] {
        let (ids, mask) = batch(&inputs);
        for cfg in [GenerationConfig::greedy(20), GenerationConfig::beams(3, 16)] {
            let batched = model.generate(&ids, &mask, &cfg).unwrap();
            for (i, input) in inputs.iter().enumerate() {
                let (one, one_mask) = batch(std::slice::from_ref(input));
                let alone = model.generate(&one, &one_mask, &cfg).unwrap();
                assert_eq!(alone.len(), 1);
                assert_eq!(
                    until_eos(&alone[0], 1),
                    until_eos(&batched[i], 1),
                    "{cfg:?} row {i}"
                );
            }
        }
    }
}

/// A row stops at its first EOS; every later position of it is pad; the batch stops when all
/// rows are finished (EOS here: a token the unconstrained greedy output emits mid-way).
#[test]
fn eos_stops_a_row_and_later_positions_are_pad() {
    let model = T5Plain::from_checkpoint(&random_large(3)).unwrap();
    let inputs = random_inputs();
    let (ids, mask) = batch(&inputs);
    let free = GenerationConfig {
        eos_token_id: Some(299),
        ..GenerationConfig::greedy(16)
    };
    let unconstrained = model.generate(&ids, &mask, &free).unwrap();
    assert!(unconstrained
        .iter()
        .all(|r| r.len() == 16 && !r.contains(&299)));
    // a token of row 0 at step 2 that it did not emit before
    let row0 = &unconstrained[0];
    let step = (2..row0.len())
        .find(|&s| !row0[..s].contains(&row0[s]))
        .expect("row 0 repeats one token");
    let eos = row0[step];
    for pad in [0u32, 7] {
        let cfg = GenerationConfig {
            eos_token_id: Some(eos),
            pad_token_id: Some(pad),
            ..GenerationConfig::greedy(16)
        };
        let got = model.generate(&ids, &mask, &cfg).unwrap();
        let ends: Vec<usize> = unconstrained
            .iter()
            .map(|r| until_eos(r, eos).len())
            .collect();
        let width = *ends.iter().max().unwrap();
        for ((row, free_row), &end) in got.iter().zip(&unconstrained).zip(&ends) {
            assert_eq!(row.len(), width);
            assert_eq!(&row[..end], &free_row[..end]);
            assert!(row[end..].iter().all(|&t| t == pad), "{row:?}");
        }
        assert_eq!(ends[0], step + 1);
        assert_eq!(got[0][step], eos);
    }
    // the fixture stops rows at transformers' EOS (1) naturally
    let fixture = fixture_model();
    let (ids, mask) = batch(&fixture_inputs());
    let got = fixture
        .generate(&ids, &mask, &GenerationConfig::greedy(24))
        .unwrap();
    let finished: Vec<&Vec<u32>> = got.iter().filter(|r| r.contains(&1)).collect();
    assert!(finished.len() >= 2 && finished.len() < got.len());
    for r in finished {
        let n = until_eos(r, 1).len();
        assert!(n < r.len() && r[n..].iter().all(|&t| t == 0));
    }
}

/// Generation through `Seq2Seq` with a PETL state: the task's adapter changes the output; the
/// cache, beam search and batching hold there too; an unknown task is an error.
#[test]
fn petl_variants_generate_through_seq2seq() {
    let ckpt = T5Checkpoint::open(fixture_dir(), &Device::Cpu).unwrap();
    let plain = T5Plain::from_checkpoint(&ckpt).unwrap();
    let model = T5ProAdapter::from_checkpoint(
        &ckpt,
        &["a", "b"],
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(1),
    )
    .unwrap();
    // large adapter weights so that the adapter matters
    let mut rng = PetlRng::seed(2);
    for (_, var) in model.petl().prototype_vars() {
        var.set(&rng.normal(var.dims(), 0.5, &Device::Cpu).unwrap())
            .unwrap();
    }
    let inputs = fixture_inputs();
    let (ids, mask) = batch(&inputs);
    let greedy = GenerationConfig::greedy(16);
    let base = plain.generate(&ids, &mask, &greedy).unwrap();
    let a = model.generate(&ids, &mask, "a", &greedy).unwrap();
    let b = model.generate(&ids, &mask, "b", &greedy).unwrap();
    assert_ne!(a, base, "the adapter does not change the output");
    assert!(a != b || a != base);
    let no_cache = GenerationConfig {
        use_cache: false,
        ..greedy.clone()
    };
    assert_eq!(model.generate(&ids, &mask, "a", &no_cache).unwrap(), a);
    let beams = GenerationConfig::beams(3, 12);
    let beamed = model.generate(&ids, &mask, "a", &beams).unwrap();
    let beamed_no_cache = model
        .generate(
            &ids,
            &mask,
            "a",
            &GenerationConfig {
                use_cache: false,
                ..beams.clone()
            },
        )
        .unwrap();
    assert_eq!(beamed, beamed_no_cache);
    let g = model.generator("a").unwrap();
    for (i, input) in inputs.iter().enumerate() {
        let (one, one_mask) = batch(std::slice::from_ref(input));
        assert_eq!(
            until_eos(&g.generate(&one, &one_mask, &greedy).unwrap()[0], 1),
            until_eos(&a[i], 1)
        );
    }
    let e = model
        .generate(&ids, &mask, "nope", &greedy)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    // the variant table's boxed models generate too
    let boxed = build(
        Variant::Adapter,
        &ckpt,
        &["x"],
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(3),
    )
    .unwrap();
    let out = boxed.generate(&ids, &mask, "x", &greedy).unwrap();
    assert_eq!(out.len(), inputs.len());
}

#[test]
fn edge_cases_and_errors() {
    let model = fixture_model();
    let (ids, mask) = batch(&fixture_inputs());
    for cfg in [GenerationConfig::greedy(0), GenerationConfig::beams(3, 0)] {
        assert_eq!(
            model.generate(&ids, &mask, &cfg).unwrap(),
            vec![Vec::<u32>::new(); 4]
        );
    }
    let one_step = model
        .generate(&ids, &mask, &GenerationConfig::greedy(1))
        .unwrap();
    assert!(one_step.iter().all(|r| r.len() == 1));
    let empty = Tensor::zeros((0, 3), candle_core::DType::U32, &Device::Cpu).unwrap();
    assert!(model
        .generate(&empty, &empty, &GenerationConfig::greedy(5))
        .unwrap()
        .is_empty());
    let bad_beams = GenerationConfig {
        num_beams: 0,
        ..GenerationConfig::greedy(5)
    };
    assert!(model.generate(&ids, &mask, &bad_beams).is_err());
    let bad_eos = GenerationConfig {
        eos_token_id: Some(5000),
        ..GenerationConfig::greedy(5)
    };
    let e = model
        .generate(&ids, &mask, &bad_eos)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eos_token_id 5000"), "{e}");
    let short_mask = mask.narrow(1, 0, 3).unwrap();
    assert!(model
        .generate(&ids, &short_mask, &GenerationConfig::greedy(5))
        .is_err());
    // a config.json without eos / decoder start: T5's defaults
    let c = T5Config::from_json(
        r#"{"model_type": "t5", "vocab_size": 40, "d_model": 8, "d_kv": 2, "d_ff": 8,
            "num_layers": 1, "num_heads": 4, "pad_token_id": 3}"#,
    )
    .unwrap();
    assert_eq!((c.eos_token_id, c.decoder_start()), (1, 3));
    let c = T5Config::from_json(
        r#"{"model_type": "t5", "vocab_size": 40, "d_model": 8, "d_kv": 2, "d_ff": 8,
            "num_layers": 1, "num_heads": 4, "eos_token_id": [2, 5], "decoder_start_token_id": 4}"#,
    )
    .unwrap();
    assert_eq!((c.eos_token_id, c.decoder_start()), (2, 4));
    let e = T5Config::from_json(
        r#"{"model_type": "t5", "vocab_size": 40, "d_model": 8, "d_kv": 2, "d_ff": 8,
            "num_layers": 1, "num_heads": 4, "eos_token_id": 40}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("eos_token_id 40"), "{e}");
}
