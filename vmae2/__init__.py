"""vmae2: VideoMAE V2 model, masking, weights and a lean trainer."""
from __future__ import annotations

from .config import PRESETS, ModelConfig, model_config
from .model import VideoClassifier, VideoMAEv2

__version__ = "0.1.0"


def build_pretrain_model(preset: str, **overrides) -> VideoMAEv2:
    """The dual-masking pre-training model of a preset; overrides are ModelConfig fields."""
    return VideoMAEv2(model_config(preset, **overrides))


def build_classifier(preset: str, num_classes: int, head_dropout: float = 0.0, drop_path: float | None = None,
                     **overrides) -> VideoClassifier:
    """The fine-tuning classifier; drop_path defaults to the preset's first published fine-tuning recipe."""
    from .config import finetune_config

    rate = finetune_config(preset).drop_path if drop_path is None else drop_path
    return VideoClassifier(model_config(preset, **overrides), num_classes, drop_path=rate, head_dropout=head_dropout)


def load_weights(model, source, **kwargs):
    """Load any weights source into a model (see vmae2.weights.load_weights)."""
    from .weights import load_weights as load

    return load(model, source, **kwargs)


__all__ = ["PRESETS", "ModelConfig", "model_config", "build_pretrain_model", "build_classifier", "load_weights",
           "VideoMAEv2", "VideoClassifier", "__version__"]
