#!/usr/bin/python3
"""Golden layer-wise lr decay for tests/test_param_groups.cpp: a Python transcription of timm's
documented rule (timm.optim.optim_factory.param_groups_layer_decay with
timm.models.helpers.group_with_matcher and VisionTransformer.group_matcher(coarse=False)),
applied to ViT-shaped parameter lists. No timm import: the rule is written out below.

Run with the system interpreter:  /usr/bin/python3 tests/golden/layer_decay_golden.py
It writes tests/golden/layer_decay.json: per case the parameters (name, shape), the frozen ones,
the rate, base lr and weight decay, and per trainable parameter its (layer id, lr, weight decay).

timm's rule:
- group_matcher: stem = r'^cls_token|pos_embed|patch_embed' -> ordinal (0,); blocks =
  r'^blocks\\.(\\d+)' -> (1, k); r'^norm' -> (1, 99999); anything else (the head) -> (inf,).
  The distinct ordinals present, sorted, are numbered 0, 1, 2, ...: the layer ids.
- num_layers = max id + 1; scale of id i = layer_decay ** (num_layers - 1 - i);
  lr = base_lr * scale (timm's scheduler multiplies each group's lr by its 'lr_scale').
- weight decay 0 when param.ndim == 1 or the name is in no_weight_decay_list (ViT's
  no_weight_decay(): pos_embed, cls_token, dist_token), else weight_decay.
- Frozen parameters are skipped. torchkit leaves them out *before* the ids are counted (the
  issue's rule: a fully frozen block gets no id and the ids after it close up); this
  transcription does the same by giving timm's matcher the trainable parameters only.
"""
import json
import math
import os
import re


MATCHER = [
    (re.compile(r'^cls_token|pos_embed|patch_embed'), (0,), None),
    (re.compile(r'^blocks\.(\d+)'), (1,), None),
    (re.compile(r'^norm'), (1,), (99999,)),
]
NO_WEIGHT_DECAY = {"pos_embed", "cls_token", "dist_token"}


def grouping(name):
    for match_fn, prefix, suffix in MATCHER:
        r = match_fn.match(name)
        if r:
            parts = [prefix, r.groups(), suffix]
            return tuple(float(x) for part in parts if part for x in part)
    return (float("inf"),)


def layer_map(names):
    groups = {}
    for name in names:
        groups.setdefault(grouping(name), []).append(name)
    result = {}
    for lid, key in enumerate(sorted(groups)):
        for name in groups[key]:
            result[name] = lid
    return result


def vit_parameters(depth, dim=8, patch=4, tokens=5, classes=3):
    params = [("cls_token", [1, 1, dim]), ("pos_embed", [1, tokens, dim]),
              ("patch_embed.proj.weight", [dim, 3, patch, patch]), ("patch_embed.proj.bias", [dim])]
    for k in range(depth):
        b = f"blocks.{k}."
        params += [(b + "norm1.weight", [dim]), (b + "norm1.bias", [dim]),
                   (b + "attn.qkv.weight", [3 * dim, dim]), (b + "attn.qkv.bias", [3 * dim]),
                   (b + "attn.proj.weight", [dim, dim]), (b + "attn.proj.bias", [dim]),
                   (b + "norm2.weight", [dim]), (b + "norm2.bias", [dim]),
                   (b + "mlp.fc1.weight", [4 * dim, dim]), (b + "mlp.fc1.bias", [4 * dim]),
                   (b + "mlp.fc2.weight", [dim, 4 * dim]), (b + "mlp.fc2.bias", [dim])]
    params += [("norm.weight", [dim]), ("norm.bias", [dim]), ("head.weight", [classes, dim]), ("head.bias", [classes])]
    return params


def case(name, depth, rate, base_lr, weight_decay, frozen_prefixes=()):
    params = vit_parameters(depth)
    frozen = [n for n, _ in params if any(n == p or n.startswith(p + ".") for p in frozen_prefixes)]
    trainable = [(n, s) for n, s in params if n not in frozen]
    lmap = layer_map([n for n, _ in trainable])
    num_layers = max(lmap.values()) + 1
    layer_max = num_layers - 1
    scales = [rate ** (layer_max - i) for i in range(num_layers)]
    expected = []
    for n, shape in trainable:
        decay = 0.0 if len(shape) == 1 or n in NO_WEIGHT_DECAY else weight_decay
        lid = lmap.get(n, layer_max)
        expected.append({"name": n, "layer_id": lid, "lr": base_lr * scales[lid], "weight_decay": decay})
    return {"name": name, "depth": depth, "rate": rate, "base_lr": base_lr, "weight_decay": weight_decay,
            "params": [{"name": n, "shape": s} for n, s in params], "frozen": frozen, "expected": expected}


def main():
    cases = [
        case("vit depth 12, rate 0.75", 12, 0.75, 1e-3, 0.05),
        case("vit depth 6, rate 0.65", 6, 0.65, 5e-4, 0.1),
        case("vit depth 12, stem and blocks 0-3 frozen", 12, 0.75, 1e-3, 0.05,
             ("cls_token", "pos_embed", "patch_embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3")),
        case("vit depth 8, blocks 2 and 5 frozen, rate 0.9", 8, 0.9, 2e-3, 0.02, ("blocks.2", "blocks.5")),
        case("vit depth 4, rate 1 (no decay)", 4, 1.0, 1e-3, 0.05),
    ]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layer_decay.json")
    with open(out, "w") as f:
        json.dump({"cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
