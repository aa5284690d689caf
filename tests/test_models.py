"""Initial weights (torchvision, timm, none, a file), the mean/std `pretrain` takes from them,
and what a run records about them. No network: timm and torchvision's factories are faked."""
import json
import sys
import types

import pytest
import torch
import torchvision
import yaml
from click.testing import CliRunner

import normfast.train as train_mod
from normfast.cli import main
from fixtures import cfg_for
from normfast.config import TrainConfig, resolve_train_config
from normfast.configfiles import CONFIG_DIR, IMAGENET_MEAN, IMAGENET_STD, load_yaml
from normfast.errors import NormfastError
from normfast.models import Weights, build_model
from normfast.normalization import resolve_norm

TIMM_MEAN, TIMM_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)   # unlike ImageNet's, as some timm weights are


@pytest.fixture
def fake_timm(monkeypatch):
    """A timm whose create_model builds torchvision's architecture with a pretrained_cfg."""
    calls = []

    def create_model(name, pretrained=False, num_classes=1000):
        calls.append((name, pretrained, num_classes))
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        model.pretrained_cfg = {"architecture": name, "tag": "a1_in1k", "mean": TIMM_MEAN, "std": TIMM_STD}
        return model

    def resolve_data_config(args, model=None):
        return {"input_size": (3, 224, 224), "mean": model.pretrained_cfg["mean"], "std": model.pretrained_cfg["std"]}

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.data = types.ModuleType("timm.data")
    timm.data.resolve_data_config = resolve_data_config
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", timm.data)
    return calls


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No cached weights and no network: every download fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    import torch.hub
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network unreachable")))


# ---------------------------------------------------------------- weights and their mean/std

def test_timm_weights_use_timm_names_new_head_and_their_own_mean_std(fake_timm):
    for name in ("resnet18", "densenet121"):
        model, w = build_model(name, 7, "timm")
        assert fake_timm[-1] == (name, True, 7)           # pretrained, head replaced by num_classes
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
        assert w.name == f"timm:{name}.a1_in1k" and w.mean == TIMM_MEAN and w.std == TIMM_STD


def test_torchvision_weights_take_mean_std_from_their_transforms(monkeypatch):
    seen = []

    def get_model(name, weights=None, **kw):           # no download: the weights' values are not needed
        seen.append(weights)
        return torchvision.models.resnet18()
    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    model, w = build_model("resnet18", 5, "imagenet")
    tv = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert seen == [tv] and model.fc.out_features == 5
    assert w.name == "imagenet:ResNet18_Weights.IMAGENET1K_V1"
    assert w.mean == tuple(tv.transforms().mean) == pytest.approx((0.485, 0.456, 0.406))
    assert w.std == tuple(tv.transforms().std) and "transforms()" in w.source


def test_none_and_local_file_use_imagenet_mean_std(tmp_path):
    assert build_model("resnet18", 3, "none")[1] == Weights("none", IMAGENET_MEAN, IMAGENET_STD, "imagenet")
    path = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    w = build_model("resnet18", 3, str(path))[1]
    assert w.name.startswith(f"file:{path}") and (w.mean, w.std) == (IMAGENET_MEAN, IMAGENET_STD)


def _conv1_one_channel():
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = state["conv1.weight"][:, :1]
    return state


@pytest.mark.parametrize("source, into, key, shapes", [
    (lambda: torchvision.models.resnet50().state_dict(), "resnet18", "layer1.0.conv1.weight",
     "shape [64, 64, 1, 1] in the file, [64, 64, 3, 3] in resnet18"),
    (lambda: torchvision.models.densenet121().state_dict(), "densenet161", "features.conv0.weight",
     "shape [64, 3, 7, 7] in the file, [96, 3, 7, 7] in densenet161"),
    (_conv1_one_channel, "resnet18", "conv1.weight", "shape [64, 1, 7, 7] in the file, [64, 3, 7, 7] in resnet18"),
])
def test_weights_of_another_architecture_name_the_key_and_shapes(tmp_path, source, into, key, shapes):
    """Issue 18 §6: torch's size-mismatch traceback becomes one line naming the key and shapes."""
    path = tmp_path / "w.pt"
    torch.save(source(), path)
    with pytest.raises(NormfastError) as e:
        build_model(into, 10, str(path))
    assert f"w.pt: does not match the model {into}: '{key}' has {shapes}" in str(e.value)


@pytest.mark.parametrize("content, says", [([1, 2, 3], "holds a list, not a state dict"),
                                           ({"conv1.weight": "x"}, "'conv1.weight' is a str, not a tensor")])
def test_weights_file_that_is_not_a_state_dict_is_one_line(tiny, tmp_path, content, says):
    path = tmp_path / "w.pt"
    torch.save(content, path)
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--runs", str(tmp_path / "runs"), "--device", "cpu",
                                  "-q", "--pretrained", str(path)])
    assert says in one_line(r)


def test_pretrain_setting_takes_the_weights_mean_std():
    w = Weights("timm:x", TIMM_MEAN, TIMM_STD, "timm x pretrained_cfg")
    spec = resolve_norm("pretrain", weights=w)
    assert (spec.mean, spec.std, spec.source) == (TIMM_MEAN, TIMM_STD, "timm x pretrained_cfg")
    assert resolve_norm("pretrain").mean == IMAGENET_MEAN           # no weights given: ImageNet's
    assert resolve_norm("minmax", weights=w).std == (1.0, 1.0, 1.0)  # other settings ignore the weights


def test_trainer_normalizes_pretrain_with_timm_mean_std_and_records_them(fake_timm, tiny, tmp_path):
    cfg = cfg_for(tiny, tmp_path, pretrained="timm", norm="pretrain")
    trainer = train_mod.Trainer(cfg)
    trainer.build()
    try:
        for loader in (trainer.train_loader, trainer.test_loader):
            assert (loader.cfg.spec.mean, loader.cfg.spec.std) == (TIMM_MEAN, TIMM_STD)
    finally:
        trainer.close()
    train_mod.train(cfg)
    run = tmp_path / "synthetic" / "resnet18-pretrain-resident"
    conf = yaml.safe_load((run / "config.yaml").read_text())
    best = json.loads((run / "best_results.json").read_text())
    for rec in (conf, best):
        assert rec["weights"] == "timm:resnet18.a1_in1k"
        assert rec["weights_mean"] == list(TIMM_MEAN) and rec["weights_std"] == list(TIMM_STD)
    assert conf["pretrained"] == "timm"


# ---------------------------------------------------------------- errors: one line, nothing written

def one_line(r):
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: ") and r.output.strip().count("\n") == 0, r.output
    return r.output


def test_missing_timm_is_one_error_line_saying_how_to_install(monkeypatch, tiny, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)       # import timm raises ImportError
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--runs", str(tmp_path), "--device", "cpu",
                                  "-q", "--pretrained", "timm"])
    assert "pip install 'normfast[timm]'" in one_line(r)
    assert not (tmp_path / "synthetic").exists()


def test_timm_download_failure_says_to_pass_none_or_a_file(fake_timm, monkeypatch):
    def fail(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(sys.modules["timm"], "create_model", fail)
    with pytest.raises(NormfastError, match=r"timm's pretrained weights for resnet50 .*--pretrained none.*PATH"):
        build_model("resnet50", 10, "timm")


def test_default_weights_are_imagenet_and_offline_is_one_clear_line(offline, tiny, tmp_path):
    assert TrainConfig().pretrained == "imagenet"
    assert load_yaml(CONFIG_DIR / "defaults.yaml")["pretrained"] == "imagenet"
    assert resolve_train_config(None, data=str(tiny)).pretrained == "imagenet"
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--runs", str(tmp_path), "--device", "cpu", "-q"])
    out = one_line(r)
    assert "torchvision's ImageNet weights for resnet18" in out and "--pretrained none" in out, out
    assert not (tmp_path / "synthetic" / "resnet18-finetune-resident").exists()   # nothing half-written


def test_missing_weights_file_is_refused_before_a_run_directory_exists(tiny, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--runs", str(tmp_path), "--device", "cpu",
                                  "-q", "--pretrained", str(tmp_path / "nope.pt")])
    assert "nope.pt: no such file (valid: imagenet, timm, none" in one_line(r)
    assert not (tmp_path / "synthetic").exists()


def test_demo_trains_from_scratch_explicitly():
    assert load_yaml(CONFIG_DIR / "demo.yaml")["train"]["pretrained"] == "none"


def test_train_help_documents_weights_and_precision():
    r = CliRunner().invoke(main, ["train", "--help"], terminal_width=200)
    text = " ".join(r.output.split())
    assert "bf16 autocast on CUDA" in text and "--amp off reproduces it" in text
    assert "timm" in text and "--log" in text
