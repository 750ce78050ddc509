#!/usr/bin/python3
"""Golden learning-rate sequences for tests/test_lr.cpp, from PyTorch's own schedulers.

Run with the Python that has torch 1.13 (Debian's python3-torch):

    /usr/bin/python3 tests/golden/lr_golden.py

writes tests/golden/lr.json:
  cases:  for every scheduler several argument sets on an optimizer with 2 (or 3) parameter
          groups of different initial lrs: the lr of every group after construction and after
          each of `steps` steps, and for OneCycleLR/CyclicLR the momentum (SGD, RMSprop) or beta1
          (Adam, AdamW) as well. ReduceLROnPlateau cases carry the metric fed to each step.
  errors: bad arguments and the message of the ValueError Python raises for them.

The lambdas (LambdaLR, MultiplicativeLR, CyclicLR's scale_fn) are named; test_lr.cpp defines
the same functions under the same names.
"""
import json
import math
import os

import torch
from torch.optim import lr_scheduler as S

LAMBDAS = {
    "exp095": lambda epoch: 0.95 ** epoch,
    "halve_every_30": lambda epoch: 0.5 ** (epoch // 30),
    "inv_sqrt": lambda epoch: 1.0 / math.sqrt(epoch + 1),
    "warmup_10": lambda epoch: min(1.0, (epoch + 1) / 10),
    "const098": lambda epoch: 0.98,
    "alternate": lambda epoch: 0.9 if epoch % 2 else 1.05,
}
SCALE_FNS = {
    "inverse_cycle": lambda x: 1 / (1 + 0.5 * x),
    "slow_decay": lambda x: 0.999 ** x,
}


def make_optimizer(spec):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in spec["lrs"]]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, spec["lrs"])]
    kind = spec["type"]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=spec["lrs"][0], momentum=spec.get("momentum", 0.9))
    if kind == "rmsprop":
        return torch.optim.RMSprop(groups, lr=spec["lrs"][0], momentum=spec.get("momentum", 0.5))
    if kind == "adam":
        return torch.optim.Adam(groups, lr=spec["lrs"][0], betas=(0.9, 0.999))
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=spec["lrs"][0], betas=(0.9, 0.99))
    if kind == "adagrad":
        return torch.optim.Adagrad(groups, lr=spec["lrs"][0])
    raise ValueError(kind)


def make_scheduler(optimizer, spec):
    kind = spec["type"]
    args = dict(spec.get("args", {}))
    if kind == "SequentialLR":
        inner = [make_scheduler(optimizer, s) for s in spec["schedulers"]]
        return S.SequentialLR(optimizer, inner, spec["milestones"])
    if kind == "ChainedScheduler":
        return S.ChainedScheduler([make_scheduler(optimizer, s) for s in spec["schedulers"]])
    if kind in ("LambdaLR", "MultiplicativeLR"):
        names = args["lr_lambda"]
        args["lr_lambda"] = [LAMBDAS[n] for n in names] if isinstance(names, list) else LAMBDAS[names]
    if kind == "CyclicLR" and "scale_fn" in args:
        args["scale_fn"] = SCALE_FNS[args["scale_fn"]]
    return getattr(S, kind)(optimizer, **args)


def momentums(optimizer):
    out = []
    for group in optimizer.param_groups:
        out.append(group["betas"][0] if "betas" in group else group["momentum"])
    return out


def lrs(optimizer):
    return [group["lr"] for group in optimizer.param_groups]


def run_case(case):
    optimizer = make_optimizer(case["optimizer"])
    spec = case["scheduler"]
    record_momentum = case.get("record_momentum", False)
    result = dict(case)
    if spec["type"] == "ReduceLROnPlateau":
        scheduler = S.ReduceLROnPlateau(optimizer, **spec.get("args", {}))
        sequence = [lrs(optimizer)]
        for metric in case["metrics"]:
            scheduler.step(metric)
            sequence.append(lrs(optimizer))
        result["lrs"] = sequence
        return result
    scheduler = make_scheduler(optimizer, spec)
    if "step_epochs" in case:  # CosineAnnealingWarmRestarts.step(epoch); None: step()
        sequence = [lrs(optimizer)]
        for epoch in case["step_epochs"]:
            scheduler.step() if epoch is None else scheduler.step(epoch)
            sequence.append(lrs(optimizer))
        result["lrs"] = sequence
        return result
    sequence = [lrs(optimizer)]
    last = [scheduler.get_last_lr()]
    moms = [momentums(optimizer)] if record_momentum else None
    for _ in range(case["steps"]):
        optimizer.step()
        scheduler.step()
        sequence.append(lrs(optimizer))
        last.append(list(scheduler.get_last_lr()))
        if record_momentum:
            moms.append(momentums(optimizer))
    result["lrs"] = sequence
    if last != sequence:
        result["last_lr"] = last  # SequentialLR reports its active scheduler's last lr
    if record_momentum:
        result["momentums"] = moms
    return result


def metric_sequence(kind, count):
    """Deterministic training-like curves: a decaying loss with plateaus and a little noise."""
    state = 12345
    values = []
    for t in range(count):
        state = (1103515245 * state + 12345) % 2 ** 31
        noise = (state / 2 ** 31 - 0.5) * 0.02
        plateau = (t // 25) * 25  # the curve only improves every 25 epochs
        loss = 1.0 / (1.0 + 0.05 * plateau) + noise
        if kind == "loss":
            values.append(loss)
        elif kind == "accuracy":
            values.append(1.0 - loss)
        elif kind == "flat":
            values.append(0.5 if t % 7 else 0.5 - 1e-6 * t)
    return values


STEPS = 200
SGD2 = {"type": "sgd", "lrs": [0.1, 0.025]}
ADAM2 = {"type": "adam", "lrs": [0.001, 0.003]}


def cases():
    out = []

    def add(name, scheduler, optimizer=SGD2, steps=STEPS, record_momentum=False):
        out.append({"name": name, "optimizer": optimizer, "scheduler": scheduler, "steps": steps,
                    "record_momentum": record_momentum})

    def sched(kind, **args):
        return {"type": kind, "args": args}

    add("StepLR step_size=7 gamma=0.5", sched("StepLR", step_size=7, gamma=0.5))
    add("StepLR step_size=30 default gamma", sched("StepLR", step_size=30))
    add("StepLR step_size=1 gamma=0.97 adam", sched("StepLR", step_size=1, gamma=0.97), ADAM2)
    add("MultiStepLR [30, 80, 150]", sched("MultiStepLR", milestones=[30, 80, 150]))
    add("MultiStepLR repeated milestone", sched("MultiStepLR", milestones=[10, 10, 50, 120], gamma=0.5))
    add("MultiStepLR milestone 0 and empty-ish", sched("MultiStepLR", milestones=[0, 5], gamma=0.3))
    add("MultiStepLR no milestones", sched("MultiStepLR", milestones=[]))
    add("ConstantLR defaults", sched("ConstantLR"))
    add("ConstantLR factor=0.5 total_iters=40", sched("ConstantLR", factor=0.5, total_iters=40))
    add("ConstantLR factor=1", sched("ConstantLR", factor=1.0, total_iters=3), ADAM2)
    add("LinearLR defaults", sched("LinearLR"))
    add("LinearLR warm-up 0.1 -> 1 over 50", sched("LinearLR", start_factor=0.1, total_iters=50))
    add("LinearLR decay 1 -> 0.1 over 100", sched("LinearLR", start_factor=1.0, end_factor=0.1, total_iters=100))
    add("LinearLR to zero", sched("LinearLR", start_factor=0.25, end_factor=0.0, total_iters=10),
        {"type": "sgd", "lrs": [0.5, 0.2, 0.05]})
    add("ExponentialLR 0.95", sched("ExponentialLR", gamma=0.95))
    add("ExponentialLR 0.99 adam", sched("ExponentialLR", gamma=0.99), ADAM2)
    add("ExponentialLR 1.01", sched("ExponentialLR", gamma=1.01))
    add("PolynomialLR defaults", sched("PolynomialLR"))
    add("PolynomialLR total_iters=150 power=2", sched("PolynomialLR", total_iters=150, power=2.0))
    add("PolynomialLR total_iters=100 power=0.5", sched("PolynomialLR", total_iters=100, power=0.5))
    add("PolynomialLR past the end", sched("PolynomialLR", total_iters=300, power=1.0))
    add("CosineAnnealingLR T_max=50", sched("CosineAnnealingLR", T_max=50))
    add("CosineAnnealingLR T_max=30 eta_min=1e-4 (periods)", sched("CosineAnnealingLR", T_max=30, eta_min=1e-4))
    add("CosineAnnealingLR T_max=200 eta_min=1e-3", sched("CosineAnnealingLR", T_max=200, eta_min=1e-3))
    add("CosineAnnealingLR T_max=1", sched("CosineAnnealingLR", T_max=1, eta_min=0.01))
    add("CosineAnnealingLR adam eta above an lr", sched("CosineAnnealingLR", T_max=40, eta_min=0.002), ADAM2)
    add("CosineAnnealingWarmRestarts T_0=10", sched("CosineAnnealingWarmRestarts", T_0=10))
    add("CosineAnnealingWarmRestarts T_0=5 T_mult=2", sched("CosineAnnealingWarmRestarts", T_0=5, T_mult=2,
                                                              eta_min=1e-5))
    add("CosineAnnealingWarmRestarts T_0=1 T_mult=3", sched("CosineAnnealingWarmRestarts", T_0=1, T_mult=3))
    add("CosineAnnealingWarmRestarts T_0=7 eta_min", sched("CosineAnnealingWarmRestarts", T_0=7, eta_min=0.01),
        ADAM2)
    add("LambdaLR exp095", sched("LambdaLR", lr_lambda="exp095"))
    add("LambdaLR per group", sched("LambdaLR", lr_lambda=["halve_every_30", "inv_sqrt"]))
    add("LambdaLR warm-up", sched("LambdaLR", lr_lambda="warmup_10"), ADAM2)
    add("MultiplicativeLR const098", sched("MultiplicativeLR", lr_lambda="const098"))
    add("MultiplicativeLR per group", sched("MultiplicativeLR", lr_lambda=["const098", "alternate"]))
    add("MultiplicativeLR 3 groups adam", sched("MultiplicativeLR", lr_lambda=["alternate", "exp095", "inv_sqrt"]),
        {"type": "adam", "lrs": [0.001, 0.003, 0.0005]})
    add("OneCycleLR two lists sgd", sched("OneCycleLR", max_lr=[0.1, 0.05], total_steps=STEPS),
        record_momentum=True)
    add("OneCycleLR epochs*steps linear three-phase adam",
        sched("OneCycleLR", max_lr=0.01, epochs=10, steps_per_epoch=20, anneal_strategy="linear",
              three_phase=True), ADAM2, record_momentum=True)
    add("OneCycleLR no momentum", sched("OneCycleLR", max_lr=0.01, total_steps=250, pct_start=0.25,
                                        div_factor=10.0, final_div_factor=100.0, cycle_momentum=False),
        record_momentum=True)
    add("OneCycleLR three-phase cos adamw momentum lists",
        sched("OneCycleLR", max_lr=[0.02, 0.004], total_steps=STEPS, three_phase=True, pct_start=0.4,
              base_momentum=[0.8, 0.7], max_momentum=[0.95, 0.9]),
        {"type": "adamw", "lrs": [0.001, 0.003]}, record_momentum=True)
    add("OneCycleLR rmsprop", sched("OneCycleLR", max_lr=0.05, total_steps=STEPS, pct_start=0.1),
        {"type": "rmsprop", "lrs": [0.01, 0.02]}, record_momentum=True)
    add("CyclicLR triangular", sched("CyclicLR", base_lr=0.001, max_lr=0.01, step_size_up=20),
        record_momentum=True)
    add("CyclicLR triangular2 lists", sched("CyclicLR", base_lr=[0.001, 0.002], max_lr=[0.01, 0.05],
                                            step_size_up=15, step_size_down=25, mode="triangular2",
                                            base_momentum=[0.85, 0.8], max_momentum=[0.95, 0.9]),
        record_momentum=True)
    add("CyclicLR exp_range", sched("CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=10, mode="exp_range",
                                    gamma=0.99), {"type": "rmsprop", "lrs": [0.01, 0.02]}, record_momentum=True)
    add("CyclicLR scale_fn iterations adam", sched("CyclicLR", base_lr=0.0001, max_lr=0.001, step_size_up=8,
                                                   scale_fn="slow_decay", scale_mode="iterations",
                                                   cycle_momentum=False), ADAM2, record_momentum=True)
    add("CyclicLR scale_fn cycle", sched("CyclicLR", base_lr=0.001, max_lr=0.006, step_size_up=12,
                                         step_size_down=5, scale_fn="inverse_cycle"), record_momentum=True)
    add("SequentialLR warm-up + cosine", {"type": "SequentialLR", "schedulers": [
        sched("LinearLR", start_factor=0.1, total_iters=5), sched("CosineAnnealingLR", T_max=195)],
        "milestones": [5]})
    add("SequentialLR docs example", {"type": "SequentialLR", "schedulers": [
        sched("ConstantLR", factor=0.1, total_iters=2), sched("ExponentialLR", gamma=0.9)], "milestones": [2]})
    add("SequentialLR four closed forms", {"type": "SequentialLR", "schedulers": [
        sched("LinearLR", start_factor=0.2, total_iters=10), sched("StepLR", step_size=15, gamma=0.5),
        sched("MultiStepLR", milestones=[3, 20], gamma=0.2), sched("CosineAnnealingLR", T_max=30, eta_min=1e-4),
        sched("PolynomialLR", total_iters=40, power=2.0)], "milestones": [10, 60, 100, 150]})
    add("SequentialLR without closed forms", {"type": "SequentialLR", "schedulers": [
        sched("ExponentialLR", gamma=0.97), sched("LambdaLR", lr_lambda="exp095"),
        sched("MultiplicativeLR", lr_lambda="alternate"), sched("CosineAnnealingWarmRestarts", T_0=12, T_mult=2),
        sched("ConstantLR", factor=0.5, total_iters=8)], "milestones": [20, 50, 90, 170]}, ADAM2)
    add("SequentialLR cyclic after constant", {"type": "SequentialLR", "schedulers": [
        sched("ConstantLR", factor=0.5, total_iters=10),
        sched("CyclicLR", base_lr=0.01, max_lr=0.05, step_size_up=10, cycle_momentum=False)],
        "milestones": [30]})
    add("SequentialLR onecycle first", {"type": "SequentialLR", "schedulers": [
        sched("OneCycleLR", max_lr=0.2, total_steps=120, cycle_momentum=False),
        sched("ExponentialLR", gamma=0.98)], "milestones": [100]}, record_momentum=True)
    add("ChainedScheduler docs example", {"type": "ChainedScheduler", "schedulers": [
        sched("ConstantLR", factor=0.1, total_iters=2), sched("ExponentialLR", gamma=0.9)]})
    add("ChainedScheduler warm-up cosine step", {"type": "ChainedScheduler", "schedulers": [
        sched("LinearLR", start_factor=0.05, total_iters=20), sched("CosineAnnealingLR", T_max=50, eta_min=1e-5),
        sched("StepLR", step_size=40, gamma=0.7)]})
    add("ChainedScheduler multiplicative + warm restarts", {"type": "ChainedScheduler", "schedulers": [
        sched("MultiplicativeLR", lr_lambda="const098"), sched("MultiStepLR", milestones=[50, 100]),
        sched("CosineAnnealingWarmRestarts", T_0=25)]}, ADAM2)
    add("ChainedScheduler around a SequentialLR", {"type": "ChainedScheduler", "schedulers": [
        {"type": "SequentialLR", "schedulers": [sched("LinearLR", start_factor=0.5, total_iters=4),
                                                sched("ExponentialLR", gamma=0.99)], "milestones": [4]},
        sched("StepLR", step_size=50, gamma=0.5)]})

    iters = 7
    fractional = [e + i / iters for e in range(30) for i in range(iters)]
    out.append({"name": "CosineAnnealingWarmRestarts fractional epochs T_mult=2", "optimizer": SGD2,
                "scheduler": sched("CosineAnnealingWarmRestarts", T_0=3, T_mult=2, eta_min=1e-4),
                "step_epochs": fractional})
    out.append({"name": "CosineAnnealingWarmRestarts fractional epochs T_mult=1", "optimizer": ADAM2,
                "scheduler": sched("CosineAnnealingWarmRestarts", T_0=4),
                "step_epochs": fractional})
    out.append({"name": "CosineAnnealingWarmRestarts interleaved step(epoch) and step()", "optimizer": SGD2,
                "scheduler": sched("CosineAnnealingWarmRestarts", T_0=6, T_mult=3, eta_min=0.001),
                "step_epochs": [None] * 20 + [26] + [None] * 60 + [3, 2.5] + [None] * 40 + [150] + [None] * 80})

    plateau = [
        ("ReduceLROnPlateau defaults", {}, "loss"),
        ("ReduceLROnPlateau max abs", {"mode": "max", "threshold_mode": "abs", "threshold": 0.01, "patience": 4},
         "accuracy"),
        ("ReduceLROnPlateau min abs cooldown min_lr list",
         {"threshold_mode": "abs", "threshold": 0.001, "patience": 3, "cooldown": 5, "min_lr": [0.001, 0.0001],
          "factor": 0.3}, "loss"),
        ("ReduceLROnPlateau max rel eps", {"mode": "max", "threshold": 0.05, "patience": 2, "cooldown": 2,
                                           "factor": 0.5, "eps": 1e-3, "min_lr": 0.005}, "accuracy"),
        ("ReduceLROnPlateau flat metric factor 0", {"patience": 0, "factor": 0.0, "min_lr": 1e-4,
                                                    "threshold": 0.0}, "flat"),
        ("ReduceLROnPlateau min rel threshold 1", {"threshold": 1.0, "patience": 5}, "loss"),
    ]
    for name, args, kind in plateau:
        out.append({"name": name, "optimizer": SGD2, "scheduler": sched("ReduceLROnPlateau", **args),
                    "metrics": metric_sequence(kind, STEPS)})
    return out


def errors():
    """(optimizer, scheduler spec, steps before the error) whose Python ValueError message is recorded."""
    def sched(kind, **args):
        return {"type": kind, "args": args}
    adagrad = {"type": "adagrad", "lrs": [0.1, 0.01]}
    other = [
        (SGD2, sched("ConstantLR", factor=1.5), 0),
        (SGD2, sched("ConstantLR", factor=-0.5), 0),
        (SGD2, sched("LinearLR", start_factor=1.5), 0),
        (SGD2, sched("LinearLR", end_factor=2.0), 0),
        (SGD2, sched("LinearLR", end_factor=-0.1), 0),
        (SGD2, sched("CosineAnnealingWarmRestarts", T_0=0), 0),
        (SGD2, sched("CosineAnnealingWarmRestarts", T_0=-3), 0),
        (SGD2, sched("CosineAnnealingWarmRestarts", T_0=5, T_mult=0), 0),
        (SGD2, sched("LambdaLR", lr_lambda=["exp095", "exp095", "exp095"]), 0),
        (SGD2, sched("MultiplicativeLR", lr_lambda=["exp095"]), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1, total_steps=0), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1, total_steps=-5), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1, epochs=0, steps_per_epoch=10), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1, epochs=3, steps_per_epoch=-1), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1, total_steps=10, pct_start=1.5), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1, total_steps=10, pct_start=-0.1), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1, total_steps=10, anneal_strategy="exp"), 0),
        (SGD2, sched("OneCycleLR", max_lr=[0.1, 0.2, 0.3], total_steps=10), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1, total_steps=10, base_momentum=[0.8]), 0),
        (adagrad, sched("OneCycleLR", max_lr=0.1, total_steps=10), 0),
        (SGD2, sched("OneCycleLR", max_lr=0.1, total_steps=10), 11),
        (ADAM2, sched("OneCycleLR", max_lr=0.1, total_steps=37), 38),
        (SGD2, sched("CyclicLR", base_lr=0.01, max_lr=0.1, mode="tri"), 0),
        (SGD2, sched("CyclicLR", base_lr=[0.01], max_lr=0.1), 0),
        (SGD2, sched("CyclicLR", base_lr=0.01, max_lr=[0.1, 0.2, 0.3]), 0),
        (SGD2, sched("CyclicLR", base_lr=0.01, max_lr=0.1, max_momentum=[0.9, 0.9, 0.9]), 0),
        (adagrad, sched("CyclicLR", base_lr=0.01, max_lr=0.1), 0),
        (SGD2, sched("ReduceLROnPlateau", factor=1.0), 0),
        (SGD2, sched("ReduceLROnPlateau", factor=2.5), 0),
        (SGD2, sched("ReduceLROnPlateau", mode="avg"), 0),
        (SGD2, sched("ReduceLROnPlateau", threshold_mode="pct"), 0),
        (SGD2, sched("ReduceLROnPlateau", min_lr=[0.1, 0.2, 0.3]), 0),
        (SGD2, {"type": "SequentialLR", "schedulers": [sched("StepLR", step_size=3), sched("ExponentialLR", gamma=0.9)],
                "milestones": [3, 6]}, 0),
        (SGD2, {"type": "SequentialLR", "schedulers": [sched("StepLR", step_size=3), sched("ExponentialLR", gamma=0.9)],
                "milestones": []}, 0),
    ]
    out = []
    for optimizer_spec, spec, steps in other:
        optimizer = make_optimizer(optimizer_spec)
        try:
            if spec["type"] == "ReduceLROnPlateau":
                S.ReduceLROnPlateau(optimizer, **spec["args"])
            else:
                scheduler = make_scheduler(optimizer, spec)
                for _ in range(steps):
                    optimizer.step()
                    scheduler.step()
        except ValueError as e:
            out.append({"optimizer": optimizer_spec, "scheduler": spec, "steps": steps, "message": str(e)})
            continue
        raise AssertionError("no error for {}".format(spec))
    # Schedulers of another optimizer.
    for kind in ("SequentialLR", "ChainedScheduler"):
        first, second = make_optimizer(SGD2), make_optimizer(SGD2)
        inner = [S.StepLR(first, 3), S.ExponentialLR(second, 0.9)]
        try:
            if kind == "SequentialLR":
                S.SequentialLR(first, inner, [3])
            else:
                S.ChainedScheduler(inner)
        except ValueError as e:
            out.append({"optimizer": SGD2, "scheduler": {"type": kind, "other_optimizer_at": 1}, "steps": 0,
                        "message": str(e)})
    # A negative epoch for CosineAnnealingWarmRestarts.step(epoch).
    optimizer = make_optimizer(SGD2)
    try:
        S.CosineAnnealingWarmRestarts(optimizer, T_0=5).step(-1)
    except ValueError as e:
        out.append({"optimizer": SGD2, "scheduler": sched("CosineAnnealingWarmRestarts", T_0=5), "steps": 0,
                    "step_epoch": -1, "message": str(e)})
    return out


def random_cases(count, seed, steps=120):
    """Random (valid) argument sets, for checks beyond the committed cases:

        /usr/bin/python3 tests/golden/lr_golden.py --random 500 --seed 7 --out /tmp/lr_random.json
        TORCHKIT_LR_GOLDEN=/tmp/lr_random.json build/tests/test_lr
    """
    import random
    rng = random.Random(seed)
    kinds = ["StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR",
             "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "LambdaLR", "MultiplicativeLR", "OneCycleLR",
             "CyclicLR", "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau"]

    def value(low, high):
        return round(rng.uniform(low, high), rng.choice([2, 4, 17]))

    def simple(kind, optimizer_type, group_count, steps):
        a = {}
        if kind == "StepLR":
            a = {"step_size": rng.randint(1, 50), "gamma": value(0.0, 1.5)}
        elif kind == "MultiStepLR":
            a = {"milestones": sorted(rng.randint(0, steps) for _ in range(rng.randint(0, 5))),
                 "gamma": value(0.0, 1.2)}
        elif kind == "ConstantLR":
            a = {"factor": value(0.01, 1.0), "total_iters": rng.randint(1, 100)}
        elif kind == "LinearLR":
            a = {"start_factor": value(0.01, 1.0), "end_factor": value(0.0, 1.0), "total_iters": rng.randint(1, 150)}
        elif kind == "ExponentialLR":
            a = {"gamma": value(0.8, 1.05)}
        elif kind == "PolynomialLR":
            a = {"total_iters": rng.randint(1, 300), "power": value(0.0, 4.0)}
        elif kind == "CosineAnnealingLR":
            a = {"T_max": rng.randint(1, 150), "eta_min": rng.choice([0, value(0.0, 0.01)])}
        elif kind == "CosineAnnealingWarmRestarts":
            a = {"T_0": rng.randint(1, 40), "T_mult": rng.randint(1, 3), "eta_min": rng.choice([0, value(0, 0.01)])}
        elif kind in ("LambdaLR", "MultiplicativeLR"):
            names = sorted(LAMBDAS)
            a = {"lr_lambda": rng.choice(names) if rng.random() < 0.5 else
                 [rng.choice(names) for _ in range(group_count)]}
        elif kind == "OneCycleLR":
            max_lr = value(0.001, 1.0)
            a = {"max_lr": max_lr if rng.random() < 0.5 else [value(0.001, 1.0) for _ in range(group_count)],
                 "pct_start": value(0.05, 0.95), "anneal_strategy": rng.choice(["cos", "linear"]),
                 "three_phase": rng.random() < 0.5, "div_factor": value(1.0, 100.0),
                 "final_div_factor": value(1.0, 1e5), "cycle_momentum": rng.random() < 0.7}
            if rng.random() < 0.5:
                a["total_steps"] = steps + rng.randint(0, 50)
            else:
                a["steps_per_epoch"] = rng.randint(1, 20)
                a["epochs"] = steps // a["steps_per_epoch"] + 1
            if a["cycle_momentum"]:
                a["base_momentum"] = value(0.5, 0.9)
                a["max_momentum"] = [value(0.9, 0.99) for _ in range(group_count)]
        elif kind == "CyclicLR":
            base = value(1e-4, 0.01)
            a = {"base_lr": base if rng.random() < 0.5 else [value(1e-4, 0.01) for _ in range(group_count)],
                 "max_lr": value(0.01, 0.5), "step_size_up": rng.randint(1, 40),
                 "mode": rng.choice(["triangular", "triangular2", "exp_range"]), "gamma": value(0.9, 1.0),
                 "cycle_momentum": optimizer_type in ("sgd", "rmsprop") and rng.random() < 0.7}
            if rng.random() < 0.5:
                a["step_size_down"] = rng.randint(1, 40)
            if rng.random() < 0.3:
                a["scale_fn"] = rng.choice(sorted(SCALE_FNS))
                a["scale_mode"] = rng.choice(["cycle", "iterations"])
            if a["cycle_momentum"]:
                a["base_momentum"] = [value(0.5, 0.85) for _ in range(group_count)]
                a["max_momentum"] = value(0.85, 0.99)
        return {"type": kind, "args": a}

    out = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        optimizer_type = rng.choice(["sgd", "adam", "adamw", "rmsprop"])
        group_count = rng.randint(1, 3)
        optimizer = {"type": optimizer_type, "lrs": [value(1e-4, 0.5) for _ in range(group_count)]}
        record_momentum = optimizer_type != "adam" or kind != "CyclicLR"
        case = {"name": "random {} #{}".format(kind, index), "optimizer": optimizer, "steps": steps,
                "record_momentum": record_momentum}
        if kind == "ReduceLROnPlateau":
            args = {"mode": rng.choice(["min", "max"]), "factor": value(0.0, 0.99), "patience": rng.randint(0, 12),
                    "threshold": rng.choice([0.0, value(0, 0.1)]), "threshold_mode": rng.choice(["rel", "abs"]),
                    "cooldown": rng.randint(0, 6), "min_lr": rng.choice([0, value(0, 1e-3)]),
                    "eps": rng.choice([1e-8, value(0, 1e-3)])}
            case["scheduler"] = {"type": kind, "args": args}
            curve = metric_sequence(rng.choice(["loss", "accuracy", "flat"]), steps)
            case["metrics"] = [m + rng.uniform(-0.05, 0.05) * rng.random() for m in curve]
            del case["steps"], case["record_momentum"]
        elif kind in ("SequentialLR", "ChainedScheduler"):
            children = [simple(rng.choice(kinds[:10]), optimizer_type, group_count, steps)
                        for _ in range(rng.randint(2, 4))]
            if kind == "SequentialLR":
                if rng.random() < 0.3:
                    children[0] = simple("OneCycleLR", optimizer_type, group_count, steps)
                    children[0]["args"]["cycle_momentum"] = False
                case["scheduler"] = {"type": kind, "schedulers": children,
                                     "milestones": sorted(rng.randint(1, steps) for _ in children[1:])}
            else:
                case["scheduler"] = {"type": kind, "schedulers": children}
        else:
            case["scheduler"] = simple(kind, optimizer_type, group_count, steps)
        out.append(case)
    return out


def main():
    import argparse
    import warnings
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--random", type=int, default=0, help="write this many random cases instead")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None)
    options = parser.parse_args()
    if options.random:
        data = {"torch_version": torch.__version__,
                "cases": [run_case(c) for c in random_cases(options.random, options.seed)], "errors": []}
    else:
        data = {"torch_version": torch.__version__, "cases": [run_case(c) for c in cases()], "errors": errors()}
    path = options.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "lr.json")
    with open(path, "w") as f:
        f.write('{"torch_version": %s,\n"cases": [\n' % json.dumps(data["torch_version"]))
        f.write(",\n".join(json.dumps(c) for c in data["cases"]))
        f.write('],\n"errors": [\n')
        f.write(",\n".join(json.dumps(e) for e in data["errors"]))
        f.write("]}\n")
    print("wrote {}: {} cases, {} errors".format(path, len(data["cases"]), len(data["errors"])))


if __name__ == "__main__":
    main()
