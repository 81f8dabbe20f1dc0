"""Resumable training checkpoints: everything needed to continue a run exactly, never a torn folder.

A checkpoint is a folder RUN_DIR/ckpt-{step:08d}/ in torch.distributed.checkpoint (DCP) format:

    .metadata, *.distcp   model, optimizer (each rank writes its own FSDP2 shards, replicated tensors
                          once), optional extra modules (the EMA of the weights), and one entry per
                          rank, `rank_state.{r}`: that process's RNG states and loader position
    config.json           the run's resolved config
    meta.json             step, world size, time; written last

The per-rank entries are JSON encoded into uint8 tensors (as torchtitan keeps each data-parallel
rank's loader state apart), so loading reads tensors only: no file is ever unpickled with
`weights_only=False` (DCP would, for non-tensor entries).

Every rank writes into ckpt-{step}.tmp/; after a barrier rank 0 writes meta.json and renames the
folder, so a folder without the .tmp suffix is always complete. Only complete folders are resumed
from. RUN_DIR must be on a file system that every node sees (multi-node runs).
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from shard_tools.files import write_json_atomic

from . import distributed

PREFIX = "ckpt-"


@contextlib.contextmanager
def single_process_quiet():
    """DCP warns that it assumes a single process when torch.distributed is not initialised: we know."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def ckpt_path(run_dir, step: int) -> Path:
    return Path(run_dir) / f"{PREFIX}{step:08d}"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints in run_dir as (step, path), oldest first."""
    out = []
    for path in Path(run_dir).glob(f"{PREFIX}*"):
        suffix = path.name[len(PREFIX):]
        if path.is_dir() and suffix.isdigit() and (path / "meta.json").is_file():
            out.append((int(suffix), path))
    return sorted(out)


def latest_checkpoint(run_dir) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


# ---- per-rank state: RNGs and the loader, as JSON inside a uint8 tensor ------------------------------

def seed_rngs(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global RNGs: everything a step may draw from."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state(device: torch.device) -> dict:
    """This process's torch, CUDA, numpy and Python RNG states (timm's Mixup draws from numpy's)."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state().numpy().tobytes(), "numpy": np.random.get_state(legacy=False),
             "python": [version, list(internal), gauss]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).numpy().tobytes()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(state["torch"]), dtype=torch.uint8))
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(state["cuda"]), dtype=torch.uint8), device)


def _encode(obj):
    """JSON-able form of plain containers, bytes and numpy arrays (tagged so `_decode` restores them)."""
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": base64.b64encode(obj.tobytes()).decode("ascii"), "dtype": obj.dtype.str,
                "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"per-rank checkpoint state holds a {type(obj).__name__}; keep it to plain containers, "
                    f"numbers, strings, bytes and numpy arrays")


def _decode(obj):
    if isinstance(obj, dict):
        if "__bytes__" in obj:
            return base64.b64decode(obj["__bytes__"])
        if "__ndarray__" in obj:
            data = base64.b64decode(obj["__ndarray__"])
            return np.frombuffer(data, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def rank_state_key(rank: int) -> str:
    return f"rank_state.{rank}"


def encode_rank_state(state: dict) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(_encode(state)).encode("utf-8")), dtype=torch.uint8)


def decode_rank_state(tensor: torch.Tensor) -> dict:
    return _decode(json.loads(tensor.numpy().tobytes().decode("utf-8")))


# ---- save and load ------------------------------------------------------------------------------------

def _training_state(model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, nn.Module]) -> dict:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd, **{name: m.state_dict() for name, m in extra.items()}}


def save(run_dir, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, rank_state: dict,
         config: dict, env: distributed.DistEnv, keep_last: int, extra: dict[str, nn.Module] | None = None) -> Path:
    """Write checkpoint `step` atomically (all ranks call this) and delete all but the newest keep_last.

    extra: further modules saved and restored with the model (e.g. {"ema": ema_model}).
    """
    final = ckpt_path(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if env.is_main and tmp.exists():
        shutil.rmtree(tmp)   # left over from a run killed while saving
    distributed.barrier()
    state = _training_state(model, optimizer, extra or {})
    state[rank_state_key(env.rank)] = encode_rank_state(rank_state)
    with single_process_quiet():
        dcp.save(state, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
    distributed.barrier()
    if env.is_main:
        write_json_atomic(tmp / "config.json", config, indent=2, sort_keys=False)
        write_json_atomic(tmp / "meta.json", {"step": step, "world_size": env.world_size, "time": time.time()})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def load(path, model: nn.Module, optimizer: torch.optim.Optimizer, env: distributed.DistEnv,
         extra: dict[str, nn.Module] | None = None) -> tuple[dict, dict]:
    """Restore model, optimizer and extra modules from checkpoint `path`; returns (meta, this rank's state)."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta["world_size"] != env.world_size:
        raise RuntimeError(f"{path} was written by {meta['world_size']} processes but this run has "
                           f"{env.world_size}; exact resume needs the same world size (each rank's loader "
                           f"position and RNG state are saved separately); start a new RUN_DIR, or finetune/"
                           f"visualize from the checkpoint")
    extra = extra or {}
    state = _training_state(model, optimizer, extra)
    key = rank_state_key(env.rank)
    size = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata[key].size
    state[key] = torch.empty(size, dtype=torch.uint8)
    with single_process_quiet():
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for name, module in extra.items():
        module.load_state_dict(state[name])
    return meta, decode_rank_state(state[key])


def read_model_state(path) -> dict[str, torch.Tensor]:
    """The model's full state dict from checkpoint folder `path`, on the CPU, in one process."""
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    state = {key: torch.empty(info.size, dtype=info.properties.dtype)
             for key, info in metadata.state_dict_metadata.items() if key.startswith("model.")}
    with single_process_quiet():
        dcp.load(state, checkpoint_id=str(path), no_dist=True)
    return {k[len("model."):]: v for k, v in state.items()}
