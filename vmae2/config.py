"""Model presets: the spec's table (§2) as a plain dict of dataclasses."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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
    decoder_mlp_ratio: float = 4.0   # decoder MLP hidden = ratio × Dd
    tubelet_size: int = 2            # frames per cube
    num_frames: int = 16             # frames per clip
    img_size: int = 224              # square crop side in pixels
    encoder_mask_ratio: float = 0.9  # tube masking: share of spatial positions removed
    decoder_mask_ratio: float = 0.5  # running-cell masking: share of tokens not decoded (0 = V1)
    drop_path: float = 0.0           # stochastic depth at the last block (linear from 0)
    finetune_drop_path: float = 0.1  # the preset's fine-tuning drop path rate
    grad_checkpointing: bool = False # activation checkpointing per block (H and g)

    @property
    def grid(self) -> tuple[int, int, int]:
        from dali_pipes.masking import token_grid

        return token_grid(self.num_frames, self.img_size, self.patch_size, self.tubelet_size)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w


PRESETS: dict[str, ModelConfig] = {
    # tiny: for CPU demos and tests; 16x112x112 clips give an even 8x8x8 token grid with patch 14.
    "tiny": ModelConfig(patch_size=14, depth=4, embed_dim=192, num_heads=3, mlp_hidden_dim=768,
                        decoder_depth=2, decoder_embed_dim=96, decoder_num_heads=3,
                        img_size=112, finetune_drop_path=0.1),
    "vit_s": ModelConfig(patch_size=16, depth=12, embed_dim=384, num_heads=6, mlp_hidden_dim=1536,
                         decoder_embed_dim=192, decoder_num_heads=3, finetune_drop_path=0.1),
    "vit_b": ModelConfig(patch_size=16, depth=12, embed_dim=768, num_heads=12, mlp_hidden_dim=3072,
                         decoder_embed_dim=384, decoder_num_heads=6, finetune_drop_path=0.1),
    "vit_l": ModelConfig(patch_size=16, depth=24, embed_dim=1024, num_heads=16, mlp_hidden_dim=4096,
                         decoder_embed_dim=512, decoder_num_heads=8, finetune_drop_path=0.2),
    "vit_h": ModelConfig(patch_size=16, depth=32, embed_dim=1280, num_heads=16, mlp_hidden_dim=5120,
                         decoder_embed_dim=512, decoder_num_heads=8, finetune_drop_path=0.2,
                         grad_checkpointing=True),
    "vit_g": ModelConfig(patch_size=14, depth=40, embed_dim=1408, num_heads=16, mlp_hidden_dim=6144,
                         decoder_embed_dim=512, decoder_num_heads=8, finetune_drop_path=0.25,
                         grad_checkpointing=True),
}


def model_config(preset: str, **overrides) -> ModelConfig:
    """A preset with field overrides; unknown presets and fields fail with the valid names."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid options: {', '.join(sorted(names))}")
    return dataclasses.replace(PRESETS[preset], **overrides)
