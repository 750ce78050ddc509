#!/usr/bin/env python3
"""Writes test_image.png, the small image examples/04_image_to_batch.cpp reads.

    /usr/bin/python3 examples/data/make_test_image.py

64 x 48 pixels (so that h != w shows in the printed sizes), RGB: a colour gradient with a red
disc and a blue square, so that a BGR/RGB mix-up is visible when the image is shown.
"""
import os

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 64, 48
image = Image.new("RGB", (WIDTH, HEIGHT))
pixels = image.load()
for y in range(HEIGHT):
    for x in range(WIDTH):
        pixels[x, y] = (4 * x, 5 * y, 128)
draw = ImageDraw.Draw(image)
draw.ellipse((6, 8, 30, 32), fill=(230, 30, 30))
draw.rectangle((38, 14, 56, 32), fill=(20, 40, 220))
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_image.png")
image.save(path, optimize=True)
print("wrote", path, os.path.getsize(path), "bytes")
