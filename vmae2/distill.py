"""Distillation, the third task of the one training loop: a frozen classifier teaches a student classifier.

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
from .datasets import check_data, dataset_num_classes
from .model import VideoClassifier
from .overrides import ConfigError
from .tasks import Classification, mix_clips
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


def freeze_teacher(teacher: nn.Module, device: torch.device) -> nn.Module:
    """The teacher as it runs: eval mode (no dropout or drop path), no gradients, bf16 weights on a GPU.

    Only the parameters go to bf16 on a GPU (half the memory, the dtype autocast computes in anyway);
    the fixed position table stays fp32, as it is in the student.
    """
    teacher.eval().requires_grad_(False)
    teacher.to(device)
    if device.type == "cuda":
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


def labelled_classes(data: str, label_map: str = "") -> int | None:
    """Classes of a labelled shard set or mixture; None for a shard set packed without labels."""
    from dali_pipes.mixture import is_mixture
    from dali_pipes.shards import open_shards
    from shard_tools.format import read_manifest

    if label_map or is_mixture(data):
        return dataset_num_classes(data, label_map)
    return len(read_manifest(open_shards(data).root)["labels"]) or None


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


def hard_label_loss(logits: torch.Tensor, target: torch.Tensor | None, label: torch.Tensor,
                    label_smoothing: float) -> torch.Tensor:
    """Fine-tuning's loss: soft-target cross-entropy on mixed targets, else label-smoothed cross-entropy."""
    if target is not None:
        return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), label, label_smoothing=label_smoothing)


class Distillation(Classification):
    """The student is fine-tuned like Classification (its loader, mixup, layer decay, evaluation); its target is
    the frozen teacher's softmax on the same mixed clip (module doc)."""

    name = "distill"

    def __init__(self, cfg: DistillConfig):
        if not cfg.teacher:
            raise ConfigError("teacher is empty: pass --teacher WEIGHTS (a fine-tuned classifier: a published .pth, "
                              "safetensors, hf://OWNER/REPO or a vmae2 run)")
        self.teacher_source = read_source(cfg.teacher)   # read once here; its tensors go to the device later
        self.teacher_config = teacher_model_config(cfg, self.teacher_source)
        super().__init__(cfg, num_classes=teacher_classes(cfg, self.teacher_source))
        self.teacher, self.timer = None, None

    def build_model(self) -> nn.Module:
        """The student; an --init classifier whose head has the teacher's rows takes head_rows as the teacher does."""
        cfg = self.cfg
        model = VideoClassifier(cfg.model, self.num_classes, drop_path=cfg.drop_path, head_dropout=cfg.head_dropout)
        if cfg.init:
            source = read_source(cfg.init)
            head = source.state.get("head.weight")
            rows = cfg.head_rows or None if head is not None and head.shape[0] != self.num_classes else None
            print(f"init from {cfg.init}: {load_weights(model, source, head_rows=rows)}")
        return model

    def load_teacher(self, env: distributed.DistEnv) -> nn.Module:
        """The frozen teacher on this process's device (built there: ViT-g initialises slowly on a CPU)."""
        cfg = self.cfg
        source, self.teacher_source = self.teacher_source or read_source(cfg.teacher), None
        with env.device:
            teacher = VideoClassifier(self.teacher_config, self.num_classes, drop_path=0.0)
        report = load_weights(teacher, source, head_rows=cfg.head_rows or None)
        teacher = freeze_teacher(teacher, env.device)
        sharded = shard_teacher(cfg.teacher_fsdp, teacher, env)
        if sharded:
            distributed.fully_shard_blocks(teacher, bf16=env.device.type == "cuda")
        if env.is_main:
            print(f"teacher {cfg.teacher}: {report}; {self.num_classes} classes, "
                  f"{'sharded with FSDP2' if sharded else 'one copy per process'}")
        self.teacher, self.timer = teacher, ForwardTimer(env.device)
        return teacher

    def loader_config(self):
        """Labels are read only where they are used (alpha > 0): with alpha = 0 unlabelled shards distil too."""
        return dataclasses.replace(super().loader_config(), labels_optional=self.cfg.alpha == 0)

    def make_loader(self, env):
        cfg = self.cfg
        check_data(cfg.data)
        for key in ("data", "val_data"):
            data = getattr(cfg, key)
            classes = labelled_classes(data, cfg.label_map if key == "data" else "") if data else None
            if classes is None and key == "data" and cfg.alpha > 0:
                raise ConfigError(f"alpha={cfg.alpha} weighs a cross-entropy on labels, but data={data!r} has none; "
                                  f"set alpha=0 to distil without labels, or pack the videos with labels")
            if classes is not None and classes != self.num_classes:
                rows = f" (head_rows {cfg.head_rows})" if cfg.head_rows else ""
                raise ConfigError(f"the teacher {cfg.teacher} gives {self.num_classes} classes{rows} but {key}="
                                  f"{data!r} has {classes}: student and teacher must share the data's label space; "
                                  f"map the teacher's head rows onto the data's classes with --set head_rows=FILE "
                                  f"(the published label_710to400.json maps a K710 head onto K400)")
        return super().make_loader(env)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        video, label = batch["video"], batch["label"]
        target = None
        if self.mixup is not None:
            # one mixup/cutmix draw, the same mixed clip for both models; a clip without a label (-1, only
            # with alpha = 0) mixes as class 0, a target nothing reads
            video, target = mix_clips(self.mixup, video, label.clamp(min=0))
        with torch.no_grad(), self.timer:
            teacher_logits = self.teacher(video)
        student_logits = model(video)
        loss = distillation_loss(student_logits, teacher_logits, self.cfg.temperature)
        if self.cfg.alpha > 0:
            loss = loss + self.cfg.alpha * hard_label_loss(student_logits, target, label, self.cfg.label_smoothing)
        return loss

    def report_fields(self, steps: int, elapsed_s: float) -> dict:
        """The teacher's forward time in a metrics row: seconds per optimizer step and share of the step."""
        seconds = self.timer.take()
        return {"teacher_forward_s": seconds / max(steps, 1), "teacher_time_frac": seconds / max(elapsed_s, 1e-9)}
