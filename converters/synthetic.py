"""The built-in demo dataset: 10 procedurally drawn pattern classes, 32x32 RGB.

Deterministic for a seed, needs no download, and learnable from scratch in a few CPU
minutes: each class is a spatial pattern (stripes in four orientations, checkerboard,
disc, ring, cross, square, dots) drawn with random colours, phase, position and scale,
plus pixel noise, so neither colour nor position alone gives the class away.
"""
from __future__ import annotations

import numpy as np

CLASSES = ("hstripes", "vstripes", "diag", "antidiag", "checker", "disc", "ring", "cross",
           "square", "dots")
SIZE = 32


def _masks(kind: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean foreground masks (N, SIZE, SIZE) for class indices `kind`."""
    n = len(kind)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    yy, xx = yy[None], xx[None]
    period = rng.uniform(5, 9, (n, 1, 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    cy = rng.uniform(10, 22, (n, 1, 1)).astype(np.float32)
    cx = rng.uniform(10, 22, (n, 1, 1)).astype(np.float32)
    r = rng.uniform(5, 9, (n, 1, 1)).astype(np.float32)
    wave = lambda t: np.sin(2 * np.pi * t / period + phase) > 0  # noqa: E731
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    cheb = np.maximum(np.abs(yy - cy), np.abs(xx - cx))
    candidates = np.stack([
        wave(yy), wave(xx), wave(xx + yy), wave(xx - yy),
        wave(xx) ^ wave(yy),
        dist < r,
        np.abs(dist - r) < 1.6,
        (np.abs(yy - cy) < 2) | (np.abs(xx - cx) < 2),
        np.abs(cheb - r) < 1.6,
        (np.sin(2 * np.pi * xx / 6 + phase) > 0.7) & (np.sin(2 * np.pi * yy / 6 + phase) > 0.7),
    ])                                                   # (10, N, H, W)
    return candidates[kind, np.arange(n)]


def make_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (uint8 NHWC) and labels, balanced across classes, in a fixed order."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % len(CLASSES)
    rng.shuffle(labels)
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    for start in range(0, count, 1024):          # bounded memory for large counts
        kind = labels[start:start + 1024]
        n = len(kind)
        mask = _masks(kind, rng)[..., None]
        fg = rng.uniform(0, 255, (n, 1, 1, 3))
        bg = rng.uniform(0, 255, (n, 1, 1, 3))
        # keep foreground and background distinguishable: push them apart in brightness
        gap = np.abs(fg.mean(-1, keepdims=True) - bg.mean(-1, keepdims=True)) < 60
        fg = np.where(gap, 255 - bg, fg)
        img = np.where(mask, fg, bg) + rng.normal(0, 12, (n, SIZE, SIZE, 3))
        images[start:start + n] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels
