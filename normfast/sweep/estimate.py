"""How long each run of a sweep takes, to run the longest first and to say how much is left.

seconds = images still to train (train images x epochs not done) / img/s, where img/s is, first
found:
1. `measured`: the mean train img/s of earlier runs of the same model and dataset on the same
   kind of device (their metrics.jsonl, first epoch left out when there are more);
2. `bench`: a `normfast bench train --json FILE` record of that model (its end-to-end img/s,
   scaled by pixels to the dataset's image size), given with --bench FILE;
3. `fallback`: FALLBACK_IPS below, scaled by pixels from 32 px.
Test epochs are not counted (about 1/5 of a train epoch's images, at a higher rate).
"""
from __future__ import annotations

import json
from pathlib import Path

from normfast.errors import NormfastError
from normfast.rundir import CONFIG, RunDir

# img/s at 32 px on one NVIDIA H200, bf16, eager, batch 256: resnet18 and resnet50 measured
# (benchmarks/results/gpu-check-NVIDIA-H200.md, dali rows); the DenseNets are not measured there,
# these two are guesses from their FLOPs relative to resnet50 (2.9 and 7.8 GFLOP at 224 px vs 4.1).
FALLBACK_IPS = {"resnet18": 21000.0, "resnet50": 8300.0, "densenet121": 4000.0, "densenet161": 2000.0}
FALLBACK_OTHER = 5000.0


def device_kind(device) -> str:
    """cpu or cuda; `auto` is what this machine would pick."""
    if str(device) == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu" if str(device or "").startswith("cpu") else "cuda"


class Estimator:
    def __init__(self, runs_root: Path, bench: str | None = None):
        self.runs_root = Path(runs_root)
        self._measured: dict | None = None
        self.bench = self._load_bench(bench) if bench else {}

    @staticmethod
    def _load_bench(path: str) -> dict:
        try:
            data = json.loads(Path(path).read_text())
            records = data["records"]
            out = {}
            for r in records:
                side = int(r.get("image_shape", [32])[0])
                ips = float(r["images_per_second"]) * (side / 32) ** 2      # per 32 px image
                out[r["model"]] = max(out.get(r["model"], 0.0), ips)
            return out
        except OSError as e:
            raise NormfastError(f"--bench {path}: cannot read it ({e.strerror or e})") from None
        except (ValueError, KeyError, TypeError, IndexError):
            raise NormfastError(f"--bench {path}: not a `normfast bench train --json` file "
                                "(expected records with model, images_per_second, image_shape)") from None

    def measured(self) -> dict:
        """(dataset folder, model, device kind) -> mean train img/s of the runs found."""
        if self._measured is None:
            sums: dict = {}
            for cfg_path in sorted(self.runs_root.glob(f"*/*/{CONFIG}")):
                rd = RunDir(cfg_path.parent)
                try:
                    cfg = rd.read_config()
                    rows = rd.read_metrics(strict=False)
                except NormfastError:
                    continue
                vals = [r.get("train_images_per_second") for r in (rows[1:] if len(rows) > 1 else rows)]
                vals = [v for v in vals if isinstance(v, (int, float)) and v > 0]
                if not vals or not isinstance(cfg, dict):
                    continue
                key = (cfg_path.parent.parent.name, str(cfg.get("model")), device_kind(cfg.get("device") or "cpu"))
                s = sums.setdefault(key, [0.0, 0])
                s[0] += sum(vals) / len(vals)
                s[1] += 1
            self._measured = {k: v[0] / v[1] for k, v in sums.items()}
        return self._measured

    def rate(self, p) -> tuple[float, str]:
        """(img/s, source) for one Prepared run."""
        got = self.measured().get((p.run_dir.parent.name, p.cfg.model, device_kind(p.cfg.device)))
        if got:
            return got, "measured"
        scale = (32 / max(p.image_side, 1)) ** 2
        if p.cfg.model in self.bench:
            return self.bench[p.cfg.model] * scale, "bench"
        return FALLBACK_IPS.get(p.cfg.model, FALLBACK_OTHER) * scale, "fallback"

    def seconds_left(self, p) -> tuple[float, str]:
        """Seconds of training left for one Prepared run, and the img/s source."""
        done = len(RunDir(p.run_dir).read_metrics(strict=False)) if p.run_dir.exists() else 0
        ips, source = self.rate(p)
        return max(0, p.cfg.epochs - done) * p.train_count / ips, source
