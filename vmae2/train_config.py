"""Training configuration: typed dataclasses, the spec §7 recipe per model size, `--set` overrides.

A run is a preset (one per model size) plus `key=value` overrides. Keys are the dataclass fields;
`model.<field>` reaches the ModelConfig. Values are parsed against the field's type, an unknown key
is an error that names the closest valid key, and the resolved config is saved as JSON in the run
folder (never a pickle).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .config import PRESETS, ModelConfig


@dataclass
class PretrainConfig:
    preset: str = "tiny"                 # model preset (vmae2.config.PRESETS)
    model: ModelConfig = field(default_factory=lambda: PRESETS["tiny"])  # architecture and mask ratios
    data: str = ""                       # shard folder or its manifest.json (vmae2-shard output)
    out_dir: str = ""                    # run folder: config, metrics, checkpoints, events
    # schedule (spec §7: warmup from 0, then per-iteration half-cosine to min lr)
    total_steps: int = 300               # optimizer steps of the whole run
    warmup_steps: int = 30               # linear warmup from lr 0
    base_lr: float = 1e-3                # peak lr per 256 videos per step (B/L/H 1e-3, g 6e-4)
    min_lr_base: float = 1e-5            # final lr per 256 videos per step
    weight_decay: float = 0.05           # AdamW decay; none on biases, norms, q/v biases, mask_token
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad_norm: float = 0.0          # max global grad norm; 0 = no clipping (spec: 0.02 for g only)
    # batch
    batch_videos_per_gpu: int = 32       # decoded videos per process per micro-step (spec: 32)
    num_sample: int = 4                  # repeated augmentation: crops + masks per decoded video
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
    tensorboard: bool = True             # also write TensorBoard events (when tensorboard is installed)
    progress: bool = True                # tqdm progress bar on rank 0
    log_keys: bool = False               # write each rank's sample keys to keys-rank{r}.jsonl (audits)

    @property
    def videos_per_step(self) -> int:
        """Decoded videos per optimizer step on one process (times world size for the global count)."""
        return self.batch_videos_per_gpu * self.grad_accum_steps


# Steps for the ViT presets: ≈ 800 repeat-counted epochs (spec §7) of K400's 240k videos at 2048
# videos per step (32 per GPU × 64 GPUs), 5% warmup as in VideoMAE's 40 of 800 epochs. Set
# --steps / warmup_steps for your data and batch.
_VIT = dict(total_steps=23_440, warmup_steps=1_170, batch_videos_per_gpu=32, log_every=20, save_every=1000)

PRETRAIN_PRESETS: dict[str, dict] = {
    # tiny: the CPU demo: 112² clips, 2 videos × 4 crops per step, frame stride 2; peak lr 1.5e-3
    # and min lr 1e-5 at 2 videos per step (a small model on little data wants a higher lr).
    "tiny": dict(total_steps=300, warmup_steps=30, base_lr=0.192, min_lr_base=0.00128,
                 batch_videos_per_gpu=2, frame_stride=2, log_every=10, save_every=100,
                 loader_threads=2),
    "vit_s": dict(_VIT),
    "vit_b": dict(_VIT),
    "vit_l": dict(_VIT),
    "vit_h": dict(_VIT, parallel="fsdp"),            # activation checkpointing via the model preset
    "vit_g": dict(_VIT, base_lr=6e-4, clip_grad_norm=0.02, parallel="fsdp"),
}


@dataclass
class FinetuneConfig:
    preset: str = "tiny"                 # model preset (vmae2.config.PRESETS)
    model: ModelConfig = field(default_factory=lambda: PRESETS["tiny"])  # architecture (masks unused)
    data: str = ""                       # labeled shard folder or manifest.json
    val_data: str = ""                   # labeled validation shards (top-1 is measured on these)
    init: str = ""                       # pre-training checkpoint (run dir, ckpt dir or .pt); "" = scratch
    out_dir: str = ""                    # run folder
    total_steps: int = 200               # optimizer steps
    warmup_steps: int = 20               # linear warmup from lr 0
    base_lr: float = 1e-3                # peak lr per 256 clips per step
    min_lr_base: float = 1e-6            # final lr per 256 clips per step
    weight_decay: float = 0.05           # AdamW decay; none on biases and norms
    layer_decay: float = 0.75            # lr scale decay^(depth + 1 − i) for layer i (spec §7)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    batch_clips: int = 8                 # clips per optimizer step
    drop_path: float = 0.1               # stochastic depth rate at the last block
    head_dropout: float = 0.0            # dropout before the linear head
    label_smoothing: float = 0.1         # cross-entropy label smoothing
    frame_stride: int = 2                # temporal stride in source frames
    num_eval_clips: int = 2              # clips per validation video (spread over its length)
    device: str = "auto"                 # auto | cuda | cpu
    precision: str = "auto"              # auto | bf16 | fp32
    seed: int = 0
    log_every: int = 10                  # steps between metrics rows
    progress: bool = True                # tqdm progress bar


FINETUNE_PRESETS: dict[str, dict] = {
    # tiny: peak lr 1e-3 at 8 clips per step (the CPU report, bench/table1.py)
    "tiny": dict(base_lr=0.032, min_lr_base=3.2e-5),
    "vit_s": dict(layer_decay=0.75, batch_clips=64, total_steps=20_000, warmup_steps=1_000),
    "vit_b": dict(layer_decay=0.75, batch_clips=64, total_steps=20_000, warmup_steps=1_000),
    "vit_l": dict(layer_decay=0.75, batch_clips=64, total_steps=20_000, warmup_steps=1_000, drop_path=0.2),
    "vit_h": dict(layer_decay=0.8, batch_clips=64, total_steps=20_000, warmup_steps=1_000, drop_path=0.2),
    "vit_g": dict(layer_decay=0.9, batch_clips=64, total_steps=20_000, warmup_steps=1_000, drop_path=0.25),
}


class ConfigError(ValueError):
    """A preset, key or value that does not fit the config."""


def valid_keys(cls) -> list[str]:
    """Every settable key of a config class: its fields and `model.<ModelConfig field>`."""
    keys = [f.name for f in dataclasses.fields(cls) if f.name != "model"]
    return keys + [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)]


def _field_type(cls, name: str):
    hints = typing.get_type_hints(cls)
    return hints[name]


def parse_value(key: str, text: str, typ):
    """`text` as a value of `typ` (bool, int, float, str); errors name the key and the expected type."""
    if typ is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true/false)")
    if typ is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an integer") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number") from None
    if typ is str:
        return text
    raise ConfigError(f"{key}: fields of type {typ} cannot be set from the command line")


def _closest(key: str, keys: list[str]) -> str:
    # Same words in another order (lr_base for base_lr) first, then the closest spelling.
    words = sorted(key.replace(".", "_").split("_"))
    match = [k for k in keys if sorted(k.replace(".", "_").split("_")) == words]
    match = match or difflib.get_close_matches(key, keys, n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def apply_overrides(cfg, overrides: dict[str, typing.Any]):
    """A copy of `cfg` with `overrides` ({key: value or string}) applied and type-checked."""
    cls = type(cfg)
    keys = valid_keys(cls)
    flat, model_over = {}, {}
    for key, value in overrides.items():
        if key not in keys:
            raise ConfigError(f"unknown config key {key!r}{_closest(key, keys)}")
        if key.startswith("model."):
            name = key[len("model."):]
            model_over[name] = _coerce(key, value, _field_type(ModelConfig, name))
        else:
            flat[key] = _coerce(key, value, _field_type(cls, key))
    model = dataclasses.replace(cfg.model, **model_over) if model_over else cfg.model
    return dataclasses.replace(cfg, model=model, **flat)


def _coerce(key: str, value, typ):
    if isinstance(value, str) and typ is not str:
        return parse_value(key, value, typ)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r}: expected {typ.__name__}, got {type(value).__name__}")
    return value


def parse_set_args(items: typing.Iterable[str]) -> dict[str, str]:
    """['key=value', ...] from the command line -> {key: 'value'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def make_config(cls, presets: dict[str, dict], preset: str, overrides: dict | None = None):
    """The preset's config with overrides; model fields start from vmae2.config.PRESETS[preset]."""
    if preset not in PRESETS or preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    cfg = cls(preset=preset, model=PRESETS[preset], **presets[preset])
    cfg = apply_overrides(cfg, overrides or {})
    check(cfg)
    return cfg


def pretrain_config(preset: str, overrides: dict | None = None) -> PretrainConfig:
    return make_config(PretrainConfig, PRETRAIN_PRESETS, preset, overrides)


def finetune_config(preset: str, overrides: dict | None = None) -> FinetuneConfig:
    return make_config(FinetuneConfig, FINETUNE_PRESETS, preset, overrides)


_CHOICES = {"device": ("auto", "cuda", "cpu"), "precision": ("auto", "bf16", "fp32"),
            "optimizer": ("adamw", "apex_fused_adam"), "parallel": ("ddp", "fsdp")}


def check(cfg) -> None:
    """Value checks that types cannot express; errors name the key and the allowed values."""
    for key, allowed in _CHOICES.items():
        if hasattr(cfg, key) and getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: choose one of {', '.join(allowed)}")
    positive = [k for k in ("total_steps", "batch_videos_per_gpu", "num_sample", "grad_accum_steps",
                            "log_every", "save_every", "keep_last", "batch_clips", "frame_stride",
                            "num_eval_clips", "loader_threads") if hasattr(cfg, k)]
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: must be at least 1")
    if not 0 <= cfg.warmup_steps < cfg.total_steps:
        raise ConfigError(f"warmup_steps={cfg.warmup_steps}: must lie in [0, total_steps={cfg.total_steps})")
    if cfg.min_lr_base > cfg.base_lr:
        raise ConfigError(f"min_lr_base={cfg.min_lr_base} exceeds base_lr={cfg.base_lr}")
    try:
        cfg.model.grid
        if isinstance(cfg, PretrainConfig):
            from dali_pipes.masking import mask_counts
            mask_counts(cfg.model.grid, cfg.model.encoder_mask_ratio, cfg.model.decoder_mask_ratio)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def to_json(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path) -> None:
    """The resolved config as JSON (temp name + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_json(cfg), indent=2) + "\n")
    tmp.replace(path)


def load_config(cls, path):
    """A config saved by save_config; unknown keys (from a newer version) are an error."""
    raw = json.loads(Path(path).read_text())
    model = ModelConfig(**raw.pop("model"))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}")
    return cls(model=model, **raw)
