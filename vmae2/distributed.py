"""Processes, devices and data parallelism: torchrun's environment, DDP, FSDP2, per-block compile.

One process per GPU, started by torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT; multi-node through its --nnodes / --rdzv-* flags). Without torchrun a run is a single
process. NCCL on CUDA, gloo on CPU (the tests run 2 gloo processes).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int              # global process index
    local_rank: int        # process index on this node (the GPU it drives)
    world_size: int        # processes in the job
    device: torch.device   # this process's device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto") -> DistEnv:
    """Join the torchrun job (if any) and pick this process's device."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but torch sees no CUDA device; use device=cpu or check the driver")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        # Trained weights drive some activations and gradients subnormal, and x86 arithmetic on
        # subnormals is slow: fine-tuning tiny from pre-trained weights ran at half speed without this.
        torch.set_flush_denormal(True)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistEnv(rank, local_rank, world_size, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over processes (a no-op in a single process)."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def all_gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order (a one-element list in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Autocast:
    """The one place that chooses the precision: bf16 autocast on CUDA (or when asked), else fp32.

    Reusable as a context manager around every forward pass; `bf16` tells FSDP2 how to gather.
    """

    def __init__(self, precision: str, device: torch.device):
        self.bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        self._context = torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def __enter__(self):
        return self._context.__enter__()

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def autocast(precision: str, device: torch.device) -> Autocast:
    return Autocast(precision, device)


def transformer_blocks(model: nn.Module) -> list[nn.ModuleList]:
    """The block lists of a VideoMAEv2 (encoder, decoder) or VideoClassifier."""
    if hasattr(model, "encoder"):
        return [model.encoder.blocks, model.decoder.blocks]
    return [model.blocks]


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each transformer block (as torchtitan does, before FSDP wraps the blocks).

    Parameter names gain `_orig_mod.` inside each block; the optimizer groups and torch's
    distributed state dicts strip it, so groups and checkpoints match an uncompiled model.
    """
    for blocks in transformer_blocks(model):
        for i in range(len(blocks)):
            blocks[i] = torch.compile(blocks[i], fullgraph=True)


def fully_shard_blocks(model: nn.Module, bf16: bool) -> nn.Module:
    """FSDP2: fully_shard each transformer block, then the whole model (parameters gathered in bf16 when
    training in bf16, gradients reduced in fp32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for blocks in transformer_blocks(model):
        for block in blocks:
            fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def wrap(model: nn.Module, env: DistEnv, parallel: str, bf16: bool) -> nn.Module:
    """The model for training: unchanged in one process, else DDP or FSDP2 (fully_shard per block).

    FSDP2 shards parameters, gradients and optimizer state, which ViT-H and ViT-g need; it keeps the
    parameter names, and gathers parameters in bf16 when training in bf16 (gradients reduce in fp32).
    Activation checkpointing is the model's own per-block switch (ModelConfig.grad_checkpointing).
    """
    if env.world_size == 1:
        return model
    if parallel == "fsdp":
        return fully_shard_blocks(model, bf16)
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


def no_grad_sync(model: nn.Module, sync: bool):
    """Context for one micro-step: skip the gradient all-reduce unless `sync` (grad accumulation)."""
    if sync:
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):                      # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):   # FSDP2
        model.set_requires_gradient_sync(False)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (FSDP2 and in-place compile keep the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def weights_digest(model: nn.Module) -> str | None:
    """sha256 of this rank's parameters (None under FSDP, whose ranks hold different shards).

    Data-parallel replicas must agree bit for bit; comparing digests across ranks checks it.
    """
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(unwrap(model).named_parameters()):
        if hasattr(param, "full_tensor"):
            return None
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
