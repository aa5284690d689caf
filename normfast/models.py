"""Backbones with the head resized to the dataset's classes, and the weights they start from.

`--pretrained` picks the initial weights:
  imagenet  torchvision's IMAGENET1K_V1 (the default)
  timm      timm's default pretrained weights for the name, as the seed loaded them
            (`timm.create_model(name, pretrained=True)`); for resnet18/50 these are the "A1"
            recipe (resnet50 ~80% top-1), not torchvision's. Optional: pip install 'normfast[timm]'
  none      random initialization (training from scratch)
  PATH      a local state dict (e.g. a run's last.pt); a 1000-class head is dropped

Each set of weights brings its own preprocessing: the mean/std it was trained with. The
`pretrain` normalization uses exactly these (`Weights.mean/std`), so the trainer resolves
the weights before it builds the loaders.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from normfast.configfiles import IMAGENET_MEAN, IMAGENET_STD
from normfast.errors import NormfastError
from normfast.registry import Registry



@dataclass(frozen=True)
class ModelEntry:
    """One backbone: its torchvision name (normfast's), timm's name for the same architecture
    (timm uses the same names; the entry makes that a decision) and the attribute holding its
    classifier, which is replaced by a head for the dataset's classes."""
    name: str
    timm_name: str
    head: str                 # "fc" (ResNet) or "classifier" (DenseNet): an nn.Linear


models: Registry[ModelEntry] = Registry("model")
for _entry in (ModelEntry("resnet18", "resnet18", "fc"), ModelEntry("resnet50", "resnet50", "fc"),
               ModelEntry("densenet121", "densenet121", "classifier"),
               ModelEntry("densenet161", "densenet161", "classifier")):
    models.register(_entry.name)(_entry)

PRETRAINED_CHOICES = ("imagenet", "timm", "none")   # or a PATH
TIMM_INSTALL = "pip install 'normfast[timm]' (or: pip install 'timm>=1.0')"


@dataclass(frozen=True)
class Weights:
    """The initial weights of a model and the preprocessing they were trained with."""
    name: str                              # 'imagenet:ResNet18_Weights.IMAGENET1K_V1', 'timm:resnet50.a1_in1k',
                                           # 'none' or 'file:PATH:sha256=...'
    mean: tuple[float, float, float]       # [0, 1] units, RGB
    std: tuple[float, float, float]
    source: str                            # where mean/std came from

    def record(self) -> dict:
        """What a run records about its weights (config.yaml, best_results.json)."""
        return {"weights": self.name, "weights_mean": list(self.mean), "weights_std": list(self.std),
                "weights_norm_source": self.source}


def _rgb(values, what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise NormfastError(f"{what}: expected 3 channel values for the weights' mean/std, got {values!r}")
    return out  # type: ignore[return-value]


def _first_line(e: Exception) -> str:
    text = str(e).splitlines()[0][:120] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _cannot_load(what: str, e: Exception) -> NormfastError:
    return NormfastError(f"could not load {what} ({_first_line(e)}); without a network (or a cached copy) "
                         f"pass --pretrained none to train from scratch, or --pretrained PATH to a local "
                         f"state dict")


@contextlib.contextmanager
def _download_messages():
    """Hold back what a download prints ('Downloading: URL to PATH' on stdout, warnings on
    stderr) and show it only when the weights loaded: a failure is one error line, not three."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield
    sys.stdout.write(out.getvalue())
    sys.stderr.write(err.getvalue())


def import_timm():
    """timm, imported only when asked for; missing, it is one error line saying how to install it."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise NormfastError(f"--pretrained timm needs the timm package; install it with: {TIMM_INSTALL}") from None


def check_pretrained(pretrained: str) -> None:
    """Early checks of --pretrained (before a run directory is created)."""
    if pretrained == "timm":
        import_timm()
    elif pretrained not in PRETRAINED_CHOICES and not Path(pretrained).is_file():
        raise NormfastError(f"--pretrained {pretrained}: no such file (valid: imagenet, timm, none, "
                            f"or a path to a state dict)")


def build_model(name: str, num_classes: int, pretrained: str = "none") -> tuple[nn.Module, Weights]:
    """Returns (model, Weights). Never falls back silently to other weights."""
    entry = models.get(name)
    if pretrained == "timm":
        return _timm_model(entry, num_classes)
    import torchvision
    if pretrained == "imagenet":
        tv_weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        try:
            with _download_messages():
                model = torchvision.models.get_model(name, weights=tv_weights, progress=False)
        except Exception as e:  # noqa: BLE001 - any download/cache failure
            raise _cannot_load(f"torchvision's ImageNet weights for {name}", e) from None
        preprocess = tv_weights.transforms()
        weights = Weights(f"imagenet:{tv_weights}", _rgb(preprocess.mean, str(tv_weights)),
                          _rgb(preprocess.std, str(tv_weights)), f"torchvision {tv_weights}.transforms()")
    else:
        model = torchvision.models.get_model(name, weights=None)
        weights = Weights("none", IMAGENET_MEAN, IMAGENET_STD, "imagenet")
    head = getattr(model, entry.head)
    setattr(model, entry.head, nn.Linear(head.in_features, num_classes))
    if pretrained not in PRETRAINED_CHOICES:
        weights = Weights(_load_local(model, Path(pretrained), entry), IMAGENET_MEAN, IMAGENET_STD, "imagenet")
    return model, weights


def _timm_model(entry: ModelEntry, num_classes: int) -> tuple[nn.Module, Weights]:
    timm = import_timm()
    timm_name = entry.timm_name
    try:
        # num_classes replaces the 1000-class head with a new one (timm drops the old head's weights)
        with _download_messages():
            model = timm.create_model(timm_name, pretrained=True, num_classes=num_classes)
    except Exception as e:  # noqa: BLE001 - hub download/cache failures come in many types
        raise _cannot_load(f"timm's pretrained weights for {timm_name}", e) from None
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    try:
        data_cfg = timm.data.resolve_data_config({}, model=model)
    except Exception:  # noqa: BLE001 - older/odd models: the pretrained_cfg holds the same values
        data_cfg = cfg
    if "mean" not in data_cfg or "std" not in data_cfg:
        raise NormfastError(f"timm's {timm_name}: its pretrained configuration names no mean/std")
    tag = cfg.get("tag")
    label = f"{cfg.get('architecture') or timm_name}.{tag}" if tag else (cfg.get("architecture") or timm_name)
    source = f"timm {label} pretrained_cfg"
    return model, Weights(f"timm:{label}", _rgb(data_cfg["mean"], source), _rgb(data_cfg["std"], source), source)


def _load_local(model: nn.Module, path: Path, entry: ModelEntry) -> str:
    if not path.is_file():
        raise NormfastError(f"{path}: pretrained weights file not found (valid: imagenet, timm, none, or a path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise NormfastError(f"{path}: not a loadable state dict ({type(e).__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]              # a normfast checkpoint (last.pt, best.pt)
    own = model.state_dict()
    _check_state(state, own, path, entry)
    # an ImageNet head (1000 classes) is dropped: the head is new for this dataset
    state = {k: v for k, v in state.items()
             if not (k.startswith(entry.head + ".") and k in own and own[k].shape != v.shape)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(entry.head + ".")]
    if missing or unexpected:
        raise NormfastError(f"{path}: does not match the model {entry.name} ({len(missing)} missing keys, e.g. "
                            f"{(missing or unexpected)[0]!r}; {len(unexpected)} unexpected)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"file:{path}:sha256={digest}"


def _check_state(state, own: dict, path: Path, entry: ModelEntry) -> None:
    """One line for a file that is not a state dict of this architecture: a list or other
    object, a value that is not a tensor, or a key whose shape differs (resnet50's weights
    into resnet18, densenet121's into densenet161, a 1-channel conv1); the head may differ."""
    if not isinstance(state, dict):
        raise NormfastError(f"{path}: holds a {type(state).__name__}, not a state dict (a dict of parameter "
                            f"name to tensor, as model.state_dict() or a normfast last.pt holds)")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise NormfastError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor; not a state dict")
        mine = own.get(key)
        if mine is not None and mine.shape != value.shape and not str(key).startswith(entry.head + "."):
            raise NormfastError(f"{path}: does not match the model {entry.name}: {key!r} has shape "
                                f"{list(value.shape)} in the file, {list(mine.shape)} in {entry.name} "
                                f"(weights of another architecture?)")
