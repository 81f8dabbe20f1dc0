"""VideoMAE V2: the dual-masking pre-training model and the fine-tuning classifier.

Parameter names follow the published checkpoints (spec §6), so their state dicts load strictly.
Inputs are uint8 clips (B, T, H, W, 3) straight from the loader; the model normalises them. Masks are
fixed-size index tensors (see dali_pipes.masking): no boolean indexing, no host synchronisation, so the
whole model compiles with fullgraph=True.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_INIT_SCALE = 0.001  # the published fine-tuning script's --init_scale: the classifier head starts near 0


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed 1-D sin/cos table (1, N, D): angle = pos / 10000^(2⌊j/2⌋/D), sin even j, cos odd j."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)


def factorised_sinusoid_table(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """A 3-D sin/cos table (1, T·H·W, D): the concatenation of 1-D tables over time, rows and columns.

    Not the published model's (it uses sinusoid_table over the flattened token index); `model.pos_embed=3d`
    chooses it. A token's row and column parts do not depend on its time step, so a fixed spatial pattern is
    one function of (row, column) shared by every time step. Widths: rows and columns 2·⌊D/6⌋ each, time the rest.
    """
    t, h, w = grid
    d_space = 2 * (dim // 6)
    parts = (sinusoid_table(t, dim - 2 * d_space)[0][:, None, None, :].expand(t, h, w, -1),
             sinusoid_table(h, d_space)[0][None, :, None, :].expand(t, h, w, -1),
             sinusoid_table(w, d_space)[0][None, None, :, :].expand(t, h, w, -1))
    return torch.cat(parts, dim=-1).reshape(1, t * h * w, dim)


def position_table(cfg: ModelConfig, dim: int) -> torch.Tensor:
    """The fixed position table of width `dim` for cfg's token grid: cfg.pos_embed "1d" (published) or "3d"."""
    if cfg.pos_embed == "3d":
        return factorised_sinusoid_table(cfg.grid, dim)
    return sinusoid_table(cfg.num_patches, dim)


def trunc_normal_one_std_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Normal(0, std) truncated at ±std, by inverse CDF in one pass: the published pre-training model's
    mask_token init (its trunc_normal_ wrapper passes a=-std, b=std). The classifier is initialised differently.

    torch's trunc_normal_ resamples until all values fall inside, which at ±1 std takes many rounds.
    """
    edge = math.erf(-1 / math.sqrt(2))                            # 2·Φ(-1) - 1
    with torch.no_grad():
        return tensor.uniform_(edge, -edge).erfinv_().mul_(std * math.sqrt(2)).clamp_(-std, std)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C) at idx (B, M) -> (B, M, C), a fixed-shape gather."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def normalize_video(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, T, H, W, 3) -> pixels in [0, 1] and ImageNet-normalised input, both (B, 3, T, H, W).

    Float input (mixed clips, in [0, 255]) is left as it was: distillation feeds one tensor to two models.
    """
    pixels = video.permute(0, 4, 1, 2, 3).to(torch.float32, copy=True).div_(255.0)
    mean = pixels.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = pixels.new_tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return pixels, (pixels - mean) / std


def token_stats(tokens: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token, per-channel mean and (unbiased std + eps) of (B, N, 2·p·p, 3) pixels (spec §4; eps is
    model.target_eps, published 1e-6)."""
    mean = tokens.mean(dim=-2, keepdim=True)
    std = tokens.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return mean, std + eps


class CubeEmbed(nn.Module):
    """Cube (tubelet) embedding: a Conv3d with kernel = stride = (2, p, p)."""

    def __init__(self, patch_size: int, tubelet_size: int, embed_dim: int):
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), tokens time-major


class Attention(nn.Module):
    """Multi-head self-attention with learnable q and v biases; the k bias is fixed at zero."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # scale = head_dim^-0.5
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden_features=mlp_hidden_dim, act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def make_blocks(dim: int, depth: int, num_heads: int, mlp_hidden_dim: int, drop_path: float) -> nn.ModuleList:
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # linear in depth from 0
    return nn.ModuleList(Block(dim, num_heads, mlp_hidden_dim, r) for r in rates)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    for blk in blocks:
        if grad_checkpointing and x.requires_grad:
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x


def xavier_init_linears(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """ViT encoder that runs only on the visible (tube-masked) tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.grad_checkpointing = cfg.grad_checkpointing
        self.patch_embed = CubeEmbed(cfg.patch_size, cfg.tubelet_size, cfg.embed_dim)
        self.blocks = make_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden_dim, cfg.drop_path)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.register_buffer("pos_embed", position_table(cfg, cfg.embed_dim), persistent=False)
        xavier_init_linears(self)

    def forward(self, x: torch.Tensor, visible_idx: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed                     # (B, N, D)
        x = gather_tokens(x, visible_idx)                            # (B, N_vis, D)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.norm(x)


class Decoder(nn.Module):
    """Lightweight decoder; its norm and head run only on the trailing query tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.decoder_embed_dim
        self.grad_checkpointing = cfg.grad_checkpointing
        self.blocks = make_blocks(dim, cfg.decoder_depth, cfg.decoder_num_heads, cfg.decoder_mlp_hidden_dim, 0.0)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 3 * cfg.tubelet_size * cfg.patch_size ** 2)
        self.register_buffer("pos_embed", position_table(cfg, dim), persistent=False)
        xavier_init_linears(self)

    def forward(self, x: torch.Tensor, num_query: int) -> torch.Tensor:
        x = run_blocks(self.blocks, x, self.grad_checkpointing)      # (B, N_vis + N_query, Dd)
        return self.head(self.norm(x[:, -num_query:]))               # (B, N_query, 2·p·p·3)


class VideoMAEv2(nn.Module):
    """The dual-masking pre-training model: forward(video, masks) -> (loss, pred)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        # Linear without bias and with PyTorch's default init, as in the published model.
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        trunc_normal_one_std_(self.mask_token, std=0.02)
        self.decoder = Decoder(cfg)

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, N, 2·p·p, 3): per token its pixels in (t, i, j) order, channel last."""
        B, C, T, H, W = pixels.shape
        p, tub = self.cfg.patch_size, self.cfg.tubelet_size
        x = pixels.reshape(B, C, T // tub, tub, H // p, p, W // p, p)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)                        # (B, Tp, Hp, Wp, tub, p, p, C)
        return x.reshape(B, (T // tub) * (H // p) * (W // p), tub * p * p, C)

    def forward_encoder(self, x: torch.Tensor, visible_idx: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, visible_idx)                          # (B, N_vis, D)

    def forward_decoder(self, latent: torch.Tensor, visible_idx: torch.Tensor,
                        query_idx: torch.Tensor) -> torch.Tensor:
        x_vis = self.encoder_to_decoder(latent)                      # (B, N_vis, Dd)
        pos = self.decoder.pos_embed.expand(x_vis.shape[0], -1, -1).to(x_vis.dtype)
        x_vis = x_vis + gather_tokens(pos, visible_idx)
        queries = self.mask_token.to(x_vis.dtype) + gather_tokens(pos, query_idx)  # (B, N_query, Dd)
        return self.decoder(torch.cat([x_vis, queries], dim=1), query_idx.shape[1])

    def forward_loss(self, pixels: torch.Tensor, pred: torch.Tensor, query_idx: torch.Tensor,
                     loss_idx: torch.Tensor) -> torch.Tensor:
        """Mean squared error against per-token, per-channel normalised pixels, on loss tokens only.

        With cfg.normalize_target False (the published code's --normlize_target False) the target is the
        pixels themselves, in [0, 1].
        """
        patches = self.patchify(pixels)                              # (B, N, 2pp, 3)
        token_idx = torch.gather(query_idx, 1, loss_idx)             # (B, N_loss)
        B, _, P, C = patches.shape
        target = torch.gather(patches, 1, token_idx[:, :, None, None].expand(-1, -1, P, C))
        if self.cfg.normalize_target:
            mean, std = token_stats(target, self.cfg.target_eps)
            target = (target - mean) / std
        target = target.flatten(2)                                   # (B, N_loss, 2pp·3), channel fastest
        pred = gather_tokens(pred, loss_idx).float()                 # (B, N_loss, 2pp·3)
        return (pred - target).pow(2).mean(dim=-1).mean()

    def forward(self, video: torch.Tensor, masks: dict) -> tuple[torch.Tensor, torch.Tensor]:
        visible_idx, query_idx, loss_idx = (torch.as_tensor(masks[k], device=video.device)
                                            for k in ("visible_idx", "query_idx", "loss_idx"))
        pixels, x = normalize_video(video)
        latent = self.forward_encoder(x, visible_idx)
        pred = self.forward_decoder(latent, visible_idx, query_idx)
        return self.forward_loss(pixels, pred, query_idx, loss_idx), pred


class VideoClassifier(nn.Module):
    """Fine-tuning model: encoder on all tokens, mean pooling, fc_norm, dropout, linear head."""

    def __init__(self, cfg: ModelConfig, num_classes: int, drop_path: float, head_dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = cfg.grad_checkpointing
        self.patch_embed = CubeEmbed(cfg.patch_size, cfg.tubelet_size, cfg.embed_dim)
        self.blocks = make_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden_dim, drop_path)
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(cfg.embed_dim, num_classes)
        self.register_buffer("pos_embed", position_table(cfg, cfg.embed_dim), persistent=False)
        # The published fine-tuning model's _init_weights: every Linear N(0, 0.02) through timm's trunc_normal_
        # with its default absolute bounds ±2 (100 std: in effect untruncated), biases 0; then the head
        # scaled by init_scale 0.001. The cube embedding's Conv3d keeps PyTorch's default there too.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.head.weight.mul_(HEAD_INIT_SCALE)
            self.head.bias.mul_(HEAD_INIT_SCALE)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        _, x = normalize_video(video)
        x = self.patch_embed(x) + self.pos_embed                     # (B, N, D)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.fc_norm(x.mean(dim=1))                           # (B, D)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.forward_features(video)))  # (B, num_classes)


def layer_id(name: str, depth: int) -> int:
    """Layer index for layer-wise lr decay: embedding 0, block k at k + 1, the rest at depth + 1."""
    if name.startswith(("patch_embed", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1
