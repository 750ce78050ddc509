#!/usr/bin/python3
"""Writes tests/golden/amp.json: what PyTorch's GradScaler("cpu"), clip_grad_norm_ and
torch.autocast("cpu") do, for tests/test_amp.cpp to check torchkit/amp.hpp against.

GradScaler runs on the CPU from PyTorch 2.3 on, so this script needs PyTorch 2.x (the Debian 13
root has python3-torch 2.6):

    chroot /var/cache/torchkit-roots/trixie python3 /path/to/amp_golden.py > amp.json   # 2.6
    /usr/bin/python3 tests/golden/amp_golden.py --autocast-only > amp_autocast_113.json  # 1.13

The second form records only the autocast dtypes of PyTorch 1.13 (whose GradScaler is
CUDA-only); the first merges that file in (it must sit beside this script) and checks that both
versions agree on every op class the test checks.

The training loops use gradients the C++ test rebuilds bit for bit: every value is
`((7 * i + 13 * step) % 101 - 50) / 16 * 2 ** (step % 7 - 3)` (exact in float32 and bfloat16),
multiplied by the current scale (a power of two), with inf / nan written into chosen elements
at chosen steps. Non-finite numbers are stored as the strings "inf", "-inf" and "nan".
"""

import json
import math
import sys
from pathlib import Path

import torch

SHAPES = [([4, 3], torch.float32), ([5], torch.float32), ([7], torch.bfloat16)]
STEPS = 300
# (step, parameter, flat index, value): non-finite gradients injected before unscaling.
INJECTED = [
    (5, 0, 4, math.inf),
    (40, 2, 3, math.nan),
    (41, 1, 0, -math.inf),
    (77, 0, 11, math.nan),
    (100, 2, 6, math.inf),
    (180, 1, 2, math.nan),
    (250, 0, 0, math.inf),
    (251, 0, 0, math.inf),
]
NEW_SCALE_STEP = 150  # update(new_scale=512.0) instead of update() at this step


def encode(value):
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def base_value(step, i):
    return ((7 * i + 13 * step) % 101 - 50) / 16 * 2.0 ** (step % 7 - 3)


def gradients(step, scale):
    grads = []
    offset = 0
    for shape, dtype in SHAPES:
        numel = math.prod(shape)
        values = torch.tensor([base_value(step, offset + i) for i in range(numel)], dtype=torch.float32)
        grad = (values * scale).to(dtype).reshape(shape)
        for at_step, parameter, index, value in INJECTED:
            if at_step == step and parameter == len(grads):
                grad.view(-1)[index] = value
        grads.append(grad)
        offset += numel
    return grads


def run(max_norm, norm_type, clip):
    """The documented recipe: scale, (unscale_ + clip_grad_norm_), step, update."""
    torch.manual_seed(0)
    params = [torch.zeros(shape, dtype=dtype, requires_grad=True) for shape, dtype in SHAPES]
    with torch.no_grad():
        for k, p in enumerate(params):
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) / 8 - k)
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5,
                                  growth_interval=10)
    steps = []
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = torch.tensor(1.0)
        scaled_loss = scaler.scale(loss)
        scale_used = scaler.get_scale()
        assert scaled_loss.item() == scale_used
        for p, grad in zip(params, gradients(step, scale_used)):
            p.grad = grad
        record = {"scale_used": scale_used}
        if clip:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            record["norm"] = encode(norm)
        scaler.step(optimizer)
        found_inf = sum(v.item() for v in scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values())
        record["found_inf"] = bool(found_inf)
        record["grads"] = [[encode(v) for v in p.grad.reshape(-1).tolist()] for p in params]
        if step == NEW_SCALE_STEP:
            scaler.update(512.0)
        else:
            scaler.update()
        record["scale"] = scaler.get_scale()
        record["growth_tracker"] = scaler._get_growth_tracker()
        record["params"] = [[encode(v) for v in p.detach().reshape(-1).tolist()] for p in params]
        steps.append(record)
    return {"max_norm": max_norm, "norm_type": encode(norm_type), "clip": clip, "steps": steps,
            "state_dict": {k: (v if isinstance(v, int) else float(v)) for k, v in scaler.state_dict().items()}}


def autocast_dtypes():
    """The dtype each op class returns under torch.autocast("cpu", bfloat16) for float32 inputs."""
    torch.manual_seed(0)
    a = torch.randn(4, 4)
    b = torch.randn(4, 4)
    batch = torch.randn(2, 4, 4)
    image = torch.randn(1, 3, 8, 8)
    weight = torch.randn(5, 3, 3, 3)
    lin_w = torch.randn(6, 4)
    ops = {
        "mm": lambda: torch.mm(a, b),
        "matmul": lambda: torch.matmul(a, b),
        "linear": lambda: torch.nn.functional.linear(a, lin_w),
        "conv2d": lambda: torch.nn.functional.conv2d(image, weight),
        "bmm": lambda: torch.bmm(batch, batch),
        "addmm": lambda: torch.addmm(a, a, b),
        "baddbmm": lambda: torch.baddbmm(batch, batch, batch),
        "sum": lambda: a.sum(),
        "mean": lambda: a.mean(),
        "relu": lambda: torch.relu(a),
        "add": lambda: a + b,
        "sum_of_mm": lambda: torch.mm(a, b).sum(),
        "mse_loss": lambda: torch.nn.functional.mse_loss(a, b),
        "binary_cross_entropy": lambda: torch.nn.functional.binary_cross_entropy(torch.sigmoid(a), torch.sigmoid(b)),
    }
    out = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, op in ops.items():
            out[name] = str(op().dtype).replace("torch.", "")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        out["mm_disabled"] = str(torch.mm(a, b).dtype).replace("torch.", "")
    return out


def main():
    here = Path(__file__).resolve().parent
    if "--autocast-only" in sys.argv:
        print(json.dumps({"torch": torch.__version__, "autocast": autocast_dtypes()}, indent=1))
        return
    assert int(torch.__version__.split(".")[0]) >= 2, "GradScaler('cpu') needs PyTorch 2.x"
    old = json.loads((here / "amp_autocast_113.json").read_text())
    new = autocast_dtypes()
    # The test checks the op classes on which 1.13 and this version agree; list them.
    agreed = sorted(name for name in new if old["autocast"].get(name) == new[name])
    for required in ["mm", "matmul", "linear", "conv2d", "bmm", "addmm", "sum", "mean", "mm_disabled"]:
        assert required in agreed, (required, old["autocast"].get(required), new[required])
    golden = {
        "torch": torch.__version__,
        "autocast": {name: new[name] for name in agreed},
        "autocast_differs": {name: {"1.13": old["autocast"].get(name), torch.__version__: new[name]}
                             for name in new if name not in agreed},
        "shapes": [[shape, str(dtype).replace("torch.", "")] for shape, dtype in SHAPES],
        "injected": [[s, p, i, encode(v)] for s, p, i, v in INJECTED],
        "new_scale_step": NEW_SCALE_STEP,
        "runs": {
            "clip_l2": run(5.0, 2.0, True),
            "clip_inf": run(2.0, math.inf, True),
            "step_only": run(5.0, 2.0, False),
        },
    }
    print(json.dumps(golden))


if __name__ == "__main__":
    main()
