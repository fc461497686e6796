#!/usr/bin/env python3
"""Golden vectors for multi-task ProPETL-T5 with the `and` and `add` mask combinations.

The shipped fixtures (`../shared/fixtures/t5-pro_adapter-s0`) cover only `or`. This script
makes the other two with the same independent PyTorch implementation
(`../shared/torch_bench/propetl_ref.py`, `T5Pro`) and the same file layout
(`../shared/fixtures/FORMAT.md`), so `propetl parity` can check every combination.

It first regenerates the shipped `or` fixture from its own params and inputs and stops unless
every output, gradient, mask and optimizer step agrees within the fixtures' tolerance (1e-5 relative), so the generator is
checked against the independent one before it writes anything.

    pip install torch transformers safetensors   # not a CI dependency: the outputs are committed
    python3 scripts/make-t5-combine-fixtures.py  # writes tests/fixtures/t5-pro_adapter-{and,add}-s0

Run from the repository root with ../shared beside it.
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
sys.path.insert(0, os.path.join(SHARED, "torch_bench"))
import propetl_ref as ref  # noqa: E402

SOURCE = os.path.join(SHARED, "fixtures", "t5-pro_adapter-s0")
OUT = os.path.join(ROOT, "tests", "fixtures")


def run(settings, params, inputs, combine, tasks, task, dtype=torch.float32):
    """Forward, loss, backward and one AdamW step; every tensor the fixture format holds."""
    torch.manual_seed(0)
    _, backbone = ref.load_backbone(os.path.join(SOURCE, "ckpt"), dtype)
    p = settings["propetl"]
    cfg = ref.ProConfig(
        variant="adapter",
        shared=True,
        density=p["density"],
        reduction_factor=p["reduction_factor"],
        adapter_act=p["adapter_act"],
        tasks=tasks,
        layer_masks=True,
        combine=combine,
    )
    model = ref.T5Pro(backbone, cfg, seed=settings["seed"]).eval().to(dtype)
    if params is None:  # fresh params: the reference init, then the shipped perturbation
        gen = torch.Generator().manual_seed(settings["seed"] + 1)
        with torch.no_grad():
            for n, t in model.named_petl():
                if n.startswith("adapter."):
                    t.add_(torch.randn(t.shape, generator=gen) * settings["perturb_std"])
        params = {n: t.detach().clone() for n, t in model.named_petl()}
    else:
        with torch.no_grad():
            for n, t in model.named_petl():
                t.copy_(params[n].to(dtype))
    x = {k: v for k, v in inputs.items()}
    logits, loss = model(
        x["input_ids"], x["attention_mask"], x["decoder_input_ids"], task=task,
        labels=x["labels"], record_masks=True,
    )
    masks = {k: v.detach().clone() for k, v in model._masks.items()}
    loss.backward()
    grads = {
        n: (t.grad.detach().clone() if t.grad is not None else torch.zeros_like(t))
        for n, t in model.named_petl()
    }
    o = settings["optimizer_step"]
    groups = []
    named = dict(model.named_petl())
    group_names = {}
    for g, spec in o["groups"].items():
        if g == "mask":
            names = [n for n in named if n.startswith("mask.")]
        elif g == "decay":
            names = [n for n in named if n.startswith("adapter.") and n.endswith("weight")]
        else:
            names = [n for n in named if n.startswith("adapter.") and n.endswith("bias")]
        group_names[g] = names
        groups.append({"params": [named[n] for n in names], "lr": spec["lr"], "weight_decay": spec["weight_decay"]})
    opt = torch.optim.AdamW(groups, betas=tuple(o["betas"]), eps=o["eps"])
    opt.step()
    step1 = {n: t.detach().clone() for n, t in model.named_petl()}
    with torch.no_grad():
        _, loss_after = model(
            x["input_ids"], x["attention_mask"], x["decoder_input_ids"], task=task, labels=x["labels"]
        )
    outputs = {"logits": logits.detach(), "loss": loss.detach().reshape(1), "loss_after_step": loss_after.reshape(1)}
    return params, outputs, grads, masks, step1, group_names, model.storage()


def rel(a, b):
    scale = b.abs().max().item() or 1.0
    return (a.double() - b.double()).abs().max().item() / scale


def main():
    settings = json.load(open(os.path.join(SOURCE, "settings.json")))
    inputs = load_file(os.path.join(SOURCE, "inputs.safetensors"))
    p = settings["propetl"]

    # 1. the generator reproduces the independent `or` fixture
    shipped = {f: load_file(os.path.join(SOURCE, f + ".safetensors")) for f in ("params", "outputs", "grads", "masks", "step1")}
    _, outputs, grads, masks, step1, _, _ = run(settings, shipped["params"], inputs, "or", p["tasks"], settings["task"])
    worst = 0.0
    for name, ours in [("outputs", outputs), ("grads", grads), ("step1", step1), ("masks", masks)]:
        for k, v in shipped[name].items():
            worst = max(worst, rel(ours[k], v))
    if worst > 1e-5:  # the fixtures' own tolerance (float32 reductions differ in order)
        sys.exit(f"the generator does not reproduce the shipped `or` fixture (max rel err {worst:.3g})")
    print(f"regenerated the shipped `or` fixture: max rel err {worst:.3g}")

    # 2. `and` and `add`, each with its own task list (parity accepts any)
    for combine, tasks, task in [("and", ["mnli", "qqp"], "qqp"), ("add", ["cola", "stsb", "rte", "qnli"], "stsb")]:
        params, outputs, grads, masks, step1, group_names, storage = run(settings, None, inputs, combine, tasks, task)
        # the fixture's own conditioning (FORMAT.md): the same params and inputs in float64
        _, out64, grads64, _, _, _, _ = run(settings, params, inputs, combine, tasks, task, torch.float64)
        conditioning = {
            "logits": rel(outputs["logits"].double(), out64["logits"]),
            "loss": rel(outputs["loss"].double(), out64["loss"]),
            "grads_max": max(rel(grads[n].double(), grads64[n]) for n in grads if grads64[n].abs().max() > 0),
        }
        dest = os.path.join(OUT, f"t5-pro_adapter-{combine}-s0")
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.makedirs(dest)
        s = json.loads(json.dumps(settings))
        s["generator"] += " (scripts/make-t5-combine-fixtures.py over ../shared/torch_bench/propetl_ref.py)"
        s["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
        s["checkpoint"]["dir"] = "../t5-pro_adapter-s0/ckpt"
        s["checkpoint"]["source"] = "../t5-pro_adapter-s0/ckpt (the tiny-t5 copy of the shipped fixture)"
        s["propetl"].update({"tasks": tasks, "combine": combine,
                             "adapter_init": "N(0, 0.01) weights, zero biases, then + N(0, perturb_std) noise (generator seed + 1)"})
        s["task"] = task
        s["params"] = {n: {"shape": list(t.shape), "role": "mask_scores" if n.startswith("mask.") else "prototype"} for n, t in params.items()}
        s["masks"] = {n: list(t.shape) for n, t in masks.items()}
        for g, names in group_names.items():
            s["optimizer_step"]["groups"][g]["names"] = names
        s["storage"] = storage
        s["checks"] = {"regenerated_or_fixture_max_rel": worst, "fp32_vs_fp64_rel": conditioning}
        sem = s["semantics"]
        how = {"and": "m(task t) * m(layer s) ('and')", "add": "m(task t) + m(layer s) ('add', values 0, 1, 2)"}[combine]
        s["semantics"] = [x if not x.startswith("mask for (task t, site s)") else
                          f"mask for (task t, site s) = {how}; m(x) = binarize(x). Mask scores have the weight's layout." for x in sem]
        json.dump(s, open(os.path.join(dest, "settings.json"), "w"), indent=2)
        save_file({k: v.contiguous() for k, v in params.items()}, os.path.join(dest, "params.safetensors"))
        save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(dest, "inputs.safetensors"))
        save_file({k: v.contiguous() for k, v in outputs.items()}, os.path.join(dest, "outputs.safetensors"))
        save_file({k: v.contiguous() for k, v in grads.items()}, os.path.join(dest, "grads.safetensors"))
        save_file({k: v.contiguous() for k, v in masks.items()}, os.path.join(dest, "masks.safetensors"))
        save_file({k: v.contiguous() for k, v in step1.items()}, os.path.join(dest, "step1.safetensors"))
        print(f"wrote {dest}: loss {outputs['loss'].item():.6f} -> {outputs['loss_after_step'].item():.6f}")


if __name__ == "__main__":
    main()
