"""Horizontal fusion (HFTA, MLSys 2021): G models of one architecture trained as one wider model.

The G models (one per normalization setting) see the same batch, each normalized its own way;
their inputs are stacked on channels, (N, G*3, H, W). Every layer is widened G-fold so that
model g only ever reads model g's channels:

  Conv2d(Cin, Cout, groups=k)  ->  Conv2d(G*Cin, G*Cout, groups=G*k), weights concatenated on
                                   out-channels (model g owns out-channels g*Cout..(g+1)*Cout-1,
                                   which read only its in-channels)
  BatchNorm2d(C)               ->  BatchNorm2d(G*C): statistics are per channel, so per model
  ReLU, max/avg pooling, add   ->  unchanged (per channel or elementwise)
  Linear(in, out) head         ->  FusedLinear: a batched matmul over (G, out, in); logits (N, G, out)
  DenseNet's concatenations    ->  group_cat: per model (N, H, W, G, C_i) joined on C_i, so each
                                   model's features stay contiguous in its own channel block

The optimizer (Adam) is elementwise and the schedule is shared, so they need no change: one
Adam over the fused parameters computes, element for element, what G Adams would. The module
tree keeps torchvision's names, so a fused state dict has the separate model's keys and each
tensor is the G models' tensors joined (`state_layout` says how: cat, stack or shared);
`split_state`/`fuse_state` and their optimizer counterparts convert checkpoints both ways.

Why this mechanism rather than torch.func.vmap over stacked parameters: vmap's batching rule
for conv2d becomes this same grouped convolution, but BatchNorm's running statistics are
buffers updated in place, which functional_call + vmap does not support in training mode
without rewriting every BatchNorm; the grouped form is plain modules, so torch.compile, CUDA
graphs, DDP, channels-last and AMP work on it unchanged.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn

from normfast.errors import NormfastError

MECHANISM = "hfta-grouped-conv"      # what config.yaml records as `fused_mechanism`

CAT, STACK, SHARED = "cat", "stack", "shared"


class FusedLinear(nn.Module):
    """G linear heads applied to (N, G*in) features (model-major): returns (N, G, out)."""

    def __init__(self, groups: int, in_features: int, out_features: int, dtype=None, device=None):
        super().__init__()
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(groups, out_features, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.groups, self.in_features)
        return torch.einsum("ngi,goi->ngo", x, self.weight) + self.bias


def group_cat(features: Sequence[torch.Tensor], groups: int) -> torch.Tensor:
    """torch.cat(features, 1) done per model: each (N, G*C_i, H, W) input holds G blocks of C_i
    channels; the output holds G blocks of sum(C_i) channels, model g's block being the
    concatenation of its own blocks. Channels-last in, channels-last out, one copy (the cat):
    a channels-last NCHW tensor is a contiguous NHWC one, so the split into (G, C_i) is a view."""
    n, _, h, w = features[0].shape
    parts = [f.permute(0, 2, 3, 1).reshape(n, h, w, groups, -1) for f in features]
    return torch.cat(parts, 4).reshape(n, h, w, -1).permute(0, 3, 1, 2)


class FusedDenseBlock(nn.ModuleDict):
    """torchvision's _DenseBlock (same layer names) with per-model concatenations."""

    def __init__(self, block: nn.ModuleDict, groups: int):
        super().__init__(dict(block.items()))
        self.groups = groups

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for layer in self.values():
            x = features[0] if len(features) == 1 else group_cat(features, self.groups)
            x = layer.conv1(layer.relu1(layer.norm1(x)))
            features.append(layer.conv2(layer.relu2(layer.norm2(x))))
        return group_cat(features, self.groups)


def _known_types() -> tuple[type, ...]:
    """The module types the fusion knows how to widen or leave as they are (torchvision's
    ResNet and DenseNet); anything else (timm's modules, say) is refused, never guessed."""
    from torchvision.models import densenet, resnet
    return (nn.Sequential, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity,
            nn.Conv2d, nn.BatchNorm2d, nn.Linear, resnet.ResNet, resnet.BasicBlock, resnet.Bottleneck,
            densenet.DenseNet, densenet._DenseBlock, densenet._DenseLayer, densenet._Transition)


def _check_fusable(model: nn.Module) -> None:
    from torchvision.models import densenet
    known = _known_types()
    for name, m in model.named_modules():
        if type(m) not in known:
            raise NormfastError(f"fused training knows torchvision's resnet/densenet modules; "
                                f"{name or 'the model'} is a {type(m).__module__}.{type(m).__name__} "
                                f"(train these settings as separate runs)")
        if isinstance(m, densenet._DenseLayer) and m.drop_rate > 0:
            raise NormfastError(f"fused training: {name} has dropout (drop_rate {m.drop_rate}), "
                                f"which would draw different masks than separate runs")


def _widen(module: nn.Module, groups: int) -> nn.Module:
    """A module of the same kind over G times the channels (parameters uninitialized: the
    fused state is loaded from the G models right after)."""
    from torchvision.models import densenet
    if isinstance(module, nn.Conv2d):
        m = module
        return nn.Conv2d(groups * m.in_channels, groups * m.out_channels, m.kernel_size, m.stride, m.padding,
                         m.dilation, groups * m.groups, m.bias is not None, m.padding_mode,
                         device=m.weight.device, dtype=m.weight.dtype)
    if isinstance(module, nn.BatchNorm2d):
        m = module
        return nn.BatchNorm2d(groups * m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                              device=m.weight.device, dtype=m.weight.dtype)
    if isinstance(module, nn.Linear):
        m = module
        return FusedLinear(groups, m.in_features, m.out_features, dtype=m.weight.dtype, device=m.weight.device)
    for name, child in list(module.named_children()):
        setattr(module, name, _widen(child, groups))
    if isinstance(module, densenet._DenseBlock):
        return FusedDenseBlock(module, groups)
    return module


def fuse_models(models: Sequence[nn.Module]) -> nn.Module:
    """One model computing all of `models` (same architecture, any weights): input (N, G*3, H, W),
    the G models' inputs stacked on channels; output (N, G, classes). Its state holds exactly
    the G models' states (see split_state); training mode is taken from the first model."""
    if not models:
        raise NormfastError("fuse_models: no models given")
    groups = len(models)
    states = [m.state_dict() for m in models]
    shapes = {k: v.shape for k, v in states[0].items()}
    for i, s in enumerate(states[1:], 1):
        if {k: v.shape for k, v in s.items()} != shapes:
            raise NormfastError(f"fuse_models: model {i} is not the same architecture as model 0")
    _check_fusable(models[0])
    fused = _widen(copy.deepcopy(models[0]), groups)
    fused.fused_groups = groups
    fused.load_state_dict(fuse_state(states, state_layout(fused)))
    return fused.train(models[0].training)


def state_layout(fused: nn.Module) -> dict[str, str]:
    """How each state-dict entry of a fused model joins the G models' entries: `cat` on dim 0
    (convolutions, BatchNorm), `stack` on a new dim 0 (the heads) or `shared` (BatchNorm's
    num_batches_tracked, one step count for all)."""
    layout = {}
    for prefix, m in fused.named_modules():
        for name, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            key = f"{prefix}.{name}" if prefix else name
            layout[key] = STACK if isinstance(m, FusedLinear) else SHARED if name == "num_batches_tracked" else CAT
    return layout


def _join(tensors: list[torch.Tensor], kind: str, key: str) -> torch.Tensor:
    if kind == CAT:
        return torch.cat(tensors, 0)
    if kind == STACK:
        return torch.stack(tensors, 0)
    if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
        raise NormfastError(f"fuse: {key} differs between the settings ({[t.tolist() for t in tensors]}); "
                            f"they are not at the same step")
    return tensors[0].clone()


def _part(tensor: torch.Tensor, kind: str, groups: int) -> list[torch.Tensor]:
    if kind == CAT:
        return [t.clone() for t in tensor.chunk(groups, 0)]
    if kind == STACK:
        return [t.clone() for t in tensor.unbind(0)]
    return [tensor.clone() for _ in range(groups)]


def fuse_state(states: Sequence[dict], layout: dict[str, str]) -> dict:
    """G separate models' state dicts -> the fused model's."""
    for i, s in enumerate(states):
        if set(s) != set(layout):
            extra = sorted(set(s) ^ set(layout))
            raise NormfastError(f"fuse_state: state {i} does not fit the fused model (e.g. key {extra[0]!r})")
    return {k: _join([s[k] for s in states], kind, k) for k, kind in layout.items()}


def split_state(state: dict, layout: dict[str, str], groups: int) -> list[dict]:
    """The fused model's state dict -> G ordinary state dicts of the separate model."""
    out: list[dict] = [{} for _ in range(groups)]
    for k, kind in layout.items():
        for g, part in enumerate(_part(state[k], kind, groups)):
            out[g][k] = part
    return out


def parameter_names(fused: nn.Module) -> list[str]:
    """The parameters' names in optimizer order (the separate model's order too)."""
    return [name for name, _ in fused.named_parameters()]


def split_optimizer_state(state: dict, names: list[str], layout: dict[str, str], groups: int) -> list[dict]:
    """A fused Adam's state_dict -> G state dicts of the separate models' Adams: per-element
    moments (exp_avg, exp_avg_sq, ...) are split like their parameter, scalars (step) shared."""
    out = [{"state": {}, "param_groups": copy.deepcopy(state["param_groups"])} for _ in range(groups)]
    for idx, per_param in state["state"].items():
        kind = layout[names[int(idx)]]
        for key, value in per_param.items():
            parts = (_part(value, kind, groups) if torch.is_tensor(value) and value.dim() > 0
                     else [value.clone() if torch.is_tensor(value) else value for _ in range(groups)])
            for g in range(groups):
                out[g]["state"].setdefault(idx, {})[key] = parts[g]
    return out


def fuse_optimizer_state(states: Sequence[dict], names: list[str], layout: dict[str, str]) -> dict:
    """G separate Adams' state dicts (all at the same step) -> the fused Adam's."""
    first = states[0]
    for i, s in enumerate(states[1:], 1):
        if set(s["state"]) != set(first["state"]):
            raise NormfastError(f"fuse: optimizer state {i} covers other parameters than state 0")
        if [{k: v for k, v in g.items() if k != "params"} for g in s["param_groups"]] != \
                [{k: v for k, v in g.items() if k != "params"} for g in first["param_groups"]]:
            raise NormfastError(f"fuse: optimizer state {i} has other hyper-parameters (lr, betas) than state 0")
    fused = {"state": {}, "param_groups": copy.deepcopy(first["param_groups"])}
    for idx, per_param in first["state"].items():
        kind = layout[names[int(idx)]]
        entry = {}
        for key, value in per_param.items():
            values = [s["state"][idx][key] for s in states]
            if torch.is_tensor(value) and value.dim() > 0:
                entry[key] = _join(values, kind, f"optimizer {names[int(idx)]}.{key}")
            else:
                entry[key] = _join([torch.as_tensor(v) for v in values], SHARED, f"optimizer {key}")
                if not torch.is_tensor(value):
                    entry[key] = value
        fused["state"][idx] = entry
    return fused


def per_setting_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each setting, shape (G,), from logits (N, G, classes), in float32
    or wider (what a separate run computes: CrossEntropyLoss on out.float()). One kernel for
    all settings; the backward of their sum gives each model exactly its own loss's gradient,
    since no parameter is shared."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    target = y[:, None].expand(-1, logits.shape[1])
    return nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(0)
