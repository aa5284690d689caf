"""The seed's published numbers (Normalization-Test): its results per configuration
(normfast/data/seed_results.csv) and its Table 1 after `pretrain`."""
from __future__ import annotations

import csv
from pathlib import Path

import normfast


SEED_DATASETS = {"CIFAR10": "cifar10", "CIFAR100": "cifar100", "SVHN": "svhn",
                 "tiny_imagenet_200": "tiny-imagenet-200"}
# The seed's Table 1, "ImageNet-1k stats." column: its train split after `pretrain` (published).
SEED_TABLE1_PRETRAIN = {
    "cifar10": ((0.03, 0.12, 0.18), (1.08, 1.09, 1.16)),
    "cifar100": ((0.10, 0.14, 0.16), (1.17, 1.15, 1.23)),
    "svhn": ((-0.21, -0.06, 0.30), (0.87, 0.90, 0.88)),
    "tiny-imagenet-200": ((-0.38, -0.04, 0.33), (1.23, 1.20, 1.23)),
}
# The seed read Tiny ImageNet with cv2.imread, so its published row is in B, G, R order
# (its first mean, -0.38, is the blue channel's 0.3975 under the red channel's ImageNet stats).
SEED_TABLE1_BGR = {"tiny-imagenet-200"}


def load_seed_results() -> dict:
    """{(dataset, model, norm): (best_acc, best_epoch)} from the seed's published results."""
    path = Path(normfast.__file__).parent / "data" / "seed_results.csv"
    out = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            ds = SEED_DATASETS.get(r["dataset"], r["dataset"].lower())
            out[(ds, r["model"], r["norm"])] = (float(r["best_acc"]), int(r["best_epoch"]))
    return out
