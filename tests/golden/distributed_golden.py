#!/usr/bin/env python3
"""Writes distributed.json: the indices torch.utils.data.DistributedSampler yields, for
tests/test_distributed.cpp (torchkit::dist::DistributedSampler must give the same).

Run with a Python that has PyTorch (Debian: /usr/bin/python3, PyTorch 1.13):
    /usr/bin/python3 tests/golden/distributed_golden.py

Covers data set sizes that do and do not divide by the number of replicas, sizes below it and
zero, shuffle on and off, several seeds and epochs (set_epoch), drop_last on and off, every rank.
"""
import json
import os

import torch
from torch.utils.data import DistributedSampler


class Sized:
    """A data set of `n` items; DistributedSampler only asks for len()."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def cases():
    out = []
    for size in (0, 1, 3, 7, 10, 12, 101, 1000):
        for replicas in (1, 2, 3, 4, 8):
            for shuffle in (False, True):
                for drop_last in (False, True):
                    seeds = (0, 1234) if shuffle else (0,)
                    epochs = (0, 1, 5) if shuffle else (0,)
                    if size == 1000 and replicas not in (3, 8):
                        continue
                    for seed in seeds:
                        for epoch in epochs:
                            for rank in range(replicas):
                                sampler = DistributedSampler(Sized(size), num_replicas=replicas, rank=rank,
                                                             shuffle=shuffle, seed=seed, drop_last=drop_last)
                                sampler.set_epoch(epoch)
                                indices = list(iter(sampler))
                                assert len(indices) == len(sampler)
                                out.append({"size": size, "num_replicas": replicas, "rank": rank,
                                            "shuffle": shuffle, "seed": seed, "epoch": epoch,
                                            "drop_last": drop_last, "indices": indices})
    return out


def main():
    data = {"torch_version": torch.__version__, "sampler": cases()}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed.json")
    with open(path, "w") as out:
        json.dump(data, out, separators=(",", ":"))
        out.write("\n")
    print(f"wrote {len(data['sampler'])} sampler cases to {path}")


if __name__ == "__main__":
    main()
