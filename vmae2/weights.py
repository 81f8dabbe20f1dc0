"""Weights in and out: published VideoMAE V2 files (spec §6), our own runs, plain state dicts.

Not to be confused with vmae2.checkpoint, which holds the resumable training state of a run.

Files are read with `torch.load(weights_only=True)`: tensors and plain containers only, never
arbitrary pickled objects. Every refusal names the file, the key and what to do.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from shard_tools.files import tmp_path

from . import checkpoint, distributed
from .optim import clean_name

FINAL_WEIGHTS = "pretrain_final.pt"   # a pre-training run's weights, beside its checkpoints
WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")


@dataclass
class LoadReport:
    """What a load did: keys taken, keys dropped on purpose, parameters left at their init."""

    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def short(keys: list[str]) -> str:
            groups = sorted({k.split(".")[0] if not k.startswith("encoder.norm") else "encoder.norm" for k in keys})
            return ", ".join(groups) or "none"
        return (f"loaded {len(self.loaded)} tensors; dropped {len(self.dropped)} ({short(self.dropped)}); "
                f"left at init {len(self.initialised)} ({short(self.initialised)})")


def read_state_dict(source, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A flat state dict from a path or a loaded object, unwrapped and with compile/DDP prefixes removed."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not os.path.isfile(name):
            raise FileNotFoundError(f"checkpoint {name} does not exist")
        try:
            source = torch.load(name, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... by cause
            raise ValueError(
                f"{name} is not a loadable weights file ({type(err).__name__}: {str(err).splitlines()[0]}); "
                f"vmae2 loads tensors only (weights_only=True), so a file holding other pickled objects must "
                f"be re-saved as a plain state dict"
            ) from None
    state = source
    while isinstance(state, dict) and not _is_flat(state):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{name}: no state dict found; expected tensors at the top level or under one of "
                             f"{', '.join(repr(k) for k in WRAPPER_KEYS)}, got keys {sorted(state)[:8]}")
        state = inner
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{name}: expected a non-empty dict of tensors, got {type(state).__name__}")
    return {_strip(k): v for k, v in state.items()}


def _is_flat(state: dict) -> bool:
    return any(isinstance(v, torch.Tensor) for v in state.values())


def _strip(key: str) -> str:
    key = key.replace("_orig_mod.", "")
    return key[len("module."):] if key.startswith("module.") else key


def check_shapes(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"{name}: shape mismatch at {key}: checkpoint {tuple(value.shape)} vs model "
                             f"{tuple(own[key].shape)}; build the model with the checkpoint's preset and sizes")


def load_pretrain(model: nn.Module, source, name: str = "checkpoint") -> LoadReport:
    """Load a pre-training checkpoint strictly into a VideoMAEv2 model."""
    state = read_state_dict(source, name)
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else name
    check_shapes(model, state, name)
    _load_exact(model, state, name)
    return LoadReport(loaded=sorted(state))


def _load_exact(model: nn.Module, state: dict, name: str) -> None:
    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(f"{name}: keys do not match the model: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                         f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}; is it a checkpoint of "
                         f"the other kind (pre-training vs fine-tuned) or another preset?")
    model.load_state_dict(state, strict=True)


def pretrain_to_classifier(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Encoder weights under classifier names; the decoder and the final encoder norm are dropped."""
    kept, dropped = {}, []
    for key, value in state.items():
        if key.startswith("encoder.") and not key.startswith("encoder.norm."):
            kept[key[len("encoder."):]] = value
        else:
            dropped.append(key)
    return kept, sorted(dropped)


def read_head_rows(path) -> torch.Tensor:
    """Row indices (one integer per line) that map a 710-class head onto a subset of classes."""
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(int(line.split()[0]))
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: expected an integer row index, got {line.strip()!r}") from None
    if not rows:
        raise ValueError(f"{path}: no row indices found")
    return torch.tensor(rows, dtype=torch.long)


def load_classifier(model: nn.Module, source, head_rows=None, name: str = "checkpoint") -> LoadReport:
    """Load a fine-tuned checkpoint strictly, or the encoder of a pre-training checkpoint.

    head_rows: a path or 1-D index tensor selecting rows of the checkpoint's head (e.g. K710 -> K400).
    """
    state = read_state_dict(source, name)
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else name
    if any(k.startswith("encoder.") for k in state):
        state, dropped = pretrain_to_classifier(state)
        check_shapes(model, state, name)
        missing = sorted(set(model.state_dict()) - set(state))
        if any(not k.startswith(("fc_norm.", "head.")) for k in missing):
            raise ValueError(f"{name}: the pre-training checkpoint lacks encoder weights {missing[:6]}")
        model.load_state_dict(state, strict=False)
        return LoadReport(loaded=sorted(state), dropped=dropped, initialised=missing)
    if head_rows is not None:
        rows = read_head_rows(head_rows) if isinstance(head_rows, (str, os.PathLike)) else torch.as_tensor(head_rows)
        num_rows = state["head.weight"].shape[0] if "head.weight" in state else 0
        if rows.numel() and (rows.min() < 0 or rows.max() >= num_rows):
            raise ValueError(f"{name}: head row indices must lie in [0, {num_rows}), got {rows.min()}..{rows.max()}")
        state = dict(state, **{k: state[k][rows] for k in ("head.weight", "head.bias") if k in state})
    check_shapes(model, state, name)
    _load_exact(model, state, name)
    return LoadReport(loaded=sorted(state))


def export_weights(model: nn.Module, path, env: distributed.DistEnv) -> None:
    """The full model state dict as one plain .pt file (rank 0), loadable by load_pretrain."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if env.is_main:
        path = Path(path)
        tmp = tmp_path(path)
        torch.save({clean_name(k): v for k, v in state.items()}, tmp)
        os.replace(tmp, path)
    distributed.barrier()


def resolve_weights(source) -> Path:
    """A checkpoint folder or .pt file from a run folder, a checkpoint folder or a .pt file."""
    path = Path(source)
    if path.is_file():
        return path
    if (path / "meta.json").is_file():
        return path
    if path.is_dir():
        latest = checkpoint.latest_checkpoint(path)
        if latest is not None:
            return latest
        if (path / FINAL_WEIGHTS).is_file():
            return path / FINAL_WEIGHTS
        raise FileNotFoundError(f"{path}: no checkpoint (ckpt-*/ with meta.json) and no {FINAL_WEIGHTS}; "
                                f"pass a run folder of `vmae2-train pretrain`, a checkpoint folder or a .pt file")
    raise FileNotFoundError(f"{path} does not exist")


def read_model_state(source) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(pre-training model state dict, run config dict or None) from any source resolve_weights takes."""
    path = resolve_weights(source)
    if path.is_file():
        config_path = path.parent / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else None
        return read_state_dict(path), config
    config = json.loads((path / "config.json").read_text())
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    keys = [k for k in metadata.state_dict_metadata if k.startswith("model.")]
    state = {}
    for key in keys:
        info = metadata.state_dict_metadata[key]
        state[key] = torch.empty(info.size, dtype=info.properties.dtype)
    with checkpoint.single_process_quiet():
        dcp.load(state, checkpoint_id=str(path), no_dist=True)
    return {k[len("model."):]: v for k, v in state.items()}, config
