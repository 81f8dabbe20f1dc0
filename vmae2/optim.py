"""Optimizer parameter groups, the learning-rate schedule and the optimizer itself.

Weight decay groups come from timm (`param_groups_weight_decay`): no decay on 1-D tensors (biases,
norms, q_bias, v_bias) and on `mask_token`. Names are matched with the wrappers' prefixes removed
(`_orig_mod.` from torch.compile, `module.` from DDP), so a compiled or wrapped model gets the same
groups. Fine-tuning adds layer-wise lr decay with the model's own `layer_id` (spec §7).
"""
from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from .model import layer_id

# Tensors of more than one dimension that still take no weight decay (spec §7).
NO_WEIGHT_DECAY = ("mask_token", "*.mask_token", "pos_embed", "*.pos_embed")


def clean_name(name: str) -> str:
    """A parameter name without torch.compile / DDP / checkpoint-wrapper prefixes."""
    for prefix in ("_checkpoint_wrapped_module.", "_orig_mod.", "module."):   # the longest first
        name = name.replace(prefix, "")
    return name


class _Renamed:
    """named_parameters() of a model under clean names: all timm's group functions look at."""

    def __init__(self, model: nn.Module):
        self.pairs = [(clean_name(n), p) for n, p in model.named_parameters()]

    def named_parameters(self):
        return iter(self.pairs)


def pretrain_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decay (weights) and no decay (biases, norms, q/v biases, mask_token)."""
    return param_groups_weight_decay(_Renamed(model), weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY)


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """Per-layer groups with lr_scale = layer_decay^(depth + 1 − layer_id) (spec §7).

    timm's param_groups_layer_decay needs a `group_matcher` on the model; VideoClassifier instead
    exports `layer_id`, which encodes the same numbering (embedding 0, block k at k + 1, head last).
    """
    depth = _unwrap(model).cfg.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = clean_name(name)
        no_decay = param.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name
        layer = layer_id(name, depth)
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - layer), "layer_id": layer})
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def lr_at(step: int, *, peak_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup from 0, then half-cosine.

    As the reference's per-iteration cosine_scheduler: warmup rises linearly from 0 towards peak_lr;
    from step warmup_steps the lr follows min + (peak − min)·(1 + cos(π·k/K))/2, k the steps since
    warmup and K = total_steps − warmup_steps.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def scaled_lr(base_lr: float, videos_per_step: int) -> float:
    """The linear scaling rule of the published scripts: lr = base × (videos per optimizer step) / 256."""
    return base_lr * videos_per_step / 256


def build_ema(model: nn.Module, decay: float):
    """timm's EMA of the weights (evaluated and exported instead of the model), or None for decay 0."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def build_optimizer(groups: list[dict], *, kind: str, lr: float, betas: tuple[float, float],
                    eps: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW: torch's fused kernel (CUDA and CPU), or apex FusedAdam when asked for.

    torch's fused AdamW also reads `optimizer.found_inf`, which the trainer uses to skip a
    non-finite step on the device.
    """
    if kind == "apex_fused_adam":
        try:
            from apex.optimizers import FusedAdam
        except ImportError:
            raise RuntimeError("optimizer=apex_fused_adam needs NVIDIA apex built with --cuda_ext "
                               "(not on PyPI); install it or use optimizer=adamw") from None
        if device.type != "cuda":
            raise RuntimeError("optimizer=apex_fused_adam runs on CUDA only; use optimizer=adamw on CPU")
        return FusedAdam(groups, lr=lr, betas=betas, eps=eps, adam_w_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
