#!/usr/bin/python3
"""Writes tests/golden/clip.json: what PyTorch's torch.nn.utils.clip_grad_norm_ and
clip_grad_value_ return and leave in the gradients, for the gradient sets and norm types that
tests/test_clip.cpp checks torchkit against.

Run with the Python that has PyTorch (Debian: /usr/bin/python3, python3-torch 1.13):

    /usr/bin/python3 tests/golden/clip_golden.py

Every gradient value is stored as a JSON number (exact for float64, and float16, bfloat16 and
float32 values are exactly representable as float64), so the C++ test rebuilds bit-identical
gradients. `layout` says how the test lays a gradient out in memory: "contiguous",
"transposed" (dense but not contiguous: a 2-d tensor's .t() of a contiguous one) or "strided"
(every other column of a wider tensor, not dense); the values are the same either way.
"""

import json
import math
from pathlib import Path

import torch

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
NORM_TYPES = [2.0, 1.0, 3.5, math.inf, 0.0]


def make_gradient(shape, dtype, scale, layout, zero=False, special=None):
    values = torch.zeros(shape) if zero else torch.randn(shape) * scale
    if special is not None:
        flat = values.view(-1)
        for index, value in special:
            flat[index] = value
    values = values.to(DTYPES[dtype])
    if layout == "transposed":
        assert len(shape) == 2
        laid = torch.empty(shape[1], shape[0], dtype=values.dtype).t()
        laid.copy_(values)
    elif layout == "strided":
        assert len(shape) == 2
        laid = torch.zeros(shape[0], shape[1] * 2, dtype=values.dtype)[:, ::2]
        laid.copy_(values)
    else:
        laid = values.clone()
    return laid


def build(spec):
    """Parameters with gradients laid out as the spec says."""
    params = []
    for item in spec:
        param = torch.zeros(item["shape"], dtype=DTYPES[item["dtype"]], requires_grad=True)
        if item.get("grad", True):
            param.grad = make_gradient(item["shape"], item["dtype"], item.get("scale", 1.0),
                                       item.get("layout", "contiguous"), item.get("zero", False),
                                       item.get("special"))
        params.append(param)
    return params


REDUCED = (torch.float16, torch.bfloat16)


def norm_of(tensor, norm_type):
    """torch.norm(tensor, norm_type), accumulated in float32 for float16 and bfloat16 tensors.

    PyTorch 1.13's CPU norm kernel accumulates float16 and bfloat16 in their own precision
    (a bfloat16 sum stops growing at a few hundred: the 0-norm of 1000 non-zeros is 256, and
    p=1 over 600 small values is 11% low). PyTorch 2.x accumulates in float32 on the CPU, as
    CUDA always did, and so does torchkit; this is that computation."""
    if tensor.dtype in REDUCED:
        return torch.norm(tensor, norm_type, dtype=torch.float32).to(tensor.dtype)
    return torch.norm(tensor, norm_type)


def clip_grad_norm_(params, max_norm, norm_type):
    """torch.nn.utils.clip_grad_norm_ (PyTorch 1.13's code, step by step) with norm_of for the
    norms. For float32/float64 gradients it is bit-identical to PyTorch's own (main() checks).
    Its clamp of the coefficient runs in float32 where the coefficient is float16, which 1.13
    has no CPU kernel for (a clamp to 1.0 is exact in either precision)."""
    grads = [p.grad for p in params if p.grad is not None]
    device = grads[0].device
    if norm_type == math.inf:
        norms = [g.detach().abs().max().to(device) for g in grads]
        total_norm = norms[0] if len(norms) == 1 else torch.max(torch.stack(norms))
    else:
        total_norm = norm_of(torch.stack([norm_of(g.detach(), norm_type).to(device) for g in grads]), norm_type)
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef.dtype == torch.float16:
        clip_coef_clamped = torch.clamp(clip_coef.float(), max=1.0).to(clip_coef.dtype)
    else:
        clip_coef_clamped = torch.clamp(clip_coef, max=1.0)
    for g in grads:
        g.detach().mul_(clip_coef_clamped.to(g.device))
    return total_norm


def torch_clip_grad_norm_(params, max_norm, norm_type):
    """PyTorch's own, or None where 1.13 cannot run it (float16 only: no float16 clamp)."""
    try:
        return torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm, norm_type=norm_type)
    except RuntimeError as error:
        if "not implemented for 'Half'" not in str(error):
            raise
        return None


def values_of(tensor):
    return [float(v) for v in tensor.detach().to(torch.float64).reshape(-1).tolist()]


def describe(spec, params):
    described = []
    for item, param in zip(spec, params):
        described.append({
            "shape": list(item["shape"]),
            "dtype": item["dtype"],
            "layout": item.get("layout", "contiguous"),
            "grad": None if param.grad is None else values_of(param.grad),
        })
    return described


def dtype_name(dtype):
    return {v: k for k, v in DTYPES.items()}[dtype]


def encode(number):
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if math.isnan(number):
        return "nan"
    return number


SETS = {
    # float32 only, several shapes, a parameter without a gradient, a transposed and a strided
    # (non-contiguous) gradient, one longer than a vector register block.
    "float32_shapes": [
        {"shape": [4, 3], "dtype": "float32"},
        {"shape": [3], "dtype": "float32", "scale": 0.1},
        {"shape": [5, 2, 2], "dtype": "float32", "scale": 3.0},
        {"shape": [2, 2], "dtype": "float32", "grad": False},
        {"shape": [6, 5], "dtype": "float32", "layout": "transposed"},
        {"shape": [3, 7], "dtype": "float32", "layout": "strided", "scale": 0.5},
        {"shape": [1], "dtype": "float32"},
        {"shape": [300], "dtype": "float32", "scale": 0.2},
    ],
    # All four dtypes in one call: the total is float64.
    "mixed_dtypes": [
        {"shape": [8, 4], "dtype": "float32"},
        {"shape": [33], "dtype": "float64", "scale": 2.0},
        {"shape": [7, 3], "dtype": "float16", "scale": 0.7},
        {"shape": [19], "dtype": "bfloat16", "scale": 1.5},
        {"shape": [5], "dtype": "float16", "grad": False},
        {"shape": [4, 6], "dtype": "bfloat16", "layout": "transposed"},
        {"shape": [130], "dtype": "float16", "scale": 0.05},
    ],
    # float16 and bfloat16 only: the total is float32.
    "half_and_bfloat16": [
        {"shape": [40], "dtype": "float16", "scale": 4.0},
        {"shape": [6, 6], "dtype": "bfloat16", "scale": 0.3},
        {"shape": [9, 2], "dtype": "float16", "layout": "strided"},
        {"shape": [600], "dtype": "bfloat16", "scale": 0.01},
    ],
    # float16 only: total, coefficient and scaling all in float16.
    "float16_only": [
        {"shape": [64], "dtype": "float16", "scale": 2.0},
        {"shape": [3, 5], "dtype": "float16", "scale": 0.25},
        {"shape": [520], "dtype": "float16", "scale": 0.5},
    ],
    # One gradient (PyTorch's single-norm case for inf).
    "single_float32": [
        {"shape": [10, 10], "dtype": "float32", "scale": 2.5},
    ],
    # float64 with an all-zero gradient (norm 0 counts gradients with a non-zero element).
    "float64_with_zero_gradient": [
        {"shape": [17], "dtype": "float64"},
        {"shape": [4, 4], "dtype": "float64", "zero": True},
        {"shape": [2, 3], "dtype": "float64", "scale": 10.0, "special": [(0, 0.0), (4, -0.0)]},
        {"shape": [257], "dtype": "float64", "scale": 1e-3},
    ],
}

VALUE_SETS = {
    "float32_shapes": [0.5, 0.0],
    "mixed_dtypes": [0.3],
    "half_and_bfloat16": [0.1],
}

NONFINITE_SETS = {
    # parameter 2 holds an inf, parameter 3 a nan.
    "float32_nonfinite": [
        {"shape": [5], "dtype": "float32"},
        {"shape": [3], "dtype": "float32", "grad": False},
        {"shape": [4], "dtype": "float32", "special": [(1, math.inf)]},
        {"shape": [6], "dtype": "float32", "special": [(0, math.nan)]},
    ],
}


def main():
    torch.manual_seed(20240613)
    cases = []
    for name, spec in SETS.items():
        params = build(spec)
        original = [None if p.grad is None else p.grad.clone() for p in params]
        results = []
        for norm_type in NORM_TYPES:
            for p, grad in zip(params, original):
                if grad is not None:
                    p.grad.copy_(grad)
            total = clip_grad_norm_(params, 1e30, norm_type)
            max_norm = max(float(total) * 0.37, 1e-3)
            for p, grad in zip(params, original):
                if grad is not None:
                    p.grad.copy_(grad)
            torch_total = torch_clip_grad_norm_(params, max_norm, norm_type)
            torch_clipped = [None if p.grad is None else p.grad.clone() for p in params]
            for p, grad in zip(params, original):
                if grad is not None:
                    p.grad.copy_(grad)
            total = clip_grad_norm_(params, max_norm, norm_type)
            reduced = any(p.grad is not None and p.grad.dtype in REDUCED for p in params)
            if not reduced:
                # The float-accumulating copy is PyTorch's own where no float16/bfloat16 is involved.
                assert torch_total is not None and torch.equal(total, torch_total), (name, norm_type)
                for p, clipped in zip(params, torch_clipped):
                    assert p.grad is None or torch.equal(p.grad, clipped), (name, norm_type)
            results.append({
                "norm_type": encode(norm_type),
                "max_norm": max_norm,
                "total": float(total),
                "total_dtype": dtype_name(total.dtype),
                # What PyTorch 1.13 itself returns (differs where it accumulates float16/bfloat16
                # in their own precision; null where it cannot run).
                "torch_1_13_total": None if torch_total is None else float(torch_total),
                "clipped": [None if p.grad is None else values_of(p.grad) for p in params],
            })
        for p, grad in zip(params, original):
            if grad is not None:
                p.grad.copy_(grad)
        value_results = []
        for clip_value in VALUE_SETS.get(name, []):
            for p, grad in zip(params, original):
                if grad is not None:
                    p.grad.copy_(grad)
            with_half = [p for p in params if p.grad is not None and p.grad.dtype == torch.float16]
            others = [p for p in params if p.grad is not None and p.grad.dtype != torch.float16]
            torch.nn.utils.clip_grad_value_(others, clip_value)
            # PyTorch 1.13 has no float16 clamp on the CPU: clamp in float32 and round back,
            # which is what a float16 clamp with the bounds rounded to float16 gives.
            for p in with_half:
                p.grad.copy_(p.grad.float().clamp(-clip_value, clip_value).half())
            value_results.append({
                "clip_value": clip_value,
                "clipped": [None if p.grad is None else values_of(p.grad) for p in params],
            })
        for p, grad in zip(params, original):
            if grad is not None:
                p.grad.copy_(grad)
        cases.append({"set": name, "params": describe(spec, params), "results": results,
                      "value_results": value_results})

    nonfinite = []
    for name, spec in NONFINITE_SETS.items():
        params = build(spec)
        described = describe(spec, params)
        for p in described:
            if p["grad"] is not None:
                p["grad"] = [encode(v) for v in p["grad"]]
        results = []
        for norm_type in NORM_TYPES:
            saved = [None if p.grad is None else p.grad.clone() for p in params]
            total = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0, norm_type=norm_type)
            raised = False
            for p, grad in zip(params, saved):
                if grad is not None:
                    p.grad.copy_(grad)
            try:
                torch.nn.utils.clip_grad_norm_(params, max_norm=1.0, norm_type=norm_type,
                                               error_if_nonfinite=True)
            except RuntimeError:
                raised = True
            for p, grad in zip(params, saved):
                if grad is not None:
                    p.grad.copy_(grad)
            results.append({"norm_type": encode(norm_type), "total": encode(float(total)),
                            "raises": raised})
        nonfinite.append({"set": name, "params": described, "results": results})

    output = {
        "generator": "tests/golden/clip_golden.py",
        "torch_version": torch.__version__,
        "cases": cases,
        "nonfinite": nonfinite,
    }
    path = Path(__file__).with_name("clip.json")
    path.write_text(json.dumps(output, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
