"""FLOPs by the paper's counting rule (spec §5), computed from the architecture.

One multiply-add = one FLOP; LayerNorm = 5 FLOPs per element; softmax, GELU and additions are not
counted; the cube embedding runs over all tokens; attention counts its two N×N×D products.
"""
from __future__ import annotations

from dali_pipes.masking import mask_counts

from .config import ModelConfig

LAYERNORM_FLOPS = 5


def block_flops(num_tokens: int, dim: int, mlp_hidden_dim: int) -> int:
    n = num_tokens
    qkv = n * dim * 3 * dim
    attention = 2 * n * n * dim          # Q·Kᵀ and A·V
    proj = n * dim * dim
    mlp = 2 * n * dim * mlp_hidden_dim
    norms = 2 * LAYERNORM_FLOPS * n * dim
    return qkv + attention + proj + mlp + norms


def cube_embed_flops(cfg: ModelConfig) -> int:
    return cfg.num_patches * cfg.embed_dim * 3 * cfg.tubelet_size * cfg.patch_size ** 2


def pretrain_flops(cfg: ModelConfig, decoder_mask_ratio: float | None = None) -> dict[str, int]:
    """Forward FLOPs of one pre-training clip: encoder, encoder→decoder, decoder (with head), total."""
    ratio = cfg.decoder_mask_ratio if decoder_mask_ratio is None else decoder_mask_ratio
    counts = mask_counts(cfg.grid, cfg.encoder_mask_ratio, ratio)
    n_vis, n_query = counts["visible_idx"], counts["query_idx"]
    d, dd = cfg.embed_dim, cfg.decoder_embed_dim
    encoder = (cube_embed_flops(cfg) + cfg.depth * block_flops(n_vis, d, cfg.mlp_hidden_dim)
               + LAYERNORM_FLOPS * n_vis * d)
    enc_to_dec = n_vis * d * dd
    head_out = 3 * cfg.tubelet_size * cfg.patch_size ** 2
    decoder = (cfg.decoder_depth * block_flops(n_vis + n_query, dd, cfg.decoder_mlp_hidden_dim)
               + LAYERNORM_FLOPS * n_query * dd + n_query * dd * head_out)
    return {"encoder": encoder, "enc_to_dec": enc_to_dec, "decoder": decoder,
            "total": encoder + enc_to_dec + decoder}


def classifier_flops(cfg: ModelConfig, num_classes: int = 400) -> int:
    """Forward FLOPs of one full (unmasked) view through the fine-tuning classifier."""
    n, d = cfg.num_patches, cfg.embed_dim
    return (cube_embed_flops(cfg) + cfg.depth * block_flops(n, d, cfg.mlp_hidden_dim)
            + LAYERNORM_FLOPS * d + d * num_classes)
