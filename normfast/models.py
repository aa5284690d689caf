"""Backbones from torchvision with the head resized to the dataset's classes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn

from normfast.errors import NormfastError
from normfast.registry import Registry

models: Registry = Registry("model")
for _name in ("resnet18", "resnet50", "densenet121", "densenet161"):
    models.register(_name)(_name)


def _head(model: nn.Module) -> tuple[str, nn.Linear]:
    return ("fc", model.fc) if hasattr(model, "fc") else ("classifier", model.classifier)


def build_model(name: str, num_classes: int, pretrained: str = "none") -> tuple[nn.Module, str]:
    """Returns (model, description of the weights used). Never falls back silently."""
    import torchvision
    models.get(name)
    if pretrained == "imagenet":
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        try:
            model = torchvision.models.get_model(name, weights=weights)
        except Exception as e:  # noqa: BLE001 - any download/cache failure
            raise NormfastError(
                f"could not load torchvision's ImageNet weights for {name} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120] if str(e) else ''}); without a network pass "
                f"--pretrained PATH to a local state dict, or --pretrained none") from None
        used = f"imagenet:{weights}"
    else:
        model = torchvision.models.get_model(name, weights=None)
        used = "none"
    attr, head = _head(model)
    setattr(model, attr, nn.Linear(head.in_features, num_classes))
    if pretrained not in ("imagenet", "none"):
        used = _load_local(model, Path(pretrained), attr)
    return model, used


def _load_local(model: nn.Module, path: Path, head_attr: str) -> str:
    if not path.is_file():
        raise NormfastError(f"{path}: pretrained weights file not found (valid: imagenet, none, or a path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise NormfastError(f"{path}: not a loadable state dict ({type(e).__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    # an ImageNet head (1000 classes) is dropped: the head is new for this dataset
    state = {k: v for k, v in state.items()
             if not (k.startswith(head_attr + ".") and k in own and own[k].shape != v.shape)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head_attr + ".")]
    if missing or unexpected:
        raise NormfastError(f"{path}: does not match the model ({len(missing)} missing keys, e.g. "
                            f"{(missing or unexpected)[0]!r}; {len(unexpected)} unexpected)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"file:{path}:sha256={digest}"
