#!/usr/bin/python3
"""Golden learning rates of torch.optim.swa_utils.SWALR for tests/test_lr.cpp (torch 1.13).

Run with the Python that has torch 1.13 (Debian's python3-torch):

    /usr/bin/python3 tests/golden/swa_golden.py

writes tests/golden/swa.json:
  cases:  an SGD optimizer with 3 parameter groups of different lrs, optionally stepped by a
          CosineAnnealingLR first ("before": that many steps, so SWALR starts from lrs a scheduler
          left), then SWALR with the given arguments: every group's lr after construction and
          after each of `steps` steps (>= 200).
  sequential: SequentialLR(CosineAnnealingLR(T_max=...), SWALR(...), milestones=[m]): the usual
          "cosine, then SWA" schedule, SWALR started by SequentialLR at the milestone.
  errors: bad arguments and the message of the ValueError Python raises.
"""
import json
import os

import torch
from torch.optim import lr_scheduler as S
from torch.optim.swa_utils import SWALR

LRS = [0.1, 0.03, 0.5]


def make_optimizer():
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]
    return torch.optim.SGD(groups, lr=LRS[0], momentum=0.9)


def lrs(optimizer):
    return [group["lr"] for group in optimizer.param_groups]


def run(args, steps, before=0):
    optimizer = make_optimizer()
    if before:
        warm = S.CosineAnnealingLR(optimizer, T_max=40, eta_min=0.001)
        for _ in range(before):
            optimizer.step()
            warm.step()
    scheduler = SWALR(optimizer, **args)
    rows = [lrs(optimizer)]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rows.append(lrs(optimizer))
        assert scheduler.get_last_lr() == rows[-1]
    return {"args": args, "before": before, "steps": steps, "lrs": rows}


def run_sequential(t_max, args, milestone, steps):
    optimizer = make_optimizer()
    cosine = S.CosineAnnealingLR(optimizer, T_max=t_max)
    swa = SWALR(optimizer, **args)
    scheduler = S.SequentialLR(optimizer, [cosine, swa], milestones=[milestone])
    rows = [lrs(optimizer)]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rows.append(lrs(optimizer))
    return {"T_max": t_max, "args": args, "milestone": milestone, "steps": steps, "lrs": rows}


def error(args, groups=len(LRS)):
    optimizer = make_optimizer()
    del optimizer.param_groups[groups:]
    try:
        SWALR(optimizer, **args)
    except ValueError as exc:
        return {"args": args, "groups": groups, "message": str(exc)}
    raise AssertionError(f"SWALR accepted {args}")


def main():
    cases = [
        run({"swa_lr": 0.05}, 220),
        run({"swa_lr": 0.05, "anneal_strategy": "linear"}, 220),
        run({"swa_lr": [0.01, 0.2, 0.0], "anneal_epochs": 37, "anneal_strategy": "cos"}, 240),
        run({"swa_lr": [0.01, 0.2, 0.0], "anneal_epochs": 37, "anneal_strategy": "linear"}, 240),
        run({"swa_lr": 0.02, "anneal_epochs": 0}, 200),
        run({"swa_lr": 0.02, "anneal_epochs": 0, "anneal_strategy": "linear"}, 200),
        run({"swa_lr": 0.02, "anneal_epochs": 1, "anneal_strategy": "linear"}, 200),
        run({"swa_lr": [0.3, 0.001, 0.07], "anneal_epochs": 150, "anneal_strategy": "cos"}, 260, before=25),
        run({"swa_lr": [0.3, 0.001, 0.07], "anneal_epochs": 150, "anneal_strategy": "linear"}, 260, before=25),
    ]
    sequential = [
        run_sequential(60, {"swa_lr": 0.02, "anneal_epochs": 5}, 40, 200),
        run_sequential(30, {"swa_lr": [0.01, 0.002, 0.05], "anneal_epochs": 12, "anneal_strategy": "linear"}, 75, 220),
    ]
    errors = [
        error({"swa_lr": 0.05, "anneal_epochs": -1}),
        error({"swa_lr": 0.05, "anneal_strategy": "exp"}),
        error({"swa_lr": [0.05, 0.01]}),
        error({"swa_lr": [0.05, 0.01, 0.02, 0.03]}, groups=2),
    ]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "swa.json")
    with open(out, "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases, "sequential": sequential, "errors": errors}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
