#!/usr/bin/env python3
"""Writes one_hot.json: expected one-hot targets for tests/test_one_hot.cpp.

Run with a Python that has PyTorch (Debian: /usr/bin/python3):
    /usr/bin/python3 tests/golden/one_hot_golden.py

Plain one-hot rows come from torch.nn.functional.one_hot. Smoothed targets are the ones
CrossEntropyLoss(label_smoothing=s) uses, (1 - s) * one_hot + s / C; each smoothed case also
stores the CrossEntropyLoss value for a set of logits, so the test can check that
-(targets * log_softmax(logits)).sum(-1), averaged over the labels that are not ignored, gives
the same loss (and this script checks that identity against PyTorch before writing it).
"""
import json
import os

import torch
import torch.nn.functional as F

torch.manual_seed(5)
DTYPES = {"uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


def plain(name, labels, num_classes, dtype):
    labels = torch.tensor(labels, dtype=DTYPES[dtype])
    expected = F.one_hot(labels.long(), num_classes)
    return {"name": name, "labels": labels.tolist(), "shape": list(labels.shape), "label_dtype": dtype,
            "num_classes": num_classes, "expected": expected.tolist(),
            "expected_shape": list(expected.shape)}


def smoothed(name, labels, num_classes, smoothing, ignore_index=None, dtype="int64"):
    labels = torch.tensor(labels, dtype=DTYPES[dtype])
    wide = labels.long()
    ignored = wide == ignore_index if ignore_index is not None else torch.zeros_like(wide, dtype=torch.bool)
    expected = (1 - smoothing) * F.one_hot(wide.masked_fill(ignored, 0), num_classes).double() + smoothing / num_classes
    expected[ignored] = 0
    logits = torch.randn(*labels.shape, num_classes, dtype=torch.float64)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing,
                                        ignore_index=ignore_index if ignore_index is not None else -100)
    # CrossEntropyLoss wants the classes in dimension 1.
    flat_logits = logits.reshape(-1, num_classes)
    loss = loss_fn(flat_logits, wide.reshape(-1)).item()
    # The identity the C++ test relies on.
    per_row = -(expected.reshape(-1, num_classes) * flat_logits.log_softmax(-1)).sum(-1)
    kept = (~ignored).reshape(-1)
    assert abs(per_row[kept].sum().item() / kept.sum().item() - loss) < 1e-12, name
    return {"name": name, "labels": labels.tolist(), "shape": list(labels.shape), "label_dtype": dtype,
            "num_classes": num_classes, "smoothing": smoothing, "ignore_index": ignore_index,
            "expected": expected.tolist(), "expected_shape": list(expected.shape),
            "logits": logits.tolist(), "cross_entropy": loss}


cases = [
    # The tip: class_num = 8, batch_size = 4.
    plain("tip", [3, 4, 2, 1], 8, "int64"),
    plain("matrix int32", torch.randint(0, 5, (2, 3)).tolist(), 5, "int32"),
    plain("uint8", [0, 255, 7, 128], 256, "uint8"),
    plain("int8", [[0, 1], [2, 3], [1, 0]], 4, "int8"),
    plain("int16 3-d", torch.randint(0, 6, (2, 2, 3)).tolist(), 6, "int16"),
    plain("one class", [0, 0, 0], 1, "int64"),
    plain("scalar", 2, 3, "int64"),
    smoothed("smoothing 0.1", torch.randint(0, 5, (6,)).tolist(), 5, 0.1),
    smoothed("smoothing 0.3 matrix", torch.randint(0, 7, (3, 4)).tolist(), 7, 0.3, dtype="int32"),
    smoothed("smoothing with ignore 255", [1, 255, 0, 4, 255, 2], 5, 0.2, ignore_index=255, dtype="uint8"),
    smoothed("ignore -100 no smoothing", [2, -100, 0, 3], 4, 0.0, ignore_index=-100),
]

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "one_hot.json")
with open(path, "w") as out:
    json.dump({"generator": "one_hot_golden.py", "torch": torch.__version__, "cases": cases}, out)
    out.write("\n")
print("wrote", path)
