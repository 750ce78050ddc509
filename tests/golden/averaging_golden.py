#!/usr/bin/env python3
"""Writes averaging.json: PyTorch's swa_utils.AveragedModel (SWA and EMA, with and without
buffers) and update_bn on a small conv net, for tests/test_averaging.cpp.

Run with Debian's python3-torch (1.13): python3 tests/golden/averaging_golden.py

The model's values at update t come from a formula computed the same way in the test (float64
arithmetic, then float32), so no weights need to be stored.
"""
import json
import pathlib

import torch
from torch import nn
from torch.optim import swa_utils


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def pattern(numel, t, i):
    """float64 formula -> float32: ((k * 0.37 + t * 1.3 + i) mod 5) - 2.5."""
    k = torch.arange(numel, dtype=torch.float64)
    return (torch.remainder(k * 0.37 + t * 1.3 + i, 5.0) - 2.5).to(torch.float32)


def set_state(model, t):
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(pattern(p.numel(), t, i).view_as(p))
        model.bn.running_mean.copy_(pattern(3, t, 10))
        model.bn.running_var.copy_(pattern(3, t, 11).abs() + 0.5)
        model.bn.num_batches_tracked.fill_(t * 3 + 1)


def batch(b):
    return pattern(4 * 2 * 4 * 4, b, 20).view(4, 2, 4, 4)


def flat(tensors):
    return [float(v) for t in tensors for v in t.detach().reshape(-1).to(torch.float64).tolist()]


def averaged(avg_fn, use_buffers, updates):
    model = Net()
    set_state(model, 100)
    swa = swa_utils.AveragedModel(model, avg_fn=avg_fn, use_buffers=use_buffers)
    for t in range(updates):
        set_state(model, t)
        swa.update_parameters(model)
    return {
        "parameters": flat(swa.module.parameters()),
        "buffers": flat(swa.module.buffers()) if use_buffers else [],
        "n_averaged": int(swa.n_averaged),
    }


def main():
    decay = 0.9

    def ema(averaged_parameter, model_parameter, num_averaged):
        return decay * averaged_parameter + (1 - decay) * model_parameter

    cases = {
        "swa": averaged(None, False, 5),
        "swa_buffers": averaged(None, True, 5),
        "ema": averaged(ema, False, 6),
        "ema_buffers": averaged(ema, True, 6),
    }
    model = Net()
    set_state(model, 3)
    model.eval()
    swa_utils.update_bn([batch(b) for b in range(3)], model)
    cases["update_bn"] = {
        "running_mean": flat([model.bn.running_mean]),
        "running_var": flat([model.bn.running_var]),
        "num_batches_tracked": int(model.bn.num_batches_tracked),
        "momentum": model.bn.momentum,
        "training": model.training,
    }
    out = pathlib.Path(__file__).with_name("averaging.json")
    out.write_text(json.dumps({"torch": torch.__version__, "ema_decay": decay, "cases": cases}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
