"""Distillation's loss and teacher; the task itself, the third of the one training loop, is vmae2.tasks.Distillation.

The procedure the paper cites for its ViT-S/B students (spec §7, Beyer et al. 2022, "a good teacher is
patient and consistent"): function matching. The teacher sees exactly the augmented clip the student
sees (the loader's crop, flip, RandAugment and erasing, then one mixup/cutmix draw on the device, fed to
both), and the student's softmax at temperature T is pulled towards the teacher's:

    loss = T² · KL(softmax(teacher / T) ‖ softmax(student / T))  [+ alpha · cross-entropy on the mixed labels]

No label is needed with alpha = 0 (the default), so unlabelled shards distil too. The teacher is not a
submodule of the student: it is in no optimizer, checkpoint or DDP bucket, it stays in eval mode under
no_grad, in bf16 on a GPU, and is sharded with FSDP2 across the ranks when it is large beside the GPU.
"""
from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .config import DistillConfig, ModelConfig, model_config
from .model import VideoClassifier
from .overrides import ConfigError
from .weights import Weights, architecture, load_weights, matching_preset, read_head_rows, read_source


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), mean over the batch, in fp32.

    T² keeps the gradient's scale independent of T (Hinton et al. 2015), so T can change without
    retuning the learning rate.
    """
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
    return kl * temperature ** 2


def freeze_teacher(teacher: nn.Module, device: torch.device, bf16: bool) -> nn.Module:
    """The teacher as it runs: eval mode (no dropout or drop path), no gradients, and bf16 weights on a GPU
    when the run computes under bf16 autocast (`bf16`; the default there).

    Only the parameters go to bf16 (half the memory, the dtype autocast computes in anyway); the fixed
    position table stays fp32, as it is in the student. CUDA's autocast runs LayerNorm in fp32 from bf16
    weights; the CPU's does not, so a CPU teacher keeps fp32 weights.
    """
    teacher.eval().requires_grad_(False)
    teacher.to(device)
    if bf16 and device.type == "cuda":
        for param in teacher.parameters():
            param.data = param.data.to(torch.bfloat16)
    return teacher


class ForwardTimer:
    """Seconds spent in the teacher's forward, summed without syncing the host in the step: CUDA events on a
    GPU, read (one sync on the last event) when the loop logs; the wall clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events, self.seconds, self.start = [], 0.0, None

    def __enter__(self):
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start = time.perf_counter()

    def __exit__(self, *exc):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((self.start, end))
        else:
            self.seconds += time.perf_counter() - self.start

    def take(self) -> float:
        """Seconds since the last take."""
        if self.events:
            self.events[-1][1].synchronize()
            self.seconds += sum(start.elapsed_time(end) for start, end in self.events) / 1e3
            self.events.clear()
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def teacher_model_config(cfg: DistillConfig, source: Weights) -> ModelConfig:
    """The teacher's architecture at the student's clip size (it sees the student's clips; its position table
    is fixed, not learned, so any token grid loads): --teacher-preset, else the model of the run config found
    with the weights, else the preset whose sizes the weights have."""
    saved = (source.config or {}).get("model")
    if cfg.teacher_preset:
        base = model_config(cfg.teacher_preset)
    elif isinstance(saved, dict):
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        base = ModelConfig(**{k: v for k, v in saved.items() if k in names})
    else:
        preset = matching_preset(architecture(source.state))
        if preset is None:
            raise ConfigError(f"teacher {source.name}: no config with the weights and no preset has their sizes "
                              f"({architecture(source.state)}); name it with --teacher-preset "
                              f"(--set teacher_preset=...)")
        base = model_config(preset)
    try:
        return dataclasses.replace(base, num_frames=cfg.model.num_frames, img_size=cfg.model.img_size,
                                   grad_checkpointing=False)
    except ConfigError as err:
        raise ConfigError(f"teacher {source.name}: it must see the student's {cfg.model.num_frames}x"
                          f"{cfg.model.img_size}x{cfg.model.img_size} clips, but {err}") from None


def teacher_classes(cfg: DistillConfig, source: Weights) -> int:
    """The label space of the run: the teacher's head rows, or as many as head_rows selects from them."""
    head = source.state.get("head.weight")
    if head is None:
        raise ConfigError(f"teacher {source.name}: no classifier head ({source.describe()}); the teacher must be a "
                          f"fine-tuned classifier, not pre-training weights or a feature extractor")
    return len(read_head_rows(cfg.head_rows)) if cfg.head_rows else head.shape[0]


def shard_teacher(setting: str, teacher: nn.Module, env: distributed.DistEnv) -> bool:
    """Whether to shard the teacher with FSDP2 over the ranks: `teacher_fsdp` on/off, or auto: when its weights
    would take more than a tenth of one GPU's memory (ViT-g's 2 GB of bf16 weights do not)."""
    if env.world_size == 1 or setting == "off":
        return False
    if setting == "on":
        return True
    if env.device.type != "cuda":
        return False
    weight_bytes = sum(p.numel() * p.element_size() for p in teacher.parameters())
    return weight_bytes > 0.1 * torch.cuda.get_device_properties(env.device).total_memory


def build_teacher(cfg: DistillConfig, source: Weights | None, num_classes: int, env: distributed.DistEnv) -> nn.Module:
    """The frozen teacher on this process's device, built there (ViT-g initialises slowly on a CPU), its head
    rows mapped by head_rows, sharded over the ranks where shard_teacher says so."""
    source = source or read_source(cfg.teacher)
    with env.device:
        teacher = VideoClassifier(teacher_model_config(cfg, source), num_classes, drop_path=0.0)
    report = load_weights(teacher, source, head_rows=cfg.head_rows or None)
    teacher = freeze_teacher(teacher, env.device, bf16=distributed.autocast(cfg.precision, env.device).bf16)
    sharded = shard_teacher(cfg.teacher_fsdp, teacher, env)
    if sharded:
        distributed.fully_shard_blocks(teacher, bf16=env.device.type == "cuda")
    if env.is_main:
        print(f"teacher {cfg.teacher}: {report}; {num_classes} classes, "
              f"{'sharded with FSDP2 over the ranks' if sharded else 'one copy per process'}")
    return teacher
