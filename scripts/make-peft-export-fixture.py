#!/usr/bin/env python3
"""Write tests/fixtures/peft-export/expected_logits.json: what PEFT and transformers compute
on `propetl export` folders of two deterministic runs.

For each run configuration in tests/fixtures/peft-export/ (pro_lora.toml, lora.toml) this
script trains the run with the `propetl` binary on the tiny RoBERTa of
tests/fixtures/tiny-roberta and the GLUE fixture data, exports it with `--format peft` and
`--format merged`, then
  - loads the PEFT folder with `PeftModel.from_pretrained` on transformers'
    `RobertaForSequenceClassification` of the base checkpoint,
  - loads the merged folder with `RobertaForSequenceClassification.from_pretrained`
    (no missing or unexpected keys allowed),
and records the logits of a few fixed inputs from both (they must agree to 1e-4).
The run folders themselves (without their resume checkpoint) are kept in
tests/fixtures/peft-export/runs/<variant>/, so tests/export.rs exports and predicts from the
very runs these logits came from (a change to training numerics, or a CPU that rounds
differently, cannot move them). Run once after a change to the export layout or the run
directory format:

    pip install torch transformers peft
    python3 scripts/make-peft-export-fixture.py [--propetl target/debug/propetl]

The tests never need Python: only the JSON is committed.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "peft-export")
BASE = os.path.join(ROOT, "tests", "fixtures", "tiny-roberta")
GLUE = os.path.join(ROOT, "tests", "fixtures", "glue")
VARIANTS = ["pro_lora", "lora"]
INPUTS = [
    "a warm and lovely film",
    "the plot is awful and the story is cold",
    "superb",
    "it was quite bad , very poor and sad",
    "movie story plot film",
]


def sh(cmd):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)


def propetl_cmd(args):
    if args.propetl:
        return [args.propetl]
    sh(["cargo", "build", "-q", "-p", "propetl-cli"])
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return [os.path.join(target, "debug", "propetl")]


def logits_of(model, ids):
    model.eval()
    out = []
    with torch.no_grad():
        for seq in ids:
            x = torch.tensor([seq])
            out.append(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].tolist())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--propetl", help="the propetl binary (default: cargo build -p propetl-cli)")
    args = ap.parse_args()

    import peft
    import tokenizers
    import transformers
    from peft import PeftModel
    from transformers import RobertaForSequenceClassification

    torch.manual_seed(0)
    propetl = propetl_cmd(args)
    tok = tokenizers.Tokenizer.from_file(os.path.join(BASE, "tokenizer.json"))
    ids = [tok.encode(t).ids for t in INPUTS]
    result = {
        "about": "logits of PEFT (adapter folder on the base checkpoint) and transformers "
        "(merged folder) on `propetl export` folders of the runs in this folder; written by "
        "scripts/make-peft-export-fixture.py, checked by tests/export.rs",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "base_model": "tests/fixtures/tiny-roberta",
        "inputs": INPUTS,
        "input_ids": ids,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            run = os.path.join(tmp, f"run-{variant}")
            peft_dir = os.path.join(tmp, f"peft-{variant}")
            merged_dir = os.path.join(tmp, f"merged-{variant}")
            # paths relative to the repository root, as the tests resolve them
            sh(propetl + ["train", "--config", os.path.relpath(os.path.join(FIXTURE, f"{variant}.toml"), ROOT),
                          "--model-dir", os.path.relpath(BASE, ROOT), "--data-dir", os.path.relpath(GLUE, ROOT),
                          "--out", run, "--quiet"])
            keep = os.path.join(FIXTURE, "runs", variant)
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(run, keep, ignore=shutil.ignore_patterns("checkpoint.safetensors", ".lock"))
            sh(propetl + ["export", run, "--format", "peft", "--out", peft_dir])
            sh(propetl + ["export", run, "--format", "merged", "--out", merged_dir])

            cfg = json.load(open(os.path.join(peft_dir, "adapter_config.json")))
            assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS", cfg
            kind = json.load(open(os.path.join(run, "task.json")))["kind"]
            num_labels = kind.get("num_labels", 1)
            base = RobertaForSequenceClassification.from_pretrained(BASE, num_labels=num_labels)
            model = PeftModel.from_pretrained(base, peft_dir)
            peft_logits = logits_of(model, ids)
            # the same with every LoRA update scaled to 0 (base + trained head): how much the
            # exported factors matter, so the test's tolerance means something
            for module in model.modules():
                if isinstance(getattr(module, "scaling", None), dict):
                    module.scaling["default"] = 0.0
            without_lora = logits_of(model, ids)
            # every tensor of the folder landed in the model
            sd = model.state_dict()
            from safetensors.torch import load_file
            saved = load_file(os.path.join(peft_dir, "adapter_model.safetensors"))
            for k, v in saved.items():
                if ".lora_" in k:
                    key = k.replace(".weight", ".default.weight")
                else:  # classifier: modules_to_save
                    key = k.replace("classifier.", "classifier.modules_to_save.default.")
                assert torch.equal(sd[key], v), k

            merged, info = RobertaForSequenceClassification.from_pretrained(
                merged_dir, output_loading_info=True)
            assert not info["missing_keys"] and not info["unexpected_keys"], info
            assert not info.get("mismatched_keys"), info
            merged_logits = logits_of(merged, ids)

            diff = max(abs(a - b) for x, y in zip(peft_logits, merged_logits) for a, b in zip(x, y))
            assert diff < 1e-4, f"{variant}: PEFT vs merged logits differ by {diff}"
            print(f"{variant}: PEFT vs merged max |diff| {diff:.2e}", file=sys.stderr)
            result["runs"][variant] = {
                "config": f"{variant}.toml",
                "peft_logits": peft_logits,
                "merged_logits": merged_logits,
                "without_lora_logits": without_lora,
                "peft_vs_merged_max_abs_diff": diff,
            }
    path = os.path.join(FIXTURE, "expected_logits.json")
    text = json.dumps(result, indent=1)
    # one line per row of numbers
    text = re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    with open(path, "w") as f:
        f.write(text + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
