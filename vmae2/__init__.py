"""vmae2: VideoMAE V2 model, masking, checkpoints and a lean trainer."""
from __future__ import annotations

from .config import PRESETS, ModelConfig, model_config
from .model import VideoClassifier, VideoMAEv2

__version__ = "0.1.0"


def build_pretrain_model(preset: str, **overrides) -> VideoMAEv2:
    """The dual-masking pre-training model of a preset; overrides are ModelConfig fields."""
    cfg = model_config(preset, **overrides)
    cfg.grid  # validates num_frames / img_size against the cube size early
    return VideoMAEv2(cfg)


def build_classifier(preset: str, num_classes: int, head_dropout: float = 0.0, **overrides) -> VideoClassifier:
    """The fine-tuning classifier; drop_path defaults to the preset's fine-tuning rate."""
    drop_path = overrides.pop("drop_path", None)
    cfg = model_config(preset, **overrides)
    cfg.grid
    rate = cfg.finetune_drop_path if drop_path is None else drop_path
    return VideoClassifier(cfg, num_classes, drop_path=rate, head_dropout=head_dropout)


__all__ = ["PRESETS", "ModelConfig", "model_config", "build_pretrain_model", "build_classifier",
           "VideoMAEv2", "VideoClassifier", "__version__"]
