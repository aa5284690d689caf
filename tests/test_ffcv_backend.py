"""FFCV-specific behaviour; the loader contract itself is checked for every backend,
FFCV included, in test_loaders.py.

FFCV's numba code compiles on each Loader's first epoch (~1 s; ~20 s with FFCV's own
augmentation ops), so the backend shares Loaders between configurations.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")      # every test here is an FFCV case (the other backends run in test_loaders.py)

from loader_checks import (EDGE_N, check_offsets_and_flips, edge_images, epoch, infer_augmentation,  # noqa: E402
                           stored, to_u8)
from normfast.errors import NormfastError  # noqa: E402
from normfast.loaders import build_loader, epoch_order  # noqa: E402
from normfast.loaders.ffcv_backend import ffcv_uint8_loader  # noqa: E402
from normfast.compat import keep_torch_threads  # noqa: E402


@pytest.fixture(scope="module")
def synthetic(synthetic_dir):
    return synthetic_dir


def loader(data_dir, norm="minmax", augment=False, batch_size=128, **kw):
    kw.setdefault("device", "cpu")
    return build_loader(data_dir, "train", "ffcv", batch_size, norm, augment, **kw)


def test_same_batches_as_resident(synthetic):
    """The order is the contract's epoch_order and the augmentation the shared seeded op, so
    with the same seed FFCV and resident yield identical batches, epoch for epoch."""
    kw = dict(norm="finetune", augment=True, shuffle=True, seed=3, batch_size=64)
    ff = loader(synthetic, **kw)
    res = build_loader(synthetic, "train", "resident", 64, "finetune", True, device="cpu", shuffle=True, seed=3)
    _, labels = stored(synthetic)
    for e in (0, 2):
        ff.set_epoch(e)
        res.set_epoch(e)
        xf, yf, _ = epoch(ff)
        xr, yr, _ = epoch(res)
        assert torch.equal(xf, xr) and torch.equal(yf, yr)
        assert np.array_equal(yf.numpy(), labels[epoch_order(600, 3, e, True)])


def test_ffcv_augment_mode(synthetic):
    """ffcv_augment="ffcv": FFCV's own flip+translate (not seeded), then normalization."""
    with pytest.raises(NormfastError, match="ffcv_augment"):
        loader(synthetic, augment=True, ffcv_augment="bogus")
    images, labels = stored(synthetic)
    ld = loader(synthetic, "minmax", augment=True, batch_size=200, ffcv_augment="ffcv")
    x, y, batches = epoch(ld)
    assert [len(b[1]) for b in batches] == [200, 200, 200]
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    assert np.array_equal(y.numpy(), labels)
    offsets, flips = infer_augmentation(to_u8(x), images)   # padding 0, labels follow images
    check_offsets_and_flips(offsets, flips)
    x2, _, _ = epoch(ld)
    assert not torch.equal(x, x2)                           # new crops each epoch


def test_torch_thread_count_unchanged(edge):
    data = edge
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)      # neither ffcv's 1 nor num_workers
        ld = loader(data, "finetune", augment=True, shuffle=True, batch_size=8, num_workers=2)
        assert torch.get_num_threads() == 3
        for _ in ld:
            assert torch.get_num_threads() == 3
        it = iter(ld)
        next(it)
        del it
        list(ffcv_uint8_loader(data / "ffcv" / "train.beton", 16, num_workers=1))
        assert torch.get_num_threads() == 3
        with keep_torch_threads():
            torch.set_num_threads(1)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_uint8_readback(edge, synthetic):
    data, images = edge, edge_images()
    beton = data / "ffcv" / "train.beton"
    batches = list(ffcv_uint8_loader(beton, 7))
    assert all(b[0].dtype == torch.uint8 and b[1].dtype == torch.int64 for b in batches)
    assert np.array_equal(torch.cat([b[0] for b in batches]).numpy(), images)   # NHWC, cloned
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(EDGE_N))
    ones = list(ffcv_uint8_loader(beton, 1))                 # a batch of one keeps its label dim
    assert len(ones) == EDGE_N and ones[0][1].shape == (1,)
    dropped = ffcv_uint8_loader(beton, 7, shuffle=True, seed=1, drop_last=True)
    y = torch.cat([b[1] for b in dropped])
    assert len(dropped) == 8 and y.tolist() == epoch_order(EDGE_N, 1, 0, True)[:56].tolist()

    from normfast.manifest import load_manifest
    from normfast.readback import iter_ffcv
    images, labels = stored(synthetic)
    got = list(iter_ffcv(load_manifest(synthetic), "train", 256))
    assert np.array_equal(np.concatenate([b[0] for b in got]), images)
    assert np.array_equal(np.concatenate([b[1] for b in got]), labels)


def test_missing_or_wrong_file_is_a_clear_error(edge, tmp_path):
    data = edge
    manifest = json.loads((data / "manifest.json").read_text())
    bad = tmp_path / "bad"
    (bad / "ffcv").mkdir(parents=True)
    manifest["splits"]["train"]["count"] = EDGE_N + 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NormfastError, match="train.beton: missing"):
        loader(bad)
    (bad / "ffcv" / "train.beton").write_bytes((data / "ffcv" / "train.beton").read_bytes())
    with pytest.raises(NormfastError, match="manifest.json says 61"):
        loader(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_same_as_resident_and_ffcv_augment(synthetic):
    """On the GPU too: the same batches as resident, and FFCV's own augmentation mode works."""
    images, _ = stored(synthetic)
    kw = dict(augment=True, shuffle=True, device="cuda", seed=1)
    xf, yf, _ = epoch(loader(synthetic, "finetune", **kw))
    xr, yr, _ = epoch(build_loader(synthetic, "train", "resident", 128, "finetune", **kw))
    assert xf.device.type == "cuda" and torch.equal(yf, yr) and torch.equal(xf, xr)
    xa, _, _ = epoch(loader(synthetic, "minmax", augment=True, device="cuda", batch_size=200,
                            ffcv_augment="ffcv"))
    check_offsets_and_flips(*infer_augmentation(to_u8(xa), images))


@pytest.mark.parametrize("background", [False, True])
def test_a_dying_ffcv_thread_is_one_error_line_within_seconds(synthetic, monkeypatch, background):
    """An exception in FFCV's own epoch thread (a CUDA OOM in ToDevice, a numba error) used to
    leave the loader, and the training loop, waiting forever on FFCV's queue: now the wait
    checks the thread and raises one NormfastError naming the cause; the next epoch runs."""
    import threading
    import time
    from ffcv.loader.epoch_iterator import EpochIterator
    ld = loader(synthetic, batch_size=64, background=background)     # 600 images: 10 chunks of one batch
    epoch(ld)
    real = EpochIterator.run_pipeline

    def dies(self, b_ix, *args):
        if b_ix == 2:
            raise MemoryError("CUDA out of memory (a test)")
        return real(self, b_ix, *args)
    monkeypatch.setattr(EpochIterator, "run_pipeline", dies)
    outcome = []

    def consume():
        try:
            epoch(ld)
            outcome.append("no error")
        except Exception as e:  # noqa: BLE001 - inspected below
            outcome.append(e)
    t0 = time.monotonic()
    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert outcome, "the loader hung on FFCV's dead thread"
    assert time.monotonic() - t0 < 5
    assert isinstance(outcome[0], NormfastError), outcome
    assert "FFCV's loader thread stopped" in str(outcome[0]) and "MemoryError: CUDA out of memory" in str(outcome[0])
    assert "\n" not in str(outcome[0])
    monkeypatch.undo()
    x, y, _ = epoch(ld)
    assert len(y) == 600
    ld.close()


def test_ffcv_allocates_its_epoch_buffers_once(synthetic, monkeypatch):
    """FFCV allocates an epoch's pinned and device buffers (5 chunks' worth) every epoch; the
    stream keeps them for its next epoch, and only an epoch overlapping another gets fresh ones."""
    import ffcv.pipeline.graph as graph_mod
    made = []
    real = graph_mod.allocate_query
    monkeypatch.setattr(graph_mod, "allocate_query", lambda *a: made.append(1) or real(*a))
    with loader(synthetic, batch_size=60) as ld:
        epoch(ld)
        first = len(made)
        assert first > 0
        for _ in range(3):
            epoch(ld)
        assert len(made) == first
        a, b = iter(ld), iter(ld)             # two epochs of one stream at once: separate buffers
        next(a), next(b)
        assert len(made) == 2 * first
        a.close(), b.close()
        x, y, _ = epoch(ld)
        assert len(made) == 2 * first and len(y) == 600
