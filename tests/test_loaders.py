"""Every backend against the loader contract and the float64 reference (CPU by default).

Each test runs once per backend (the `backend` fixture; a dali/ffcv case skips when its package
is missing, the others still run); the fixtures are written with the
shard writer (and FFCV's writer), so every backend reads the very same stored images.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.convert import ConvertConfig, convert
from loader_checks import (EDGE_N, backend_params, check_close, convert_formats, epoch,
                           infer_augmentation, needs, stored)
from normfast.errors import NormfastError
from normfast.loaders import build_loader, shard_bounds
from normfast.manifest import load_manifest
from normfast.normalization import PAD, SETTINGS, reference_augment, reference_normalize
from normfast.ops import Normalizer

BACKENDS = backend_params("dali", "ffcv", "resident", "torch")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def synthetic(synthetic_dir):
    """600 synthetic 32x32 images in both formats (conftest)."""
    return synthetic_dir


def loader(data_dir, backend, norm="minmax", augment=False, batch_size=128, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("num_workers", 2)
    return build_loader(data_dir, "train", backend, batch_size, norm, augment, **kw)


# ---------------------------------------------------------------- normalization, no augmentation

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("setting", SETTINGS)
def test_normalization_matches_reference(synthetic, setting, dtype, backend):
    images, labels = stored(synthetic)
    ld = loader(synthetic, backend, setting, dtype=dtype, batch_size=256)
    x, y, batches = epoch(ld)
    for xb, yb in batches:
        assert xb.dtype == getattr(torch, dtype) and xb.device.type == "cpu"
        assert xb.ndim == 4 and xb.shape[1:] == (3, 32, 32)
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert yb.dtype == torch.int64 and yb.ndim == 1 and len(yb) == len(xb)
    assert [len(b[1]) for b in batches] == [256, 256, 88]
    assert np.array_equal(y.numpy(), labels)
    check_close(x, reference_normalize(images, ld.cfg.spec), dtype)


@pytest.mark.parametrize("augment", [False, True])
def test_instance_constant_channels_give_zero(edge, augment, backend):
    images, _ = stored(edge)
    ld = loader(edge, backend, "instance", augment=augment, batch_size=16)
    x, y, _ = epoch(ld)
    assert not torch.isnan(x).any() and torch.isfinite(x).all()
    if not augment:
        ref = reference_normalize(images, ld.cfg.spec)
        assert (ref[:, 0] == 0).all() and (ref[::5] == 0).all()
        check_close(x, ref, "float32")


DTYPES = ("float32", "float16", "bfloat16")


@pytest.mark.parametrize("augment", [False, True])
def test_unnormalized_batches_normalize_to_the_reference(synthetic, augment, backend):
    """normalize=False: uint8 NCHW in channels-last memory, the very pixels the normalizing
    loader normalizes (order, crops, flips); `Normalizer.nchw` then gives what that loader
    yields, for every setting and dtype, within the dtype's rounding of the float64 reference."""
    images, labels = stored(synthetic)
    kw = dict(augment=augment, shuffle=True, seed=5, batch_size=256)
    with loader(synthetic, backend, "minmax", normalize=False, **kw) as raw:
        x, y, batches = epoch(raw)
        order = raw.epoch_indices(0)
        plan = raw.plan(0)
    for xb, yb in batches:
        assert xb.dtype == torch.uint8 and xb.shape[1:] == (3, 32, 32)
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert yb.dtype == torch.int64 and len(yb) == len(xb)
    assert np.array_equal(y.numpy(), labels[order])
    got = x.numpy().transpose(0, 2, 3, 1)
    if not augment:
        want = images[order]
    elif backend == "torch":          # torchvision draws its own crops: any pad+crop+flip of the image
        want = reference_augment(images[order], *infer_augmentation(got, images[order]))
    else:                             # the others: exactly the plan's crops and flips
        want = reference_augment(images[order], plan[1], plan[2])
    assert np.array_equal(got, want)
    for k, setting in enumerate(SETTINGS):
        with loader(synthetic, backend, setting, dtype=DTYPES[k % 3], **kw) as ld:
            xs, ys, _ = epoch(ld)
        assert torch.equal(ys, y)
        ref = reference_normalize(want, ld.cfg.spec)
        check_close(xs, ref, DTYPES[k % 3])                 # the normalizing loader ...
        for dtype in DTYPES:                                # ... and the separate device step
            out = Normalizer(ld.cfg.spec, "cpu", getattr(torch, dtype)).nchw(x)
            assert out.dtype == getattr(torch, dtype) and out.is_contiguous(memory_format=torch.channels_last)
            check_close(out, ref, dtype)
            if dtype == DTYPES[k % 3] and backend in ("resident", "ffcv"):   # the very same op
                assert torch.equal(out, xs)


# ---------------------------------------------------------------- augmentation

def test_augmentation_offsets_flips_and_padding(synthetic, backend):
    images, labels = stored(synthetic)
    n = len(images)
    x, y, _ = epoch(loader(synthetic, backend, "minmax", augment=True, seed=5, batch_size=200))
    assert np.array_equal(y.numpy(), labels)
    out = np.rint(x.numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    offsets, flips = infer_augmentation(out, images)
    for axis in (0, 1):   # uniform over 0..8: about 67 each, binomial sd ~8
        counts = np.bincount(offsets[:, axis], minlength=2 * PAD + 1)
        assert len(counts) == 2 * PAD + 1 and counts.min() > 30 and counts.max() < 110, counts
    assert 0.4 < flips.mean() < 0.6
    assert (offsets != PAD).any(axis=1).mean() > 0.8

    # the other settings draw the same offsets/flips for the same seed: padded pixels must be
    # the normalized value of pixel 0, and the whole batch must match the reference
    augmented = reference_augment(images, offsets, flips)
    for setting, dtype in (("finetune", "float32"), ("pretrain", "float16"), ("instance", "float32"),
                           ("instance", "bfloat16")):
        ld = loader(synthetic, backend, setting, augment=True, seed=5, batch_size=200, dtype=dtype)
        xs, ys, _ = epoch(ld)
        assert np.array_equal(ys.numpy(), labels)
        check_close(xs, reference_normalize(augmented, ld.cfg.spec), dtype)
    assert n == 600


def test_labels_follow_images_under_shuffle_and_augment(edge, backend):
    x, y, _ = epoch(loader(edge, backend, "minmax", augment=True, shuffle=True, seed=1, batch_size=8))
    assert sorted(y.tolist()) == list(range(EDGE_N))
    # output pixel (8, 8) always comes from inside the 16x16 image (|offset - PAD| <= 4)
    assert torch.equal(torch.round(x[:, 0, 8, 8] * 255).long(), y + 1)


# ---------------------------------------------------------------- epochs, order, sharding

def test_seed_fixes_order_and_augmentation_per_epoch(synthetic, backend):
    kw = dict(norm="finetune", augment=True, shuffle=True, batch_size=64)
    a, b = loader(synthetic, backend, seed=3, **kw), loader(synthetic, backend, seed=3, **kw)
    a0, b0 = next(iter(a)), next(iter(b))
    assert torch.equal(a0[0], b0[0]) and torch.equal(a0[1], b0[1])
    _, ya0, _ = epoch(loader(synthetic, backend, seed=3, **kw))
    first = loader(synthetic, backend, seed=3, **kw)
    epoch(first)
    xa1, ya1, _ = epoch(first)                     # epoch 1 after epoch 0
    jump = loader(synthetic, backend, seed=3, **kw)
    jump.set_epoch(1)
    xj1, yj1, _ = epoch(jump)                       # epoch 1 directly (a resumed run)
    assert torch.equal(xa1, xj1) and torch.equal(ya1, yj1)
    assert not torch.equal(ya0, ya1)
    # the pipeline started ahead for epoch 2 must not leak into a jump or a broken-off epoch
    first.set_epoch(5)
    x5, y5, _ = epoch(first)
    fresh = loader(synthetic, backend, seed=3, **kw)
    fresh.set_epoch(5)
    assert torch.equal(x5, epoch(fresh)[0])
    it = iter(fresh)                                # epoch 6, broken off after one batch
    next(it)
    del it
    x7, _, _ = epoch(fresh)
    jump.set_epoch(7)
    assert torch.equal(x7, epoch(jump)[0])
    _, yc0, _ = epoch(loader(synthetic, backend, seed=4, **kw))
    assert not torch.equal(ya0, yc0)
    assert sorted(ya1.tolist()) == sorted(ya0.tolist())


def test_no_shuffle_is_stored_order_every_epoch(edge, backend):
    ld = loader(edge, backend, batch_size=7)
    for _ in range(2):
        _, y, batches = epoch(ld)
        assert y.tolist() == list(range(EDGE_N)) and len(batches) == 9


def test_shuffle_visits_every_sample_once(edge, backend):
    ld = loader(edge, backend, shuffle=True, augment=True, batch_size=7, seed=11)
    orders = []
    for _ in range(3):
        x, y, batches = epoch(ld)
        assert len(ld) == len(batches) == 9 and [len(b[1]) for b in batches][-1] == 4
        assert sorted(y.tolist()) == list(range(EDGE_N))
        assert torch.equal(torch.round(x[:, 0, 8, 8] * 255).long(), y + 1)
        orders.append(y.tolist())
    assert orders[0] != orders[1] != orders[2]
    assert orders[0] != list(range(EDGE_N))


def test_shuffle_is_a_full_permutation(indexed, backend):
    """Not a local shuffle from a small buffer: any sample of the WHOLE split can come first,
    on every rank (a rank's share is drawn from all of it, not from a block of stored order)."""
    for rank, world_size in ((0, 1), (1, 2)):
        start, stop = shard_bounds(2500, rank, world_size)
        ld = loader(indexed, backend, shuffle=True, rank=rank, world_size=world_size, batch_size=500, seed=4)
        x, _, _ = epoch(ld)
        pix = torch.round(x * 255).long()
        idx = (pix[:, 0, 0, 0] * 256 + pix[:, 1, 0, 0]).numpy()
        assert len(idx) == len(set(idx.tolist())) == stop - start
        assert abs(np.corrcoef(np.arange(len(idx)), idx)[0, 1]) < 0.1
        first = idx[:len(idx) // 10]
        assert first.min() < 0.2 * 2500 and first.max() > 0.8 * 2500


def test_drop_last(edge, backend):
    ld = loader(edge, backend, shuffle=True, drop_last=True, batch_size=16, seed=2)
    assert len(ld) == 3 and ld.num_samples == 48
    for _ in range(2):
        _, y, batches = epoch(ld)
        assert [len(b[1]) for b in batches] == [16, 16, 16]
        assert len(set(y.tolist())) == 48


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_ranks_are_disjoint_and_complete(edge, world_size, backend):
    for shuffle in (False, True):
        seen = []
        for rank in range(world_size):
            ld = loader(edge, backend, shuffle=shuffle, rank=rank, world_size=world_size, batch_size=4, seed=9)
            _, y, _ = epoch(ld)
            assert len(y) == ld.num_samples == ld.shard_count
            start, stop = shard_bounds(EDGE_N, rank, world_size)
            assert len(y) == stop - start
            if not shuffle:                     # test order: rank r's block of stored order
                assert y.tolist() == list(range(start, stop))
            else:                               # a share of one permutation of the whole split,
                assert sorted(y.tolist()) != list(range(start, stop))   # not a fixed block
            seen += y.tolist()
        assert sorted(seen) == list(range(EDGE_N))      # together: every sample exactly once


# ---------------------------------------------------------------- encodings, readback, errors

@pytest.mark.parametrize("encoding", ["png", "jpg"])
def test_encoded_shards_load(tmp_path, encoding, backend):
    out = tmp_path / encoding
    convert(ConvertConfig(source="synthetic", out=out, limit=48, encoding=encoding, quiet=True,
                          formats=convert_formats()))
    images, labels = stored(out)      # PIL decode of the shards' PNG/JPEG
    x, y, _ = epoch(loader(out, backend, batch_size=20))
    assert np.array_equal(y.numpy(), labels)
    got = np.rint(x.numpy().transpose(0, 2, 3, 1) * 255).astype(np.int16)
    if encoding == "png":     # FFCV stores png requests raw: lossless either way
        assert np.array_equal(got, images)
    elif backend != "ffcv":   # libjpeg-turbo vs PIL decoding the same JPEG: rounding at most
        assert np.abs(got - images).mean() < 1.0
    else:                     # FFCV encodes its own JPEG (OpenCV, same quality)
        assert np.abs(got - images).mean() < 4.0
    xa, ya, _ = epoch(loader(out, backend, "finetune", augment=True, batch_size=20, shuffle=True))
    assert xa.shape == (48, 3, 32, 32) and sorted(ya.tolist()) == sorted(labels.tolist())


@needs("dali")
def test_uint8_readback(edge, synthetic):
    from normfast.loaders.dali_backend import dali_uint8_batches
    for data_dir in (edge, synthetic):
        images, labels = stored(data_dir)
        batches = list(dali_uint8_batches(load_manifest(data_dir), "train", 50))
        assert all(b[0].dtype == np.uint8 and b[1].dtype == np.int64 for b in batches)
        assert np.array_equal(np.concatenate([b[0] for b in batches]), images)
        assert np.array_equal(np.concatenate([b[1] for b in batches]), labels)


def test_missing_shard_is_a_clear_error(tmp_path, backend):
    out = tmp_path / "d"
    convert(ConvertConfig(source="synthetic", out=out, limit=10, quiet=True, formats=convert_formats()))
    lost = out / "ffcv" / "train.beton" if backend == "ffcv" else out / "dali" / "train-00000.tar"
    lost.unlink()
    with pytest.raises(NormfastError, match=lost.name):
        loader(out, backend)


# ---------------------------------------------------------------- GPU

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_matches_reference(synthetic, dtype, backend):
    images, labels = stored(synthetic)
    for setting in ("finetune", "instance"):
        ld = loader(synthetic, backend, setting, device="cuda", dtype=dtype, batch_size=256)
        x, y, batches = epoch(ld)
        xb = batches[0][0]
        assert xb.device.type == "cuda" and y.device.type == "cuda" and y.dtype == torch.int64
        assert xb.dtype == getattr(torch, dtype) and xb.is_contiguous(memory_format=torch.channels_last)
        assert np.array_equal(y.cpu().numpy(), labels)
        check_close(x.cpu(), reference_normalize(images, ld.cfg.spec), dtype)
        # unnormalized (uint8 on the GPU), normalized as a separate device step
        x8, y8, b8 = epoch(loader(synthetic, backend, setting, device="cuda", batch_size=256, normalize=False))
        assert b8[0][0].dtype == torch.uint8 and b8[0][0].device.type == "cuda"
        assert b8[0][0].is_contiguous(memory_format=torch.channels_last) and torch.equal(y8, y)
        assert np.array_equal(x8.cpu().numpy().transpose(0, 2, 3, 1), images)
        out = Normalizer(ld.cfg.spec, x8.device, getattr(torch, dtype)).nchw(x8)
        assert out.is_contiguous(memory_format=torch.channels_last)
        check_close(out.cpu(), reference_normalize(images, ld.cfg.spec), dtype)
    # augmentation on the GPU: same checks as on the CPU
    x, y, _ = epoch(loader(synthetic, backend, "minmax", augment=True, device="cuda", seed=5, batch_size=200))
    out = np.rint(x.cpu().numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    offsets, flips = infer_augmentation(out, images)
    assert len(np.unique(offsets[:, 0])) == 2 * PAD + 1 and 0.4 < flips.mean() < 0.6
    _, ys, _ = epoch(loader(synthetic, backend, "finetune", augment=True, shuffle=True, device="cuda", seed=1))
    assert sorted(ys.tolist()) == sorted(labels.tolist())


@pytest.mark.parametrize("world_size", [1, 2])
def test_every_backend_visits_the_contract_order(edge, backend, world_size):
    """Shuffled or not, every backend reads epoch_order(seed, epoch, rank, world_size): the
    same samples in the same order whichever pipeline produced the batch."""
    from normfast.loaders import epoch_order
    for shuffle in (False, True):
        for rank in range(world_size):
            ld = loader(edge, backend, shuffle=shuffle, augment=True, rank=rank, world_size=world_size,
                        batch_size=8, seed=21)
            for e in (0, 1):
                _, y, _ = epoch(ld)      # edge labels are the stored indices
                assert y.tolist() == epoch_order(EDGE_N, 21, e, shuffle, rank, world_size).tolist()


@needs("dali", "ffcv")
def test_backends_share_one_augmentation_stream(synthetic):
    """resident, ffcv and dali take order, crops and flips from EpochLoader.plan: for one
    seed and epoch they yield the same augmented batches (up to float rounding)."""
    out = {}
    for backend in ("resident", "ffcv", "dali"):
        with loader(synthetic, backend, "pretrain", augment=True, shuffle=True, seed=9, batch_size=100) as ld:
            ld.set_epoch(3)
            out[backend] = epoch(ld)[:2]
    for backend in ("ffcv", "dali"):
        assert torch.equal(out[backend][1], out["resident"][1])
        torch.testing.assert_close(out[backend][0], out["resident"][0], rtol=0, atol=1e-5)


def _threads() -> int:
    import os
    return len(os.listdir("/proc/self/task"))     # native threads too (DALI's are not Python's)


def _threads_back_to(before: int, timeout: float = 5.0) -> bool:
    """Whether the native thread count falls to `before` within `timeout` s: a thread that
    Python already reports finished (is_alive False, joined) can stay listed in /proc for
    a moment while the OS tears it down."""
    import time
    end = time.monotonic() + timeout
    while _threads() > before:
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("backend_", backend_params("dali", "ffcv"))
def test_close_stops_the_loaders_threads(synthetic, backend_):
    import gc
    kw = dict(augment=True, shuffle=True, batch_size=64)
    with loader(synthetic, backend_, "finetune", **kw) as warm:     # thread pools of torch/numba/DALI
        epoch(warm)
    gc.collect()
    before = _threads()
    ld = loader(synthetic, backend_, "finetune", **kw)
    epoch(ld)
    it = iter(ld)                  # an epoch broken off, still holding its threads
    next(it)
    assert _threads() > before
    ld.close()
    del it
    assert _threads_back_to(before)
    with pytest.raises(NormfastError, match="closed"):
        iter(ld)


@needs("dali")
@pytest.mark.parametrize("background", [False, True])
def test_an_unclosed_loader_is_freed_without_the_cyclic_gc(synthetic, background):
    """A loader dropped without close(), in the middle of an epoch, frees its DALI threads
    as soon as the last reference goes (no cycle through the running epoch): a fork soon
    after (a DataLoader worker, FFCV's writer) must not meet DALI's threads."""
    import gc
    kw = dict(augment=True, shuffle=True, batch_size=64, background=background)
    with loader(synthetic, "dali", "finetune", **kw) as warm:
        epoch(warm)
    gc.collect()
    before = _threads()
    gc.disable()
    try:
        ld = loader(synthetic, "dali", "finetune", **kw)
        it = iter(ld)
        next(it)
        assert _threads() > before
        del ld, it
        assert _threads_back_to(before)
    finally:
        gc.enable()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_close_returns_gpu_memory(synthetic, backend):
    """Measured against a warm build (a first loader built, run and closed: CUDA's context,
    cuDNN, DALI's and FFCV's one-off allocations), with the chunked pipeline of the CUDA
    default: a second loader's epoch and close() give back all but a few MiB."""
    import gc
    kw = dict(augment=True, shuffle=True, device="cuda", batch_size=256)
    with loader(synthetic, backend, "finetune", **kw) as warm:
        epoch(warm)
        chunked = warm.chunk
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free_before = torch.cuda.mem_get_info()[0]
    allocated = torch.cuda.memory_allocated()
    ld = loader(synthetic, backend, "finetune", **kw)
    assert ld.chunk == chunked and (backend == "torch" or ld.chunk > 1)    # the chunked pipeline
    epoch(ld)                      # nothing of the epoch is kept
    ld.close()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() <= allocated
    # DALI and FFCV allocate outside torch: what they took must be back, give or take 8 MiB
    # (one chunk of 2,560 float32 32 px images is 30 MiB)
    assert torch.cuda.mem_get_info()[0] >= free_before - (8 << 20)


@pytest.mark.parametrize("backend_", backend_params("dali", "ffcv", "resident"))
def test_background_thread_yields_the_same_epochs(synthetic, backend_):
    """The loader thread (default on CUDA) changes nothing but where the work runs: the same
    batches, epoch after epoch, an epoch broken off and resumed, errors raised in the caller."""
    kw = dict(augment=True, shuffle=True, seed=4, batch_size=128)
    with loader(synthetic, backend_, "instance", **kw, background=False) as fg, \
            loader(synthetic, backend_, "instance", **kw, background=True) as bg:
        assert bg.background and not fg.background
        for _ in range(2):
            xf, yf, _ = epoch(fg)
            xb, yb, _ = epoch(bg)
            assert torch.equal(xf, xb) and torch.equal(yf, yb)
        it = iter(bg)                     # epoch 2 broken off after one batch
        next(it)
        it.close()
        assert not [t for t in __import__("threading").enumerate() if t.name == "normfast-loader"]
        bg.set_epoch(2)
        fg.set_epoch(2)
        assert torch.equal(epoch(bg)[0], epoch(fg)[0])


def test_background_thread_raises_in_the_caller(synthetic, monkeypatch):
    ld = loader(synthetic, "resident", background=True)

    def broken(epoch):
        yield next(iter(type(ld).iter_chunks(ld, epoch)))
        raise NormfastError("disk gone")
    monkeypatch.setattr(ld, "iter_chunks", broken)
    with pytest.raises(NormfastError, match="disk gone"):
        epoch(ld)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("backend_", backend_params("dali", "ffcv"))
def test_chunks_yield_the_same_batches(synthetic, backend_, device):
    """A chunk of several training batches (the CUDA default) yields exactly the batches of
    one batch at a time: order, crops, flips, sizes (a partial last chunk and batch),
    drop_last, a rank's share, an epoch broken off inside a chunk, a jump; with and without
    the loader thread. On CUDA equal up to float rounding (a reduction's kernel may change
    with the batch's size)."""
    same = torch.equal if device == "cpu" else (
        lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-5) is None)
    for extra in (dict(), dict(drop_last=True), dict(rank=1, world_size=2), dict(background=device == "cpu")):
        kw = dict(augment=True, shuffle=True, seed=5, batch_size=128, device=device, **extra)
        with loader(synthetic, backend_, "instance", **kw, chunk_batches=1) as one, \
                loader(synthetic, backend_, "instance", **kw, chunk_batches=3) as three:
            for _ in range(2):
                x1, y1, b1 = epoch(one)
                x3, y3, b3 = epoch(three)
                assert [len(y) for _, y in b3] == [len(y) for _, y in b1]
                assert torch.equal(y1, y3) and same(x1, x3)
            it = iter(three)              # epoch 2 broken off inside its first chunk
            next(it)
            next(it)
            it.close()
            three.set_epoch(7)
            one.set_epoch(7)
            assert same(epoch(three)[0], epoch(one)[0])
            assert three.producer_cpu_seconds > 0 and three.producer_batches > 0


def test_chunk_batches_default_and_override(synthetic):
    from types import SimpleNamespace
    from normfast.loaders import chunk_batches

    def cfg(device="cuda", batch_size=256, shape=(32, 32, 3), chunk_batches=None):
        return SimpleNamespace(device=torch.device(device, 0) if device == "cuda" else torch.device(device),
                               batch_size=batch_size, image_shape=shape, chunk_batches=chunk_batches)
    assert chunk_batches(cfg()) == 10                     # 8 MB of 32 px batches of 256
    assert chunk_batches(cfg(shape=(224, 224, 3))) == 1
    assert chunk_batches(cfg(batch_size=32)) == 16        # capped
    assert chunk_batches(cfg("cpu")) == 1
    assert chunk_batches(cfg("cpu", chunk_batches=4)) == 4
    for bad in (0, 2.5, "4", True):          # LoaderConfig checks it
        with pytest.raises(NormfastError, match="chunk_batches"):
            loader(synthetic, "resident", chunk_batches=bad)


@needs("dali")
def test_dali_holds_its_buffers_until_the_copy_out_ran(synthetic, monkeypatch):
    """The CUDA hand-over, with a fake event (no GPU here): each chunk is copied out of
    DALI's buffers, which are kept until the copy's event has passed, and release() waits
    for every copy still queued. Batches are the same as the CPU form's."""
    class FakeEvent:
        made: list = []

        def __init__(self):
            self.polls, self.synced = 0, False
            FakeEvent.made.append(self)

        def record(self, stream=None):
            assert stream == "the loader's stream"

        def query(self):              # done on the third look
            self.polls += 1
            return self.polls >= 3 or self.synced

        def synchronize(self):
            self.synced = True

    kw = dict(augment=True, shuffle=True, seed=6, batch_size=100, chunk_batches=2, background=False)
    with loader(synthetic, "dali", "finetune", **kw) as ref:
        want = epoch(ref)[:2]
    ld = loader(synthetic, "dali", "finetune", **kw)
    ld._pipeline()                    # built on the CPU, then handed over as if on CUDA
    ld.device_id = 0
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: "the loader's stream" if device == ld.device else None)
    x, y, _ = epoch(ld)
    assert torch.equal(x, want[0]) and torch.equal(y, want[1])
    assert len(FakeEvent.made) == 3 and 0 < len(ld._held) < 3       # 600 images: 3 chunks of 200
    held = [h[0] for h in ld._held]
    ld.close()
    assert not ld._held and all(e.synced for e in held)


@pytest.mark.parametrize("backend_", backend_params("dali", "ffcv", "resident"))
def test_an_epoch_order_is_drawn_once(synthetic, backend_, monkeypatch):
    """Each epoch's permutation is computed once per loader (ffcv used to draw it twice: for
    its crops and for FFCV's traversal order)."""
    import normfast.loaders.order as order_mod
    calls = []
    real = order_mod.epoch_order
    monkeypatch.setattr(order_mod, "epoch_order", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    with loader(synthetic, backend_, "finetune", augment=True, shuffle=True, seed=3) as ld:
        epoch(ld)
        epoch(ld)
    # each epoch once, in order (dali's stream may already have drawn the next epoch's)
    assert calls[:2] == [0, 1] and calls == sorted(set(calls))


@pytest.mark.parametrize("backend_", backend_params("dali", "ffcv", "resident"))
def test_the_loader_thread_hands_over_whole_chunks(synthetic, backend_, monkeypatch):
    """In the loader thread one queue hand-over (one GIL wake-up of the training thread) per
    chunk, not per batch; the training thread slices the chunk into its batch views."""
    import queue
    import normfast.loaders.epoch as epoch_mod
    kinds = []

    class CountingQueue(queue.Queue):
        def put(self, item, *args, **kwargs):
            super().put(item, *args, **kwargs)
            kinds.append(item[0])
    monkeypatch.setattr(epoch_mod.queue, "Queue", CountingQueue)
    with loader(synthetic, backend_, "finetune", augment=True, shuffle=True, batch_size=64, chunk_batches=3,
                background=True) as ld:
        x, y, batches = epoch(ld)          # 600 images: 10 batches in 4 chunks
        assert [len(b) for _, b in batches] == [64] * 9 + [24]
        assert kinds.count("item") == 4 and ld.producer_chunks == 4 and ld.producer_batches == 10
