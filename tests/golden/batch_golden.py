#!/usr/bin/env python3
"""Writes batch.json: images and the batches tests/test_batch.cpp expects from image_to_batch.

Run with a Python that has PyTorch (Debian: /usr/bin/python3):
    /usr/bin/python3 tests/golden/batch_golden.py

The expected batch is computed the way a Python user writes it, in float32, without torchvision:
    x = image.permute(2, 0, 1).float()               # HWC -> CHW
    x = x[[2, 1, 0] (+ [3])]                           # BGR(A) -> RGB(A), when asked
    x = (x * scale - mean[:, None, None]) / std[:, None, None]
    batch = x.unsqueeze(0)
A case with "crop" stores a larger image; the test crops it with a view ([y0:y1, x0:x1]) and the
expected batch is computed from the crop.
"""
import json
import os

import torch

torch.manual_seed(4)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def case(name, image, scale=1 / 255, mean=(), std=(), bgr_to_rgb=False, crop=None):
    channels = image.shape[2]
    region = image if crop is None else image[crop[0]:crop[1], crop[2]:crop[3]]
    x = region.permute(2, 0, 1).float()
    if bgr_to_rgb and channels >= 3:
        x = x[[2, 1, 0] + ([3] if channels == 4 else [])]
    mean_list = [0.0] * channels if not mean else list(mean) * channels if len(mean) == 1 else list(mean)
    std_list = [1.0] * channels if not std else list(std) * channels if len(std) == 1 else list(std)

    def normalise(values, dtype):
        mean_t = torch.tensor(mean_list, dtype=dtype)[:, None, None]
        std_t = torch.tensor(std_list, dtype=dtype)[:, None, None]
        return ((values.to(dtype) * scale - mean_t) / std_t).unsqueeze(0)

    expected = normalise(x, torch.float32)
    expected64 = normalise(x, torch.float64)  # for the Double output
    return {"name": name, "dtype": "uint8" if image.dtype == torch.uint8 else "float",
            "image": image.tolist(), "shape": list(image.shape), "crop": crop,
            "scale": scale, "mean": list(mean), "std": list(std), "bgr_to_rgb": bgr_to_rgb,
            "expected": expected.tolist(), "expected_shape": list(expected.shape),
            "expected_double": expected64.tolist()}


def uint8_image(h, w, c):
    return torch.randint(0, 256, (h, w, c), dtype=torch.uint8)


cases = [
    case("bgr imagenet 3 channels", uint8_image(5, 7, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr_to_rgb=True),
    # Wide enough for the 16-pixel SSE2 steps plus a tail.
    case("rgb 3 channels wide", uint8_image(3, 37, 3), mean=[0.5, 0.4, 0.3], std=[0.2, 0.3, 0.4]),
    case("bgra 4 channels", uint8_image(4, 6, 4), mean=[0.5], std=[0.25], bgr_to_rgb=True),
    case("gray 1 channel", uint8_image(3, 20, 1)),
    case("gray 1 channel bgr flag ignored", uint8_image(2, 5, 1), mean=[0.5], std=[0.5], bgr_to_rgb=True),
    case("float 3 channels", torch.rand(4, 9, 3), scale=1.0, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0]),
    case("float 4 channels bgr", torch.rand(3, 5, 4) * 255, mean=[0.1, 0.2, 0.3, 0.4], std=[1.0, 2.0, 3.0, 4.0],
         bgr_to_rgb=True),
    case("float 1 channel", torch.rand(2, 11, 1), scale=2.0, mean=[1.0]),
    case("crop of a larger image", uint8_image(12, 40, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr_to_rgb=True,
         crop=[2, 9, 5, 38]),
    case("crop 4 channels", uint8_image(6, 30, 4), mean=[0.5], std=[0.5], crop=[1, 5, 3, 26]),
    case("negative std", uint8_image(2, 3, 3), mean=[0.5], std=[-0.5]),
]

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "batch.json")
with open(path, "w") as out:
    json.dump({"generator": "batch_golden.py", "torch": torch.__version__, "cases": cases}, out)
    out.write("\n")
print("wrote", path)
