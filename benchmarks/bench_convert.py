"""Conversion speed (images/s) and peak memory per format.

Converts the synthetic source at --size (default 64x64) with --limit train images (test
gets limit/5) once per format, each in a fresh subprocess, and samples the memory of that
process tree every 0.2 s. Peak memory is the largest sum of PSS (proportional set size)
over the tree: memory shared by FFCV's forked writer processes is split between them
rather than counted once per process, so the sum is what the conversion really holds.

    python benchmarks/bench_convert.py --limit 100000 --size 64 --out benchmarks/results/convert-cpu.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from normfast.atomic import write_atomic, write_json  # noqa: E402
from normfast.bench import machine  # noqa: E402


def tree_pss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def run_one(fmt: str, limit: int, size: int, encoding: str, workdir: Path) -> dict:
    out = workdir / f"out-{fmt}"
    cmd = [sys.executable, "-m", "normfast", "convert", "synthetic", "--out", str(out), "--limit", str(limit),
           "--format", fmt, "--encoding", encoding, "--force", "-q"]
    if size != 32:
        cmd += ["--size", str(size)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(ps))
        time.sleep(0.2)
    seconds = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"convert failed for {fmt}: {stderr.strip()[-500:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    images = manifest["splits"]["train"]["count"] + manifest["splits"]["test"]["count"]
    size_bytes = sum(f["size"] for f in manifest["files"])
    shutil.rmtree(out)
    return {"format": fmt, "encoding": encoding, "images": images, "image_shape": manifest["image_shape"],
            "seconds_total": seconds, "seconds_in_convert": manifest["seconds"],
            "images_per_second": images / manifest["seconds"], "peak_memory_mb": peak / 2 ** 20,
            "output_mb": size_bytes / 2 ** 20}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100_000, help="train images (test: limit/5)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--formats", default="dali,ffcv")
    ap.add_argument("--encoding", default="raw")
    ap.add_argument("--out", type=Path, help="write JSON and a markdown table beside it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        records = [run_one(f, args.limit, args.size, args.encoding, Path(tmp)) for f in args.formats.split(",")]
    lines = ["| format | encoding | images | shape | images/s | peak memory (MB) | output (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['format']} | {r['encoding']} | {r['images']:,} | {'x'.join(map(str, r['image_shape']))} | "
                     f"{r['images_per_second']:,.0f} | {r['peak_memory_mb']:,.0f} | {r['output_mb']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        info = machine()
        write_json(args.out, {"machine": info, "records": records})
        write_atomic(args.out.with_suffix(".md"),
            f"# Conversion speed and peak memory\n\nMachine: {info['cpu']}, {info['cpus']} CPUs; "
            f"python {info['python']}, torch {info['torch']}, ffcv {info['ffcv']}, DALI {info['dali']}.\n"
            f"Command: `python benchmarks/bench_convert.py --limit {args.limit} --size {args.size}`\n\n{table}\n")


if __name__ == "__main__":
    main()
