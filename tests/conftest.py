"""Shared test fixtures: a small model config, a loader with the dali_pipes contract on made-up clips,
and clip helpers. pytest puts tests/ on sys.path, so torchrun workers started from a test file can
`from conftest import ...` too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dali_pipes.masking import dual_masks, token_grid

# A model small enough for a CPU test: 16x32x32 clips, 8x8 patches → an 8x4x4 token grid, with the published
# 1d position table (weights saved without a config are taken for it). Every size is set here, not taken from
# the tiny preset it overrides (whose own geometry is 8x48x48 with the 3d table).
SMALL_MODEL = {"model.num_frames": 16, "model.img_size": 32, "model.patch_size": 8, "model.pos_embed": "1d",
               "model.depth": 2, "model.embed_dim": 48, "model.num_heads": 2, "model.mlp_hidden_dim": 96,
               "model.decoder_depth": 1, "model.decoder_embed_dim": 32, "model.decoder_num_heads": 2}
# The same sizes as ModelConfig keyword arguments (vmae2.build_pretrain_model / build_classifier).
SMALL_MODEL_KWARGS = {k.split(".", 1)[1]: v for k, v in SMALL_MODEL.items()}


def small_config(out_dir, **overrides):
    """A pre-training config of the small model that runs in seconds on a CPU with FakeLoader."""
    from vmae2.config import pretrain_config

    sets = {**SMALL_MODEL, "out_dir": str(out_dir), "data": "", "total_steps": 8, "warmup_fraction": 0.25,
            "batch_videos_per_gpu": 2, "num_sample": 2, "log_every": 1, "save_every": 4,
            "progress": False, "tensorboard": False, "device": "cpu", **overrides}
    return pretrain_config("tiny", sets)


def fake_video(index: int, num_frames: int, size: int) -> np.ndarray:
    """A moving diagonal grating whose speed and colour depend on the video index."""
    rng = np.random.default_rng(index)
    t = np.arange(num_frames)[:, None, None]
    y, x = np.mgrid[0:size, 0:size]
    speed, freq = rng.uniform(0.5, 2.0), rng.uniform(0.2, 0.6)
    phase = freq * (x + y) + speed * t
    colour = rng.uniform(0.2, 1.0, 3)
    frames = 127.5 * (1 + np.sin(phase))[..., None] * colour
    return frames.astype(np.uint8)


class FakeLoader:
    """The dali_pipes loader contract on made-up clips: rank-sharded, seeded, resumable.

    Batches: video uint8 (B·N, T, S, S, 3), masks (dual masks of the grid), keys, label (video index % 4).
    """

    def __init__(self, batch_size, *, num_sample=4, num_frames=16, img_size=32, patch_size=8, rank=0,
                 world_size=1, seed=0, num_videos=16, encoder_mask_ratio=0.9, decoder_mask_ratio=0.5,
                 nan_at_batch=None, num_classes=4, device="cpu"):
        self.batch_size, self.num_sample, self.num_frames, self.img_size = batch_size, num_sample, num_frames, img_size
        self.grid = token_grid(num_frames, img_size, patch_size)
        self.rank, self.world_size, self.seed, self.num_videos = rank, world_size, seed, num_videos
        self.ratios = (encoder_mask_ratio, decoder_mask_ratio)
        self.nan_at_batch, self.served, self.num_classes, self.device = nan_at_batch, 0, num_classes, device
        self.epoch, self.batch = 0, 0

    def __len__(self):
        return self.num_videos // self.world_size // self.batch_size

    def state_dict(self):
        return {"epoch": self.epoch, "batch": self.batch, "served": self.served}

    def load_state_dict(self, state):
        self.epoch, self.batch, self.served = state["epoch"], state["batch"], state["served"]

    def make_batch(self, epoch, b):
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_videos)
        mine = order[self.rank::self.world_size][b * self.batch_size:(b + 1) * self.batch_size]
        clips = [np.roll(fake_video(int(i), self.num_frames, self.img_size), k, axis=2)
                 for i in mine for k in range(self.num_sample)]
        video = torch.from_numpy(np.stack(clips))
        rng = np.random.default_rng([self.seed, epoch, self.rank, b])
        masks = {k: torch.from_numpy(v) for k, v in dual_masks(rng, len(clips), self.grid, *self.ratios).items()}
        if self.nan_at_batch is not None and self.served == self.nan_at_batch:
            video = video.float()
            video[0] = float("nan")                                  # a whole clip: the loss is NaN too
        label = torch.tensor([int(i) % self.num_classes for i in mine]).repeat_interleave(self.num_sample)
        keys = [f"v{i:04d}" for i in mine for _ in range(self.num_sample)]
        return {"video": video.to(self.device), "masks": {k: v.to(self.device) for k, v in masks.items()},
                "keys": keys, "label": label.to(self.device)}

    def __iter__(self):
        while self.batch < len(self):
            b = self.batch
            self.batch += 1
            self.served += 1
            yield self.make_batch(self.epoch, b)
        self.epoch, self.batch = self.epoch + 1, 0


def fake_loader(cfg, rank=0, world_size=1, **kw):
    """A FakeLoader sized for a training config."""
    m = cfg.model
    return FakeLoader(cfg.batch_videos_per_gpu, num_sample=cfg.num_sample, num_frames=m.num_frames,
                      img_size=m.img_size, patch_size=m.patch_size, rank=rank, world_size=world_size,
                      seed=cfg.seed, encoder_mask_ratio=m.encoder_mask_ratio,
                      decoder_mask_ratio=m.decoder_mask_ratio, **kw)


class Interrupting:
    """A loader that raises KeyboardInterrupt when asked for batch number `after_batches`."""

    def __init__(self, loader, after_batches):
        self.loader, self.after = loader, after_batches

    def __len__(self):
        return len(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)

    def __iter__(self):
        for batch in self.loader:
            if self.loader.served > self.after:
                raise KeyboardInterrupt
            yield batch


def take(loader, n: int) -> list[dict]:
    """The next n batches of a loader, across epoch boundaries."""
    got = []
    while len(got) < n:
        for batch in loader:
            got.append(batch)
            if len(got) == n:
                break
    return got


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
