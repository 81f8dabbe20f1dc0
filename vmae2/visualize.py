"""Reconstructions of a pre-trained model: original, masked input and reconstruction as one PNG.

The decoder predicts per-token, per-channel normalised pixels (spec §4); each predicted token is
de-normalised with the mean and standard deviation of the original token's pixels, as the MAE
papers show their reconstructions (a model trained on pixels, normalize_target False, is drawn as it
predicts). Tokens the encoder saw are shown as they are. `visualize` asks the decoder for every token the
encoder did not see (training decodes only the running-cell share of them), so the reconstruction is
whole; with `decode_all=False` it draws the training masks, and the tokens left out stay grey.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import weights
from .config import ModelConfig
from .model import VideoMAEv2, normalize_video, token_stats

GREY = 0.5


def unpatchify(tokens: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """(B, N, 2·p·p, 3) -> (B, 3, T, H, W): the inverse of VideoMAEv2.patchify."""
    (tp, hp, wp), p, tub = cfg.grid, cfg.patch_size, cfg.tubelet_size
    B = tokens.shape[0]
    x = tokens.reshape(B, tp, hp, wp, tub, p, p, 3)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)                       # (B, 3, Tp, tub, Hp, p, Wp, p)
    return x.reshape(B, 3, tp * tub, hp * p, wp * p)


@torch.no_grad()
def reconstruct(model: VideoMAEv2, video: torch.Tensor, masks: dict) -> dict[str, np.ndarray]:
    """Original, masked input and reconstruction, each (B, T, H, W, 3) float in [0, 1]."""
    model.eval()
    _, pred = model(video, masks)                                 # (B, N_query, 2pp·3)
    pixels, _ = normalize_video(video)
    patches = model.patchify(pixels)                              # (B, N, 2pp, 3)
    B, N, P, C = patches.shape
    visible, query = masks["visible_idx"], masks["query_idx"]
    pred = pred.float().reshape(B, -1, P, C)                      # (B, N_query, 2pp, 3)
    if model.cfg.normalize_target:
        target = torch.gather(patches, 1, query[:, :, None, None].expand(-1, -1, P, C))
        mean, std = token_stats(target, model.cfg.target_eps)
        pred = pred * std + mean                                  # de-normalised

    is_visible = torch.zeros(B, N, dtype=torch.bool, device=patches.device).scatter_(1, visible, True)[:, :, None, None]
    masked = torch.where(is_visible, patches, torch.full_like(patches, GREY))
    recon = masked.clone()
    recon.scatter_(1, query[:, :, None, None].expand(-1, -1, P, C), pred.clamp(0, 1))
    recon = torch.where(is_visible, patches, recon)               # what the encoder saw stays exact
    cfg = model.cfg
    as_frames = lambda t: unpatchify(t, cfg).permute(0, 2, 3, 4, 1).cpu().numpy()  # noqa: E731
    return {"original": as_frames(patches), "masked": as_frames(masked), "reconstruction": as_frames(recon)}


def render_png(images: dict[str, np.ndarray], out, num_frames: int = 4, scale: int | None = None) -> Path:
    """Rows per clip: original / masked / reconstruction; columns: `num_frames` evenly spaced frames (every
    frame of a shorter clip, none twice). Frames are enlarged `scale` times (by default to at least 192 pixels
    high, at least 2x)."""
    from PIL import Image, ImageDraw

    rows = ("original", "masked", "reconstruction")
    B, T, H, W, _ = images["original"].shape
    scale = scale or max(2, -(-192 // H))
    frames = np.linspace(0, T - 1, min(num_frames, T)).round().astype(int)
    num_frames = len(frames)
    label_w, gap = 100, 4
    h, w = H * scale, W * scale
    canvas = Image.new("RGB", (label_w + num_frames * (w + gap), B * len(rows) * (h + gap) + gap * B), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for b in range(B):
        for name in rows:
            draw.text((4, y + h // 2 - 6), name if name != "reconstruction" else "recon", fill="black")
            for j, t in enumerate(frames):
                tile = (np.clip(images[name][b, t], 0, 1) * 255).astype(np.uint8)
                canvas.paste(Image.fromarray(tile).resize((w, h), Image.NEAREST), (label_w + j * (w + gap), y))
            y += h + gap
        y += gap
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def visualize(ckpt, data, out, num_clips: int = 2, num_frames: int = 4, seed: int = 0, device: str = "cpu",
              decode_all: bool = True) -> Path:
    """`vmae2-train visualize`: a few clips of `data` through the model of `ckpt`, saved as a PNG; the decoder
    reconstructs every token the encoder did not see (`decode_all`), else only those the training masks query."""
    state, config = weights.read_weights(ckpt)
    if config is None:
        raise ValueError(f"{ckpt}: a bare weights file has no config.json beside it; pass the run folder "
                         f"or a checkpoint folder of `vmae2-train pretrain`")
    cfg = ModelConfig(**config["model"])
    model = VideoMAEv2(cfg)
    from .weights import load_pretrain

    load_pretrain(model, state, name=str(ckpt))
    from dali_pipes import pretrain_loader
    from dali_pipes.sampling import SamplingConfig

    sampling = SamplingConfig(num_frames=cfg.num_frames, stride=config.get("frame_stride", 4), img_size=cfg.img_size,
                              num_sample=1, patch_size=cfg.patch_size, encoder_mask_ratio=cfg.encoder_mask_ratio,
                              decoder_mask_ratio=0.0 if decode_all else cfg.decoder_mask_ratio)
    loader = pretrain_loader(data, num_clips, sampling, device=device, seed=seed, shuffle=False, num_threads=2)
    batch = next(iter(loader))
    loader.close()
    model.to(device)
    images = reconstruct(model, batch["video"], batch["masks"])
    images = {k: v[:num_clips] for k, v in images.items()}
    return render_png(images, out, num_frames=num_frames)
