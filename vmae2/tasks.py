"""What is trained: a task supplies the model, its parameter groups, the loader and the loss of a batch.

The training loop (vmae2.train) owns everything else: lr schedule, accumulation, clipping, the non-finite
guard, logging, DDP/FSDP2, checkpoints and exact resume. Three tasks:

    Reconstruction   pre-training: VideoMAEv2, dual masks from the loader, the model's own loss (spec §4)
    Classification   fine-tuning / post-pre-training: VideoClassifier, mixup/cutmix on the device, soft-target
                     cross-entropy (spec §7), periodic 1-view and final multi-view evaluation
    Distillation     a student classifier trained as in Classification towards a frozen teacher's softmax on
                     the same mixed clip (vmae2.distill holds the loss and the teacher)
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from . import distill, optim
from .config import DistillConfig, FinetuneConfig, PretrainConfig, TrainConfig
from .datasets import check_data, dataset_num_classes
from .model import VideoClassifier, VideoMAEv2
from .overrides import ConfigError


def sampling_config(cfg: TrainConfig):
    """The loader's per-sample draws for this run (dali_pipes.sampling.SamplingConfig)."""
    from dali_pipes.sampling import SamplingConfig

    m = cfg.model
    return SamplingConfig(num_frames=m.num_frames, stride=cfg.frame_stride, img_size=m.img_size,
                          num_sample=cfg.num_sample, patch_size=m.patch_size,
                          encoder_mask_ratio=m.encoder_mask_ratio, decoder_mask_ratio=m.decoder_mask_ratio)


class Reconstruction:
    """Dual-masking pre-training: loss = the model's normalised-pixel MSE on the loss tokens."""

    name = "pretrain"

    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        model = VideoMAEv2(self.cfg.model)
        if self.cfg.init:
            from .weights import load_weights

            print(f"init from {self.cfg.init}: {load_weights(model, self.cfg.init)}")
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        return optim.pretrain_param_groups(model, self.cfg.weight_decay)

    def make_loader(self, env):
        check_data(self.cfg.data)
        from dali_pipes import pretrain_loader

        return pretrain_loader(self.cfg.data, self.cfg.batch_videos_per_gpu, sampling_config(self.cfg),
                               device=env.device, rank=env.rank, world_size=env.world_size, seed=self.cfg.seed,
                               num_threads=self.cfg.loader_threads)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        loss, _ = model(batch["video"], batch["masks"])
        return loss

    def evaluate(self, model, env, final: bool) -> dict | None:
        return None


def mix_clips(mixup, video: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup/CutMix on uint8 clips (B, T, H, W, 3): the same box on every frame, soft targets.

    timm mixes (B, C, H, W) images and cuts its CutMix box from the last two dimensions; frames and
    channels are folded into C, so the box covers H × W on every frame. Returns float pixels in
    [0, 255], which the model normalises like uint8 input.
    """
    B, T, H, W, C = video.shape
    x = video.permute(0, 1, 4, 2, 3).reshape(B, T * C, H, W).float()
    x, target = mixup(x, label)
    return x.reshape(B, T, C, H, W).permute(0, 1, 3, 4, 2), target


class Classification:
    """Fine-tuning: VideoClassifier, layer-wise lr decay, mixup/cutmix + label smoothing (spec §7)."""

    name = "finetune"

    def __init__(self, cfg: FinetuneConfig, num_classes: int | None = None):
        self.cfg = cfg
        self.num_classes = num_classes or dataset_num_classes(cfg.data, cfg.label_map)
        self.mixup = None
        if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                               switch_prob=cfg.mixup_switch_prob, mode="batch",
                               label_smoothing=cfg.label_smoothing, num_classes=self.num_classes)

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        model = VideoClassifier(cfg.model, self.num_classes, drop_path=cfg.drop_path, head_dropout=cfg.head_dropout)
        if cfg.init:
            from .weights import load_weights

            report = load_weights(model, cfg.init, head_rows=cfg.head_rows or None)
            print(f"init from {cfg.init}: {report}")
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        return optim.layer_decay_param_groups(model, self.cfg.weight_decay, self.cfg.layer_decay)

    def loader_config(self):
        return classify_config(self.cfg)

    def make_loader(self, env):
        check_data(self.cfg.data)
        from dali_pipes.classify import finetune_loader

        return finetune_loader(self.cfg.data, self.cfg.batch_videos_per_gpu, self.loader_config(),
                               device=env.device, rank=env.rank, world_size=env.world_size, seed=self.cfg.seed,
                               num_threads=self.cfg.loader_threads, label_map=self.cfg.label_map or None,
                               flip_map=self.cfg.label_flip_map or None)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        video, label = batch["video"], batch["label"]
        if self.mixup is not None:
            video, target = mix_clips(self.mixup, video, label)
            logits = model(video).float()
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()  # SoftTargetCrossEntropy
        return F.cross_entropy(model(video).float(), label, label_smoothing=self.cfg.label_smoothing)

    def evaluate(self, model, env, final: bool) -> dict | None:
        """1-view validation during training; the full clips × crops protocol at the end."""
        if not self.cfg.val_data:
            return None
        from .evaluate import evaluate_views

        views = (self.cfg.test_num_clips, self.cfg.test_num_crops) if final else (1, 1)
        return evaluate_views(model, self.cfg, self.cfg.val_data, views, env)


def labelled_classes(data: str, label_map: str = "") -> int | None:
    """Classes of a labelled shard set or mixture (as dataset_num_classes counts them); None without labels."""
    from dali_pipes.mixture import is_mixture
    from dali_pipes.shards import open_shards
    from shard_tools.format import read_manifest
    from shard_tools.mixture import read_mixture

    if label_map:
        return dataset_num_classes(data, label_map)
    root = read_mixture(data)[0]["path"] if is_mixture(data) else open_shards(data).root
    return len(read_manifest(root)["labels"]) or None


class Distillation(Classification):
    """A student fine-tuned as in Classification (its loader, mixup, layer decay, evaluation) whose target is the
    frozen teacher's softmax on the same mixed clip: loss = distill.distillation_loss [+ alpha × cross-entropy].

    The teacher is no submodule of the student, so it is in no optimizer, checkpoint or DDP; the loop asks for it
    once (load_teacher), and a resumed run loads it again from its source.
    """

    name = "distill"

    def __init__(self, cfg: DistillConfig):
        from .weights import read_source

        if not cfg.teacher:
            raise ConfigError("teacher is empty: pass --teacher WEIGHTS (a fine-tuned classifier: a published .pth, "
                              "safetensors, hf://OWNER/REPO or a vmae2 run)")
        self.teacher_source = read_source(cfg.teacher)   # read once: the label space here, the tensors later
        distill.teacher_model_config(cfg, self.teacher_source)   # a teacher that cannot see the clips fails now
        super().__init__(cfg, num_classes=distill.teacher_classes(cfg, self.teacher_source))
        self.teacher, self.timer = None, None

    def build_model(self) -> nn.Module:
        """The student; an --init classifier with the teacher's head rows takes head_rows as the teacher does."""
        from .weights import load_weights, read_source

        cfg = self.cfg
        model = VideoClassifier(cfg.model, self.num_classes, drop_path=cfg.drop_path, head_dropout=cfg.head_dropout)
        if cfg.init:
            source = read_source(cfg.init)
            head = source.state.get("head.weight")
            remap = head is not None and head.shape[0] != self.num_classes
            report = load_weights(model, source, head_rows=(cfg.head_rows or None) if remap else None)
            print(f"init from {cfg.init}: {report}")
        return model

    def load_teacher(self, env) -> nn.Module:
        self.teacher = distill.build_teacher(self.cfg, self.teacher_source, self.num_classes, env)
        self.teacher_source = None          # its tensors are in the teacher now
        self.timer = distill.ForwardTimer(env.device)
        return self.teacher

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
            # with alpha = 0) mixes as class 0, into a target nothing reads
            video, target = mix_clips(self.mixup, video, label.clamp(min=0))
        with torch.no_grad(), self.timer:
            teacher_logits = self.teacher(video)
        student_logits = model(video)
        loss = distill.distillation_loss(student_logits, teacher_logits, self.cfg.temperature)
        if self.cfg.alpha > 0:
            if target is not None:
                hard = torch.sum(-target * F.log_softmax(student_logits.float(), dim=-1), dim=-1).mean()
            else:
                hard = F.cross_entropy(student_logits.float(), label, label_smoothing=self.cfg.label_smoothing)
            loss = loss + self.cfg.alpha * hard
        return loss

    def report_fields(self, steps: int, elapsed_s: float) -> dict:
        """The teacher's forward time in a metrics row: seconds per optimizer step and its share of the step."""
        seconds = self.timer.take()
        return {"teacher_forward_s": seconds / max(steps, 1), "teacher_time_frac": seconds / max(elapsed_s, 1e-9)}


def rand_augment_config(spec: str):
    """timm's RandAugment spec ("rand-m7-n4-mstd0.5-inc1") as dali_pipes.views.RandAugmentConfig; "" = off.

    `inc1` (timm's increasing-severity ops) is what dali_pipes implements, so it is required.
    """
    if not spec:
        return None
    from dali_pipes.views import RandAugmentConfig

    parts = spec.split("-")
    fields, names = {}, {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std"}
    for part in parts[1:]:
        key = next((k for k in ("mstd", "inc", "m", "n") if part.startswith(k)), None)
        if key is None or not part[len(key):].replace(".", "", 1).isdigit():
            raise ConfigError(f"rand_augment={spec!r}: cannot read {part!r}; expected e.g. rand-m7-n4-mstd0.5-inc1")
        if key == "inc":
            if part != "inc1":
                raise ConfigError(f"rand_augment={spec!r}: only inc1 (increasing-severity ops) is implemented")
            continue
        value = float(part[len(key):])
        fields[names[key]] = int(value) if key == "n" else value
    if parts[0] != "rand" or "inc1" not in parts:
        raise ConfigError(f"rand_augment={spec!r}: expected a timm spec like rand-m7-n4-mstd0.5-inc1")
    return RandAugmentConfig(**fields)


def classify_config(cfg: FinetuneConfig):
    """The fine-tuning loader's per-video draws for this run (dali_pipes.classify.FinetuneConfig)."""
    from dali_pipes import classify
    from dali_pipes.views import EraseConfig

    m = cfg.model
    erase = EraseConfig(prob=cfg.random_erase_prob, min_area=cfg.random_erase_min_area,
                        max_area=cfg.random_erase_max_area, min_aspect=cfg.random_erase_min_aspect)
    return classify.FinetuneConfig(num_frames=m.num_frames, stride=cfg.frame_stride, sampling=cfg.sampling,
                                   img_size=m.img_size, num_sample=cfg.num_sample,
                                   crop_scale=(cfg.crop_scale_min, cfg.crop_scale_max),
                                   crop_ratio=(cfg.crop_ratio_min, cfg.crop_ratio_max),
                                   flip_prob=0.5 if cfg.flip else 0.0,
                                   colour_permute_prob=cfg.colour_permute_prob, invert_prob=cfg.invert_prob,
                                   rand_augment=rand_augment_config(cfg.rand_augment),
                                   erase=erase if cfg.random_erase_prob else None)


def task_for(cfg: TrainConfig):
    if isinstance(cfg, DistillConfig):
        return Distillation(cfg)
    return Classification(cfg) if isinstance(cfg, FinetuneConfig) else Reconstruction(cfg)
