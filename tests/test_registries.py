"""Every name (backend, model, setting, compile mode, scheduler...) comes from one registry
entry that also holds what the name means; --help, validation and the report read them."""
import pytest
import torch
from click.testing import CliRunner

from normfast.cli import main
from normfast.config import resolve_train_config
from normfast.errors import NormfastError
from normfast.loaders import Backend, backends, build_loader
from normfast.models import models
from normfast.normalization import settings
from normfast.recipe import compile_modes, schedulers
from normfast.report.common import MODELS, NORMS


def test_backend_entry_holds_module_package_and_install_hint():
    dali = backends.get("dali")
    assert (dali.module, dali.package) == ("normfast.loaders.dali_backend", "nvidia.dali")
    assert backends.get("resident").package is None


def test_build_loader_takes_the_package_check_from_the_entry(tiny):
    backends.register("fake")(Backend("fake", "normfast.loaders.resident", "no_such_package_xyz", "pip install xyz"))
    try:
        with pytest.raises(NormfastError, match="backend 'fake' needs the no_such_package_xyz package; "
                                                "install it with: pip install xyz"):
            build_loader(tiny, "train", "fake", 4, "finetune", augment=False, device="cpu")
    finally:
        backends._items.pop("fake")


def test_scheduler_and_compile_names_mean_something():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert schedulers.get("none")(opt, 5) is None
    cosine = schedulers.get("cosine")(opt, 5)
    assert isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR) and cosine.T_max == 5
    assert not compile_modes.get("none").compiled
    assert compile_modes.get("cudagraphs").mode == "reduce-overhead" and compile_modes.get("cudagraphs").cuda_graphs


def test_config_validation_reads_the_scheduler_registry(tiny, tmp_path):
    with pytest.raises(NormfastError, match="unknown scheduler 'step'; valid: cosine, none"):
        resolve_train_config(data=str(tiny), runs=str(tmp_path), scheduler="step")
    schedulers.register("step")(lambda opt, epochs: None)
    try:
        assert resolve_train_config(data=str(tiny), runs=str(tmp_path), scheduler="step").scheduler == "step"
    finally:
        schedulers._items.pop("step")


def test_config_file_names_are_still_checked(tiny, tmp_path):
    (tmp_path / "c.yaml").write_text("model: vgg11\n")
    with pytest.raises(NormfastError, match="unknown model 'vgg11'; valid: resnet18"):
        resolve_train_config(tmp_path / "c.yaml", data=str(tiny))


@pytest.mark.parametrize("option, bad, listed", [
    ("--model", "resnet19", "'resnet18', 'resnet50', 'densenet121', 'densenet161'"),
    ("--compile", "max", "'none', 'default', 'cudagraphs'"),
    ("--scheduler", "step", "'cosine', 'none'"),
    ("--stats", "imagenet", "'manifest', 'reference'"),
    ("--amp", "fp8", "'auto', 'bf16', 'fp16', 'off'"),
])
def test_bad_choice_is_one_error_line(option, bad, listed):
    r = CliRunner().invoke(main, ["train", option, bad])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: ") and r.output.strip().count("\n") == 0, r.output
    assert f"'{option}': '{bad}' is not one of {listed}" in r.output


def test_help_lists_the_registries_names():
    out = CliRunner().invoke(main, ["train", "--help"]).output
    for names in (models.names(), settings.names(), backends.names(), compile_modes.names(), schedulers.names()):
        assert "[" + "|".join(names) + "]" in out.replace("\n", "").replace(" ", "")


def test_amp_long_names_still_accepted(tiny, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--runs", str(tmp_path), "--amp", "bfloat16",
                                  "--epochs", "0"])
    assert r.exit_code == 1 and "--epochs 0: must be at least 1" in r.output, r.output


def test_bench_compile_list_reads_the_registry(tiny):
    r = CliRunner().invoke(main, ["bench", "train", "--data", str(tiny), "--compile", "none,max", "--device", "cpu"])
    assert r.exit_code == 1 and "--compile 'max': valid: none, default, cudagraphs" in r.output, r.output


def test_report_order_is_the_registries():
    assert MODELS == tuple(models.names()) and NORMS == tuple(settings.names())


# ---------------------------------------------------------------- entries, not name -> name (issue 15 §2)

@pytest.mark.parametrize("name, head", [("resnet18", "fc"), ("resnet50", "fc"), ("densenet121", "classifier"),
                                        ("densenet161", "classifier")])
def test_model_entry_holds_its_timm_name_and_head(name, head):
    import torchvision
    from normfast.models import build_model
    entry = models.get(name)
    assert (entry.name, entry.timm_name, entry.head) == (name, name, head)
    assert isinstance(getattr(torchvision.models.get_model(name, weights=None), entry.head), torch.nn.Linear)
    if name in ("resnet18", "densenet121"):            # the cheap ones: the head is the entry's, resized
        model, _ = build_model(name, 7, "none")
        assert getattr(model, entry.head).out_features == 7


def test_a_registered_model_entry_is_built_with_its_head():
    """A model known only by its registry entry builds: no parallel table (timm names, heads)
    has to learn the name."""
    import torchvision
    from normfast.models import ModelEntry, build_model
    models.register("resnet34")(ModelEntry("resnet34", "resnet34", "fc"))
    try:
        model, _ = build_model("resnet34", 4, "none")
        assert isinstance(model, torchvision.models.ResNet) and model.fc.out_features == 4
    finally:
        models._items.pop("resnet34")


def test_setting_entry_builds_its_normspec(tiny):
    from normfast.manifest import load_manifest
    from normfast.models import Weights
    from normfast.normalization import NormSpec, Setting, resolve_norm
    manifest = load_manifest(tiny)
    mean, std = manifest.stats
    assert settings.get("finetune").spec(manifest) == NormSpec("finetune", tuple(mean), tuple(std), "manifest")
    w = Weights("x", (0.5,) * 3, (0.25,) * 3, "x cfg")
    assert settings.get("pretrain").spec(weights=w) == NormSpec("pretrain", (0.5,) * 3, (0.25,) * 3, "x cfg")
    assert settings.get("minmax").spec() == NormSpec("minmax", source="none")
    # a new entry is a new setting for resolve_norm, with no if-chain to extend
    settings.register("half")(Setting("half", lambda name, m, s, w: NormSpec(name, (0.5,) * 3, (0.5,) * 3, "c")))
    try:
        assert resolve_norm("half").scale_shift()[0].tolist() == pytest.approx([1 / 127.5] * 3)
    finally:
        settings._items.pop("half")
    with pytest.raises(NormfastError, match="no published reference statistics for dataset 'synthetic'"):
        resolve_norm("finetune", manifest, "reference")
    with pytest.raises(NormfastError, match="unknown stats source 'x'; valid: manifest, reference"):
        resolve_norm("finetune", manifest, "x")
