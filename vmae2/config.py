"""Configuration: one preset table (spec §2 models with their §7 pre-training and fine-tuning recipes).

A run is a preset (one per model size; for fine-tuning also a target dataset) plus `key=value`
overrides (`vmae2.overrides`): `pretrain_config("vit_b", {...})`, `finetune_config("vit_b", "ssv2", {...})`.
Every config checks itself in `__post_init__`, so a bad value fails when it is set, naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from dali_pipes.masking import mask_counts, token_grid

from .overrides import ConfigError, apply_overrides, config_text, read_config_file


@dataclass(frozen=True)
class ModelConfig:
    patch_size: int                  # spatial side p of a cube (tubelet 2×p×p)
    depth: int                       # encoder blocks
    embed_dim: int                   # encoder width D
    num_heads: int                   # encoder attention heads
    mlp_hidden_dim: int              # encoder MLP hidden width
    decoder_depth: int = 4           # decoder blocks
    decoder_embed_dim: int = 384     # decoder width Dd
    decoder_num_heads: int = 6       # decoder attention heads
    tubelet_size: int = 2            # frames per cube
    num_frames: int = 16             # frames per clip
    img_size: int = 224              # square crop side in pixels
    encoder_mask_ratio: float = 0.9  # tube masking: share of spatial positions removed
    decoder_mask_ratio: float = 0.5  # running-cell masking: share of tokens not decoded (0 = V1)
    normalize_target: bool = True    # loss on per-token normalised pixels (spec §4); False: on pixels in [0, 1]
    target_eps: float = 1e-6         # added to each token's std when normalising the target (published: 1e-6);
                                     # e.g. 0.05 keeps flat, lightly noisy patches near 0 instead of unit-scale noise
    pos_embed: str = "1d"            # fixed sin/cos table: 1d over the flat token index (published) | 3d (t, h, w)
    drop_path: float = 0.0           # stochastic depth at the last block (linear from 0)
    grad_checkpointing: bool = False  # activation checkpointing per block (H and g)

    def __post_init__(self):
        for name in ("patch_size", "depth", "embed_dim", "num_heads", "mlp_hidden_dim", "decoder_depth",
                     "decoder_embed_dim", "decoder_num_heads", "tubelet_size", "num_frames", "img_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)}: must be at least 1")
        for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ConfigError(f"model.{width}={getattr(self, width)} is not divisible by "
                                  f"model.{heads}={getattr(self, heads)}")
        if not self.target_eps > 0:
            raise ConfigError(f"model.target_eps={self.target_eps}: must be above 0 (published: 1e-6)")
        if self.pos_embed not in ("1d", "3d"):
            raise ConfigError(f"model.pos_embed={self.pos_embed!r}: choose 1d (the published table) or 3d")
        try:
            token_grid(self.num_frames, self.img_size, self.patch_size, self.tubelet_size)
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None

    @property
    def grid(self) -> tuple[int, int, int]:
        return token_grid(self.num_frames, self.img_size, self.patch_size, self.tubelet_size)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def decoder_mlp_hidden_dim(self) -> int:
        """int(Dd · mlp_ratio) with the *encoder's* mlp_ratio, as the published model: 2234 for ViT-g."""
        return self.decoder_embed_dim * self.mlp_hidden_dim // self.embed_dim


@dataclass
class TrainConfig:
    """What the training loop needs, for pre-training and fine-tuning alike."""

    preset: str = "tiny"                 # model preset (PRESETS)
    model: ModelConfig = field(default_factory=lambda: PRESETS["tiny"].model)  # architecture
    data: str = ""                       # shard folder, its manifest.json, or a mixture file
    out_dir: str = ""                    # run folder: config, metrics, checkpoints, events
    init: str = ""                       # weights to start from (any source vmae2.weights reads); "" = init
    # schedule (spec §7: warmup from 0, then per-iteration half-cosine to min lr)
    total_steps: int = 300               # optimizer steps of the whole run; 0 = epochs × batches per epoch
    epochs: float = 0.0                  # used when total_steps is 0 (an epoch shows every video once)
    warmup_fraction: float = 0.1         # share of the steps spent warming up linearly from lr 0
    base_lr: float = 1e-3                # peak lr per 256 videos per step
    min_lr_base: float = 1e-5            # final lr per 256 videos per step
    weight_decay: float = 0.05           # AdamW decay; none on biases, norms, q/v biases, mask_token
    layer_decay: float = 1.0             # lr scale decay^(depth + 1 − i) for layer i (1 = none)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad_norm: float = 0.0          # max global grad norm; 0 = no clipping
    # batch
    batch_videos_per_gpu: int = 32       # decoded videos per process per micro-step
    num_sample: int = 4                  # repeated augmentation: clips per decoded video
    grad_accum_steps: int = 1            # micro-steps per optimizer step
    frame_stride: int = 4                # temporal stride in source frames (2 for SSv2)
    loader_threads: int = 4              # DALI CPU threads per process
    # execution
    device: str = "auto"                 # auto (cuda when available) | cuda | cpu
    precision: str = "auto"              # auto (bf16 autocast on cuda, fp32 on cpu) | bf16 | fp32
    optimizer: str = "adamw"             # adamw (torch, fused kernel) | apex_fused_adam (needs apex)
    compile: bool = False                # torch.compile each transformer block
    parallel: str = "ddp"                # ddp | fsdp (FSDP2 fully_shard per block); used when world size > 1
    seed: int = 0                        # model init, masks and crops (the loader adds the rank)
    # bookkeeping
    log_every: int = 10                  # steps between metrics rows (and device syncs)
    save_every: int = 500                # steps between checkpoints (and always at the end)
    keep_last: int = 3                   # checkpoints kept; older ones are deleted
    max_nonfinite_skips: int = 0         # non-finite steps skipped before the run stops
    max_bad_sample_fraction: float = 0.01  # bad videos (replaced in their batch) per video read before the run stops
    tensorboard: bool = True             # also write TensorBoard events (when tensorboard is installed)
    progress: bool = True                # tqdm progress bar on rank 0
    log_keys: bool = False               # write each rank's sample keys to keys-rank{r}.jsonl (audits)

    _CHOICES = {"device": ("auto", "cuda", "cpu"), "precision": ("auto", "bf16", "fp32"),
                "optimizer": ("adamw", "apex_fused_adam"), "parallel": ("ddp", "fsdp")}
    _AT_LEAST_ONE = ("batch_videos_per_gpu", "num_sample", "grad_accum_steps", "log_every", "save_every",
                     "keep_last", "frame_stride", "loader_threads")

    def __post_init__(self):
        for key, allowed in self._CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        for key in self._AT_LEAST_ONE:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: must be at least 1")
        if self.total_steps < 0 or self.epochs < 0 or (self.total_steps == 0 and self.epochs == 0):
            raise ConfigError(f"total_steps={self.total_steps}, epochs={self.epochs}: set total_steps > 0, "
                              f"or total_steps=0 and epochs > 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction={self.warmup_fraction}: must lie in [0, 1)")
        if self.min_lr_base > self.base_lr:
            raise ConfigError(f"min_lr_base={self.min_lr_base} exceeds base_lr={self.base_lr}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay={self.layer_decay}: must lie in (0, 1]")
        if not 0 <= self.max_bad_sample_fraction <= 1:
            raise ConfigError(f"max_bad_sample_fraction={self.max_bad_sample_fraction}: must lie in [0, 1]")

    @property
    def videos_per_step(self) -> int:
        """Decoded videos per optimizer step on one process (times world size for the global count)."""
        return self.batch_videos_per_gpu * self.grad_accum_steps

    def steps(self, batches_per_epoch: int) -> tuple[int, int]:
        """(total optimizer steps, warmup steps) given the loader's batches per epoch."""
        total = self.total_steps or max(1, round(self.epochs * batches_per_epoch / self.grad_accum_steps))
        return total, int(self.warmup_fraction * total)


@dataclass
class PretrainConfig(TrainConfig):
    """Dual-masking pre-training (the masks' ratios are in `model`)."""

    def __post_init__(self):
        super().__post_init__()
        try:
            mask_counts(self.model.grid, self.model.encoder_mask_ratio, self.model.decoder_mask_ratio)
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None


@dataclass
class FinetuneConfig(TrainConfig):
    """Supervised fine-tuning / post-pre-training of the classifier (spec §7, the published scripts)."""

    dataset: str = "k400"                # recipe of the published scripts: k400, k710, ssv2, ...
    val_data: str = ""                   # labeled validation shards ("" = no evaluation)
    head_rows: str = ""                  # file mapping a K710 head onto the target's classes ("" = none)
    label_map: str = ""                  # one label space for a mixture of labeled sets (K710's label map)
    sampling: str = "dense"              # dense (Kinetics clips) | tsn (SSv2 segments)
    drop_path: float = 0.1               # stochastic depth at the last block
    head_dropout: float = 0.0            # dropout before the linear head
    label_smoothing: float = 0.1         # with mixup/cutmix: smoothing of the mixed targets
    mixup_alpha: float = 0.8             # 0 = off
    cutmix_alpha: float = 1.0            # 0 = off
    mixup_switch_prob: float = 0.5       # chance of cutmix instead of mixup when both are on
    rand_augment: str = "rand-m7-n4-mstd0.5-inc1"   # timm-style RandAugment spec ("" = off)
    random_erase_prob: float = 0.25      # random erasing, the same box on every frame
    random_erase_min_area: float = 0.02  # erased box area range, as a share of the crop
    random_erase_max_area: float = 1 / 3
    random_erase_min_aspect: float = 0.3  # box aspect in [min, 1 / min]
    crop_scale_min: float = 0.08         # random-resized crop: area range as a share of the frame
    crop_scale_max: float = 1.0
    crop_ratio_min: float = 0.75         # random-resized crop: aspect (w / h) range (the published 3/4 - 4/3)
    crop_ratio_max: float = 1.3333
    flip: bool = True                    # horizontal flip p 0.5 (off for SSv2)
    label_flip_map: str = ""             # file of class pairs a flip swaps ("" = the dataset's manifest)
    colour_permute_prob: float = 0.0     # a view's colour channels in a random order (not in the published recipes)
    invert_prob: float = 0.0             # a view inverted, 255 - x (not in the published recipes)
    test_num_clips: int = 5              # test views: clips along time ...
    test_num_crops: int = 3              # ... × crops along the long side
    eval_every_epochs: float = 5.0       # fast 1-view validation every so many epochs (0 = only at the end)
    ema_decay: float = 0.0               # EMA of weights (e.g. 0.9999); 0 = off

    _CHOICES = {**TrainConfig._CHOICES, "sampling": ("dense", "tsn")}
    _AT_LEAST_ONE = (*TrainConfig._AT_LEAST_ONE, "test_num_clips", "test_num_crops")

    def __post_init__(self):
        super().__post_init__()
        for key in ("mixup_alpha", "cutmix_alpha", "drop_path", "head_dropout", "eval_every_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)}: must not be negative")
        for key in ("label_smoothing", "mixup_switch_prob", "random_erase_prob", "ema_decay"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: must lie in [0, 1)")
        for key in ("colour_permute_prob", "invert_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key}={getattr(self, key)}: must lie in [0, 1]")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ConfigError(f"crop_scale_min={self.crop_scale_min}, crop_scale_max={self.crop_scale_max}: need "
                              f"0 < min <= max <= 1")
        if not 0 < self.crop_ratio_min <= self.crop_ratio_max:
            raise ConfigError(f"crop_ratio_min={self.crop_ratio_min}, crop_ratio_max={self.crop_ratio_max}: need "
                              f"0 < min <= max")
        if not 0 < self.random_erase_min_area <= self.random_erase_max_area < 1 or \
                not 0 < self.random_erase_min_aspect <= 1:
            raise ConfigError(f"random_erase_min_area={self.random_erase_min_area}, random_erase_max_area="
                              f"{self.random_erase_max_area}, random_erase_min_aspect={self.random_erase_min_aspect}: "
                              f"need 0 < min area <= max area < 1 and 0 < min aspect <= 1")


@dataclass
class DistillConfig(FinetuneConfig):
    """Distillation (vmae2.distill): the student is trained like a fine-tuned classifier, its target the
    frozen teacher's softmax on the same augmented clip. `head_rows` maps the teacher's head (and a
    classifier --init's head of the teacher's size) onto the student's classes."""

    teacher: str = ""                    # the teacher classifier's weights: anything `vmae2-train eval` reads
    teacher_preset: str = ""             # its model size; "" = its run config's model, else the preset of its sizes
    temperature: float = 1.0             # T: both softmaxes at logits / T, the KL scaled by T² (1 = as they are)
    alpha: float = 0.0                   # weight of the cross-entropy on the mixed labels (0: labels unused)
    teacher_fsdp: str = "auto"           # auto (shard over the ranks when its weights take >10% of a GPU) | on | off

    _CHOICES = {**FinetuneConfig._CHOICES, "teacher_fsdp": ("auto", "on", "off")}

    def __post_init__(self):
        super().__post_init__()
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature}: must be positive (1 leaves the logits as they are)")
        if self.alpha < 0:
            raise ConfigError(f"alpha={self.alpha}: must not be negative (0 distils without labels)")


@dataclass(frozen=True)
class Preset:
    """A model size: its architecture, its pre-training recipe and its fine-tuning recipes per dataset."""

    model: ModelConfig
    pretrain: dict                       # PretrainConfig fields that differ from the defaults
    finetune: dict                       # dataset -> FinetuneConfig fields of the published script
    distill: dict = field(default_factory=dict)  # recipe -> DistillConfig fields (vmae2's own: none is published)


# Pre-training of the ViT presets: ≈ 800 repeat-counted epochs (spec §7) of K400's 240k videos at 2048
# videos per step (32 per GPU × 64 GPUs); warmup 10% of the schedule as the published scripts (20 of 200
# epochs for B, 30 of 300 for g). Set --steps (or epochs) for your data and batch.
_VIT_PRETRAIN = dict(total_steps=23_440, warmup_fraction=0.1, batch_videos_per_gpu=32, log_every=20,
                     save_every=1000)


def _script(batch, lr, epochs, layer_decay, drop_path, weight_decay=0.05, warmup_epochs=5, **extra):
    """One row of the published fine-tuning scripts (spec §7): per-GPU batch, base lr, epochs, ...

    The scripts' --head_drop_rate is head_dropout here: 0.5 where a script sets it (ViT-H K400/K600/K710,
    ViT-g K710→UCF101/HMDB51), else their default 0.0.
    """
    return dict(batch_videos_per_gpu=batch, base_lr=lr, epochs=epochs, total_steps=0,
                warmup_fraction=warmup_epochs / epochs, layer_decay=layer_decay, drop_path=drop_path,
                weight_decay=weight_decay, **extra)


_SSV2 = dict(sampling="tsn", flip=False, frame_stride=1, test_num_clips=2, test_num_crops=3)
_B = {"k400": _script(16, 7e-4, 90, 0.75, 0.1), "k710": _script(16, 7e-4, 90, 0.75, 0.1),
      "ssv2": _script(16, 2e-3, 25, 0.65, 0.1, **_SSV2)}
# Distilling the ViT-g K710 classifier into ViT-S/B on K710 (spec §7): the B K710 row with the student's
# logits matched to the teacher's. The paper gives no epochs, T or alpha; these are vmae2's choice: the
# row's 90 epochs, T = 1 (the teacher's probabilities as they are) and alpha = 0 (function matching, no
# labels); mixup/cutmix stay on, both models seeing the same mixed clip.
_B_DISTILL = {"k710_distill": _script(16, 7e-4, 90, 0.75, 0.1, temperature=1.0, alpha=0.0)}

PRESETS: dict[str, Preset] = {
    # tiny: the CPU preset. 8 frames of 48x48 with patch 8 give a 4x6x6 token grid (144 tokens; the encoder
    # sees 4 of the 36 positions, 16 tokens) and the factorised 3-D position table; its target is the pixels,
    # not the per-patch normalised pixels of the ViT presets (on the synthetic sets' flat, lightly noisy
    # backgrounds a normalised patch is mostly noise and pre-training ends at the best constant patch).
    # Pre-training: 4 videos x 4 crops per step, frame stride 2, peak lr 1.5e-3, 10,000 steps.
    # Fine-tuning (synth): 16 videos x 2 clips per step at peak lr 2e-3, 100 epochs, layer decay 0.5, crops of
    # 0.5-1 of the frame, no flip, RandAugment, mixup/cutmix, erasing or label smoothing (on 160 videos they
    # only add noise), and each clip's colour channels permuted and, half the time, inverted: with about 16
    # videos per class, a clip's colours name the video, and a ViT fits them instead of the shape
    # (bench/reports/cpu/finetune.md measures the recipe pair against fine-tuning from scratch).
    "tiny": Preset(
        ModelConfig(patch_size=8, depth=4, embed_dim=192, num_heads=3, mlp_hidden_dim=768, decoder_depth=2,
                    decoder_embed_dim=96, decoder_num_heads=3, num_frames=8, img_size=48, pos_embed="3d",
                    normalize_target=False),
        pretrain=dict(total_steps=10000, base_lr=0.096, min_lr_base=0.00064, batch_videos_per_gpu=4,
                      frame_stride=2, log_every=10, save_every=1000, loader_threads=2),
        finetune={"synth": dict(batch_videos_per_gpu=16, base_lr=0.032, min_lr_base=1.6e-5, epochs=100,
                                total_steps=0, warmup_fraction=0.1, layer_decay=0.5, drop_path=0.0,
                                label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, rand_augment="",
                                random_erase_prob=0.0, crop_scale_min=0.5, flip=False, colour_permute_prob=1.0,
                                invert_prob=0.5, frame_stride=2, test_num_clips=2, test_num_crops=3,
                                eval_every_epochs=0, log_every=10, save_every=1000, loader_threads=2)},
        distill={"synth_distill": dict(batch_videos_per_gpu=4, base_lr=0.032, min_lr_base=3.2e-5, epochs=10,
                                       total_steps=0, warmup_fraction=0.1, layer_decay=0.75, drop_path=0.1,
                                       frame_stride=2, test_num_clips=2, test_num_crops=3, eval_every_epochs=0,
                                       log_every=10, save_every=100, loader_threads=2, temperature=1.0,
                                       alpha=0.0)}),
    # vit_s has no published fine-tuning script (its models are distilled); it takes vit_b's rows.
    "vit_s": Preset(
        ModelConfig(patch_size=16, depth=12, embed_dim=384, num_heads=6, mlp_hidden_dim=1536,
                    decoder_embed_dim=192, decoder_num_heads=3),
        pretrain=dict(_VIT_PRETRAIN), finetune=_B, distill=_B_DISTILL),
    "vit_b": Preset(
        ModelConfig(patch_size=16, depth=12, embed_dim=768, num_heads=12, mlp_hidden_dim=3072,
                    decoder_embed_dim=384, decoder_num_heads=6),
        pretrain=dict(_VIT_PRETRAIN), finetune=_B, distill=_B_DISTILL),
    "vit_l": Preset(
        ModelConfig(patch_size=16, depth=24, embed_dim=1024, num_heads=16, mlp_hidden_dim=4096,
                    decoder_embed_dim=512, decoder_num_heads=8),
        pretrain=dict(_VIT_PRETRAIN),
        finetune={"k400": _script(6, 2e-3, 35, 0.75, 0.2), "ssv2": _script(6, 5e-4, 20, 0.75, 0.2, **_SSV2)}),
    "vit_h": Preset(
        ModelConfig(patch_size=16, depth=32, embed_dim=1280, num_heads=16, mlp_hidden_dim=5120,
                    decoder_embed_dim=512, decoder_num_heads=8, grad_checkpointing=True),
        pretrain=dict(_VIT_PRETRAIN, parallel="fsdp"),
        finetune={**{name: _script(4, 1e-3, 40, 0.8, 0.2, head_dropout=0.5) for name in ("k400", "k600", "k710")},
                  "ssv2": _script(4, 5e-4, 20, 0.8, 0.2, **_SSV2)}),
    "vit_g": Preset(
        ModelConfig(patch_size=14, depth=40, embed_dim=1408, num_heads=16, mlp_hidden_dim=6144,
                    decoder_embed_dim=512, decoder_num_heads=8, grad_checkpointing=True),
        pretrain=dict(_VIT_PRETRAIN, base_lr=6e-4, clip_grad_norm=0.02, parallel="fsdp"),
        finetune={"k400": _script(3, 1e-3, 30, 0.9, 0.2, weight_decay=0.1, parallel="fsdp"),
                  "k710": _script(3, 1e-3, 35, 0.9, 0.3, weight_decay=0.1, clip_grad_norm=5.0, parallel="fsdp"),
                  **{f"k710_to_{t}": _script(3, 1e-5, 3, 0.9, 0.25, weight_decay=0.1, warmup_epochs=1,
                                             parallel="fsdp") for t in ("k400", "k600")},
                  "k710_to_ucf101": _script(3, 1e-3, 50, 0.9, 0.35, head_dropout=0.5, parallel="fsdp"),
                  "k710_to_hmdb51": _script(3, 5e-4, 15, 0.9, 0.35, head_dropout=0.5, frame_stride=2,
                                            parallel="fsdp"),
                  "ssv2": _script(3, 3e-4, 20, 0.9, 0.25, parallel="fsdp", **_SSV2)}),
}

# Fine-tuning defaults shared by every published script (spec §7): AdamW β2 0.999, min lr 1e-6,
# repeated augmentation 2, frame stride 4 (Kinetics); overridden per row above where they differ.
_FINETUNE_COMMON = dict(adam_beta2=0.999, min_lr_base=1e-6, num_sample=2, frame_stride=4, log_every=20,
                        save_every=1000)


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def model_config(preset: str, **overrides) -> ModelConfig:
    """A preset's architecture with field overrides; unknown presets and fields fail with the valid names."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown model option(s) {unknown}; valid options: {', '.join(sorted(names))}")
    return dataclasses.replace(_preset(preset).model, **overrides)


def pretrain_config(preset: str, overrides: dict | None = None) -> PretrainConfig:
    """The preset's pre-training recipe with overrides ({key: value or string}, dotted or nested keys)."""
    p = _preset(preset)
    return apply_overrides(PretrainConfig(preset=preset, model=p.model, **p.pretrain), overrides or {})


def finetune_config(preset: str, dataset: str | None = None, overrides: dict | None = None) -> FinetuneConfig:
    """The published fine-tuning recipe of a preset for a target dataset, with overrides.

    dataset None takes the preset's first recipe (k400 for the ViTs, synth for tiny).
    """
    p = _preset(preset)
    dataset = dataset or next(iter(p.finetune))
    if dataset not in p.finetune:
        raise ConfigError(f"preset {preset} has no fine-tuning recipe {dataset!r}; choose one of "
                          f"{', '.join(p.finetune)} (or the closest one and --set the differences)")
    cfg = FinetuneConfig(preset=preset, model=p.model, dataset=dataset, **{**_FINETUNE_COMMON, **p.finetune[dataset]})
    return apply_overrides(cfg, overrides or {})


def distill_config(preset: str, recipe: str | None = None, overrides: dict | None = None) -> DistillConfig:
    """A preset's distillation recipe, or one of its fine-tuning recipes with the distillation defaults.

    recipe None takes the preset's first distillation recipe (k710_distill for vit_s/vit_b, synth_distill
    for tiny), else its first fine-tuning recipe.
    """
    p = _preset(preset)
    recipes = {**p.finetune, **p.distill}
    recipe = recipe or next(iter(p.distill or p.finetune))
    if recipe not in recipes:
        raise ConfigError(f"preset {preset} has no distillation or fine-tuning recipe {recipe!r}; choose one of "
                          f"{', '.join(recipes)}")
    dataset = recipe.removesuffix("_distill")
    cfg = DistillConfig(preset=preset, model=p.model, dataset=dataset, **{**_FINETUNE_COMMON, **recipes[recipe]})
    return apply_overrides(cfg, overrides or {})


def save_config(cfg, path) -> Path:
    """The resolved config, as JSON or YAML by the suffix of `path`, written atomically."""
    from shard_tools.files import write_text_atomic

    path = Path(path)
    return write_text_atomic(path, config_text(cfg, "yaml" if path.suffix in (".yaml", ".yml") else "json"))


def load_config(cls, path):
    """A config saved by save_config (JSON or YAML); unknown keys (from a newer version) are an error."""
    raw = read_config_file(path)
    model = ModelConfig(**raw.pop("model"))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}")
    return cls(model=model, **raw)
