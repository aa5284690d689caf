"""The one device resolver: a CUDA device always carries its index (checked without a GPU
by faking torch.cuda's answers), and the training step routes batch sizes as documented."""
from __future__ import annotations

import pytest
import torch

from normfast.device import Dist, resolve_device, use_device
from normfast.errors import NormfastError


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend this machine has 2 CUDA devices and cuda:1 is the current one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    return calls


def test_cuda_without_index_gets_the_current_device(fake_cuda):
    for requested in ("cuda", torch.device("cuda"), "auto", None):
        dev = resolve_device(requested)
        assert dev == torch.device("cuda", 1) and dev.index == 1


def test_explicit_index_is_kept_and_checked(fake_cuda):
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device(torch.device("cuda", 1)).index == 1
    with pytest.raises(NormfastError, match=r"cuda:2 does not exist: this machine has 2 CUDA devices"):
        resolve_device("cuda:2")


def test_local_rank_picks_the_gpu_under_torchrun(fake_cuda):
    d = Dist({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0"})
    assert d.enabled and d.device("cuda") == torch.device("cuda", 0)
    assert d.device("auto") == torch.device("cuda", 0)
    assert d.device("cuda:1") == torch.device("cuda", 1)      # an explicit index wins
    assert Dist({}).device("cuda") == torch.device("cuda", 1)  # no torchrun: the current device


def test_use_device_passes_an_index(fake_cuda):
    """torch.cuda.set_device(torch.device('cuda')) raises on every torch: never pass that."""
    use_device(resolve_device("cuda"))
    assert fake_cuda == [1]
    use_device(torch.device("cpu"))
    assert fake_cuda == [1]


def test_cpu_and_bad_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu") == resolve_device("auto") == resolve_device("cpu")
    with pytest.raises(NormfastError, match="no CUDA GPU is available"):
        resolve_device("cuda")
    for bad in ("tpu", "mps", "gpu0"):
        with pytest.raises(NormfastError, match="unknown device"):
            resolve_device(bad)


def test_trainer_resolves_cuda_to_an_indexed_device(fake_cuda, synthetic_dir, tmp_path):
    """The crash seen on the H200: Trainer called set_device(torch.device('cuda'))."""
    from normfast.config import resolve_train_config
    from normfast.train import Trainer
    cfg = resolve_train_config(None, data=str(synthetic_dir), device="cuda", runs=str(tmp_path), amp="off",
                               pretrained="none")
    trainer = Trainer(cfg)
    assert trainer.device == torch.device("cuda", 1) and fake_cuda == [1]


def test_compiled_step_sees_only_its_static_batch_sizes():
    """A partial batch runs the eager module (no recompile for a new shape)."""
    from normfast.train import TrainStep
    step = TrainStep("resnet18", 10, pretrained="none", device=torch.device("cpu"), amp="off", compile="default",
                     lr=1e-3, epochs=1, scheduler="none", seed=0, static_batch_sizes=(8, 16))
    assert step.module_for(8) is step.compiled and step.module_for(16) is step.compiled
    assert step.module_for(5) is step.ddp and step.compiled is not step.ddp
    eager = TrainStep("resnet18", 10, pretrained="none", device=torch.device("cpu"), amp="off", compile="none",
                      lr=1e-3, epochs=1, scheduler="none", seed=0, static_batch_sizes=(8,))
    assert eager.module_for(8) is eager.ddp


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_mode", ["default", "cudagraphs"])
def test_compiled_training_with_a_partial_batch_on_cuda(compile_mode):
    """Full batches through the compiled step, a partial one eagerly, train and eval, and the
    same losses as an eager step from the same weights."""
    from normfast.train import TrainStep
    dev = resolve_device("cuda")
    kw = dict(pretrained="none", device=dev, amp="bf16", lr=1e-3, epochs=1, scheduler="none", seed=0,
              static_batch_sizes=(32,))
    step = TrainStep("resnet18", 10, compile=compile_mode, **kw)
    g = torch.Generator(device=dev).manual_seed(0)
    for n in (32, 32, 7, 32, 7):
        x = torch.randn(n, 3, 32, 32, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (n,), device=dev, generator=g)
        step.train(True)
        loss, out = step(x, y)
        assert torch.isfinite(loss) and out.shape == (n, 10)
        step.train(False)
        with torch.no_grad():
            loss, out = step(x, y, train=False)
        assert torch.isfinite(loss) and out.shape == (n, 10)
