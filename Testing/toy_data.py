"""Tiny synthetic datasets in the ``deepmorph dataset`` directory format, for the network tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def disc_sample(rng: np.random.Generator, size: int = 64, dark: bool | None = None):
    """A noisy image with one disc (dark or bright on a grey ramp) and its outline band masks (0/255)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.12, 0.25) * size
    cx, cy = rng.uniform(r + 2, size - r - 2, 2)
    d = np.hypot(xx - cx, yy - cy)
    dark = bool(rng.random() < 0.5) if dark is None else dark
    img = 120 + 40 * (xx / size) + rng.normal(0, 6, (size, size))
    img = np.where(d <= r, img + (-70 if dark else 70), img)
    head = (np.abs(d - r) <= 1.2).astype(np.uint8) * 255
    femur = (np.abs(np.maximum(np.abs(xx - cx), np.abs(yy - cy)) - r) <= 1.2).astype(np.uint8) * 255
    return np.clip(img, 0, 255).astype(np.uint8), head, femur, (cx, cy, r)


def write_toy_dataset(root: str | Path, n: int = 24, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` disc samples: manifest.json, samples/NNNNNN.png, _head.png, _femur.png, NNNNNN.json."""
    root = Path(root)
    (root / "samples").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, head, femur, (cx, cy, r) = disc_sample(rng, size)
        stem = root / "samples" / f"{i:06d}"
        Image.fromarray(img).save(f"{stem}.png")
        Image.fromarray(head).save(f"{stem}_head.png")
        Image.fromarray(femur).save(f"{stem}_femur.png")
        Path(f"{stem}.json").write_text(json.dumps({"head_circle": [cx, cy, r], "seed": seed, "polarity": "bone-dark"}))
    (root / "manifest.json").write_text(json.dumps({"generator_version": "toy-1", "settings": {"size": size},
                                                    "n": n, "seed": seed}))
    return root
