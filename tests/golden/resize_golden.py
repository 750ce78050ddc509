#!/usr/bin/env python3
"""Writes resize.json: what torchvision's tensor transforms and a cv2 letterbox make of test
images, for tests/test_batch.cpp (resize, center crop, letterbox) and tests/test_opencv.cpp.

Run with a Python that has torch 1.13 + torchvision 0.14 and cv2 (Debian: /usr/bin/python3 with
python3-torchvision and python3-opencv):
    /usr/bin/python3 tests/golden/resize_golden.py

The images are not stored: pixel (y, x, c) of a uint8 test image is
    (7 x^2 + 3 y^2 + 5 x y + 13 x + 11 y + 71 c + 37 seed) mod 256
(high frequencies everywhere, so that antialiasing matters), and the float image is that value
/ 255 in float32. The test rebuilds them with the same formula.

Classifier cases run the torchvision pipeline on the [C, H, W] tensor:
    x = F.resize(x, size, interpolation, max_size=max_size, antialias=antialias)
    x = F.center_crop(x, crop)                    # when there is a crop
    x = x.float()                                 # uint8 stays 0..255 (compared within 1 level)
    x = F.normalize(x * scale, mean, std)         # when there is a mean/std (float images)
Outputs of up to 1200 values are stored whole; larger ones as a grid of rows x columns (every
channel) plus the per-channel sum.

Letterbox cases follow the detectors (YOLOv5's utils/augmentations.py letterbox, written anew):
    r = min(new_h / h, new_w / w), r = min(r, 1) without scale-up
    new_unpad = (round(w * r), round(h * r))      # Python's round: half to even
    dw, dh = (new_w - new_unpad[0]) / 2, (new_h - new_unpad[1]) / 2
    cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR) when the size changes
    top, bottom = round(dh - 0.1), round(dh + 0.1); left, right likewise
    cv2.copyMakeBorder(..., BORDER_CONSTANT, value=(114, 114, 114))
so an odd padding puts the extra pixel at the bottom / right. cv2 computes INTER_LINEAR on
uint8 in fixed point (11-bit weights), so the test allows 1 level.
"""
import json
import os

import cv2
import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode

assert torchvision.__version__.startswith("0.14"), torchvision.__version__

MODES = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
         "bicubic": InterpolationMode.BICUBIC}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def pattern(h, w, c, seed):
    y = np.arange(h, dtype=np.int64)[:, None, None]
    x = np.arange(w, dtype=np.int64)[None, :, None]
    ch = np.arange(c, dtype=np.int64)[None, None, :]
    v = (7 * x * x + 3 * y * y + 5 * x * y + 13 * x + 11 * y + 71 * ch + 37 * seed) % 256
    return v.astype(np.uint8)


def number(v):
    """An integer as an integer, anything else with float32's 9 significant digits."""
    return int(v) if float(v).is_integer() else float(f"{v:.9g}")


def store(values):
    """values: [C, H, W] float64 numpy array."""
    c, h, w = values.shape
    if c * h * w <= 1200:
        return {"full": [number(v) for v in values.reshape(-1)]}
    rows = sorted(set(np.linspace(0, h - 1, min(h, 7)).round().astype(int).tolist()))
    cols = sorted(set(np.linspace(0, w - 1, min(w, 13)).round().astype(int).tolist()))
    grid = values[:, rows][:, :, cols]
    return {"rows": rows, "cols": cols, "grid": [number(v) for v in grid.reshape(-1)],
            "sums": [float(values[i].sum()) for i in range(c)]}


def classifier(name, shape, dtype, size, interpolation="bilinear", antialias=True, max_size=None,
               crop=None, mean=None, std=None, seed=0):
    h, w, c = shape
    image = torch.from_numpy(pattern(h, w, c, seed)).permute(2, 0, 1).contiguous()
    if dtype == "float32":
        image = image.float() / 255
    x = F.resize(image, size, MODES[interpolation], max_size=max_size, antialias=antialias)
    resized = list(x.shape[1:])
    if crop is not None:
        x = F.center_crop(x, crop)
    x = x.float()
    if mean is not None:
        x = F.normalize(x, mean, std)
    entry = {"name": name, "shape": list(shape), "dtype": dtype, "seed": seed,
             "size": size if isinstance(size, list) else [size], "interpolation": interpolation,
             "antialias": antialias, "max_size": max_size, "crop": crop, "mean": mean, "std": std,
             "resized": resized, "out": list(x.shape)}
    entry.update(store(x.double().numpy()))
    return entry


def letterbox(name, shape, new_shape=(640, 640), scale_up=True, seed=0):
    h, w, c = shape
    im = pattern(h, w, c, seed)
    r = min(new_shape[0] / h, new_shape[1] / w)
    if not scale_up:
        r = min(r, 1.0)
    new_unpad = int(round(w * r)), int(round(h * r))
    dw, dh = (new_shape[1] - new_unpad[0]) / 2, (new_shape[0] - new_unpad[1]) / 2
    if (w, h) != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    if im.ndim == 2:
        im = im[:, :, None]
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114, 114))
    if im.ndim == 2:
        im = im[:, :, None]
    values = np.ascontiguousarray(im.transpose(2, 0, 1)).astype(np.float64)
    entry = {"name": name, "shape": list(shape), "seed": seed, "new_shape": list(new_shape),
             "scale_up": scale_up, "scale": r, "pad_top": top, "pad_left": left,
             "unpadded": [new_unpad[1], new_unpad[0]], "out": list(values.shape)}
    entry.update(store(values))
    return entry


def main():
    cases = []
    for dtype in ("uint8", "float32"):
        t = "u8" if dtype == "uint8" else "f32"
        for mode in ("bilinear", "bicubic", "nearest"):
            # 0.14 refuses antialias=True for nearest (>= 0.17 ignores it); torchkit ignores it.
            for aa in ((True, False) if mode != "nearest" else (False,)):
                tag = f"{t}_{mode}{'_aa' if aa else ''}"
                cases.append(classifier(f"1x1_up_{tag}", (1, 1, 3), dtype, 4, mode, aa, seed=1))
                cases.append(classifier(f"3x500_{tag}", (3, 500, 3), dtype, [7, 129], mode, aa, seed=2))
                cases.append(classifier(f"500x3_{tag}", (500, 3, 1), dtype, [2, 1], mode, aa, seed=3))
                cases.append(classifier(f"17x23_up_{tag}", (17, 23, 4), dtype, [40, 51], mode, aa, seed=4))
                cases.append(classifier(f"333x517_{tag}", (333, 517, 3), dtype, 256, mode, aa, crop=[224, 224],
                                        seed=5))
                cases.append(classifier(f"1080x1920_{tag}", (1080, 1920, 3), dtype, 256, mode, aa,
                                        crop=[224, 224], seed=6))
    # max_size, crops larger than the image (zero padding, torchvision's split), odd crops.
    cases.append(classifier("max_size_u8", (100, 400, 3), "uint8", 60, max_size=120, seed=7))
    cases.append(classifier("max_size_unused_f32", (300, 200, 3), "float32", 50, max_size=100, seed=8))
    cases.append(classifier("pad_crop_u8", (5, 7, 3), "uint8", [6, 9], crop=[11, 14], seed=9))
    cases.append(classifier("pad_crop_f32_bicubic", (9, 6, 1), "float32", [7, 4], "bicubic", crop=[10, 3],
                            seed=10))
    cases.append(classifier("odd_crop_u8", (333, 517, 3), "uint8", 101, crop=[33, 50], seed=11))
    cases.append(classifier("normalise_f32", (333, 517, 3), "float32", 256, crop=[224, 224],
                            mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=12))
    cases.append(classifier("same_size_crop_u8", (40, 60, 3), "uint8", [40, 60], crop=[21, 33], seed=13))

    boxes = [letterbox("1080x1920", (1080, 1920, 3), seed=20),
             letterbox("333x517_up", (333, 517, 3), seed=21),
             letterbox("333x517_no_scale_up", (333, 517, 3), scale_up=False, seed=21),
             letterbox("300x401_odd_pad", (300, 401, 3), (320, 320), seed=22),
             letterbox("gray_77x50", (77, 50, 1), (64, 96), seed=23),
             letterbox("same_640", (640, 640, 3), seed=24)]

    out = {"generator": "tests/golden/resize_golden.py", "torch": torch.__version__,
           "torchvision": torchvision.__version__, "cv2": cv2.__version__,
           "classifier": cases, "letterbox": boxes}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resize.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path}: {len(cases)} resize cases, {len(boxes)} letterbox cases")


if __name__ == "__main__":
    main()
