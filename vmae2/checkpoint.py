"""Training checkpoints that continue a run exactly, written so that a crash never leaves a torn one.

A checkpoint is a folder RUN_DIR/ckpt-{step:08d}/:

    .metadata, *.distcp   model and optimizer, torch.distributed.checkpoint (DCP) format: each rank
                          writes its own shards (FSDP2) and replicated tensors once (DDP)
    rank{r}.pt            per-process state: RNG states and the loader's position
    config.json           the run's resolved config
    meta.json             step, world size, time; written last

Every rank writes into ckpt-{step}.tmp/; after a barrier rank 0 writes meta.json and renames the
folder, so a folder without the .tmp suffix is always complete. Only complete folders are resumed
from. RUN_DIR must be on a file system that every node sees (multi-node runs).
"""
from __future__ import annotations

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
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

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


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(run_dir, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, rank_state: dict,
         config: dict, env: distributed.DistEnv, keep_last: int) -> Path:
    """Write checkpoint `step` atomically (all ranks call this) and delete all but the newest keep_last."""
    final = ckpt_path(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if env.is_main and tmp.exists():
        shutil.rmtree(tmp)   # left over from a run killed while saving
    distributed.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with single_process_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
    # Our own file, read back only by this code: plain torch.save (numpy and Python RNG states inside).
    torch.save(rank_state, tmp / f"rank{env.rank}.pt")
    distributed.barrier()
    if env.is_main:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        meta = {"step": step, "world_size": env.world_size, "time": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def load(path, model: nn.Module, optimizer: torch.optim.Optimizer, env: distributed.DistEnv) -> tuple[dict, dict]:
    """Restore model and optimizer from checkpoint `path`; returns (meta, this rank's state)."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta["world_size"] != env.world_size:
        raise RuntimeError(f"{path} was written by {meta['world_size']} processes but this run has "
                           f"{env.world_size}; exact resume needs the same world size (each rank's loader "
                           f"position and RNG state are saved separately); start a new RUN_DIR, or finetune/"
                           f"visualize from the checkpoint")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with single_process_quiet():
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rank_state = torch.load(path / f"rank{env.rank}.pt", map_location="cpu", weights_only=False)
    return meta, rank_state
