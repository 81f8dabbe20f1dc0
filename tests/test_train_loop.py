"""The pre-training loop on a tiny model and an in-test loader with the dali_pipes contract.

FakeLoader is imported by the other test_train_* files (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dali_pipes.masking import dual_masks, token_grid
from vmae2 import checkpoint, weights
from vmae2.train import NonFiniteLoss, train
from vmae2.train_config import pretrain_config

# A model small enough for a CPU test: 16x32x32 clips, 8x8 patches → an 8x4x4 token grid.
SMALL_MODEL = {"model.img_size": 32, "model.patch_size": 8, "model.depth": 2, "model.embed_dim": 48,
               "model.num_heads": 2, "model.mlp_hidden_dim": 96, "model.decoder_depth": 1,
               "model.decoder_embed_dim": 32, "model.decoder_num_heads": 2}


def small_config(out_dir, **overrides):
    sets = {**SMALL_MODEL, "out_dir": str(out_dir), "data": "", "total_steps": 8, "warmup_steps": 2,
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
    """The dali_pipes.pretrain_loader contract on made-up clips: rank-sharded, seeded, resumable."""

    def __init__(self, batch_size, *, num_sample=4, num_frames=16, img_size=32, patch_size=8, rank=0,
                 world_size=1, seed=0, num_videos=16, encoder_mask_ratio=0.9, decoder_mask_ratio=0.5,
                 nan_at_batch=None):
        self.batch_size, self.num_sample, self.num_frames, self.img_size = batch_size, num_sample, num_frames, img_size
        self.grid = token_grid(num_frames, img_size, patch_size)
        self.rank, self.world_size, self.seed, self.num_videos = rank, world_size, seed, num_videos
        self.ratios = (encoder_mask_ratio, decoder_mask_ratio)
        self.nan_at_batch, self.served = nan_at_batch, 0
        self.epoch, self.batch = 0, 0

    def __len__(self):
        return self.num_videos // self.world_size // self.batch_size

    def state_dict(self):
        return {"epoch": self.epoch, "batch": self.batch, "served": self.served}

    def load_state_dict(self, state):
        self.epoch, self.batch, self.served = state["epoch"], state["batch"], state["served"]

    def _make(self, epoch, b):
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_videos)
        mine = order[self.rank::self.world_size][b * self.batch_size:(b + 1) * self.batch_size]
        clips = [np.roll(fake_video(int(i), self.num_frames, self.img_size), k, axis=2)
                 for i in mine for k in range(self.num_sample)]
        video = torch.from_numpy(np.stack(clips))
        rng = np.random.default_rng([self.seed, epoch, self.rank, b])
        masks = {k: torch.from_numpy(v) for k, v in dual_masks(rng, len(clips), self.grid, *self.ratios).items()}
        if self.nan_at_batch is not None and self.served == self.nan_at_batch:
            video = video.float()
            video[0, 0, 0, 0, 0] = float("nan")
        return {"video": video, "masks": masks, "keys": [f"v{i:04d}" for i in mine]}

    def __iter__(self):
        while self.batch < len(self):
            b = self.batch
            self.batch += 1
            self.served += 1
            yield self._make(self.epoch, b)
        self.epoch, self.batch = self.epoch + 1, 0


def fake_loader(cfg, rank=0, world_size=1, **kw):
    m = cfg.model
    return FakeLoader(cfg.batch_videos_per_gpu, num_sample=cfg.num_sample, num_frames=m.num_frames,
                      img_size=m.img_size, patch_size=m.patch_size, rank=rank, world_size=world_size,
                      seed=cfg.seed, encoder_mask_ratio=m.encoder_mask_ratio,
                      decoder_mask_ratio=m.decoder_mask_ratio, **kw)


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir):
    return torch.load(Path(run_dir) / weights.FINAL_WEIGHTS, weights_only=True)


def test_straight_run_writes_config_metrics_checkpoints(tmp_path):
    cfg = small_config(tmp_path / "run", keep_last=1)
    summary = train(cfg, loader=fake_loader(cfg))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) and r["clips_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1 for r in rows)
    assert rows[0]["lr"] == 0.0 and rows[2]["lr"] == pytest.approx(cfg.base_lr * 2 / 256)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["img_size"] == 32 and saved["total_steps"] == 8
    # keep_last=1: only the final checkpoint is left; no temporary folders.
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [8]
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert summary["steps"] == 8 and summary["last_checkpoint"].endswith("ckpt-00000008")


def test_resume_reproduces_the_straight_run(tmp_path):
    """A run stopped after its step-4 checkpoint and started again gives the same losses and weights."""
    cfg = small_config(tmp_path / "straight")
    train(cfg, loader=fake_loader(cfg))

    cfg2 = small_config(tmp_path / "resumed")
    loader = fake_loader(cfg2)
    with pytest.raises(KeyboardInterrupt):
        # Stop inside step 6, after the step-4 checkpoint: as a kill would, mid-way between checkpoints.
        train(cfg2, loader=_Interrupting(loader, after_batches=5))
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "resumed")] == [4]
    train(cfg2, loader=fake_loader(cfg2))       # the same command again: resumes from step 4
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Interrupting:
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


def test_grad_accumulation_matches_a_larger_batch_step_count(tmp_path):
    """2 micro-steps of 2 videos: the lr scales with 4 videos per step and the run completes."""
    cfg = small_config(tmp_path / "accum", grad_accum_steps=2, total_steps=4, save_every=100)
    train(cfg, loader=fake_loader(cfg))
    rows = read_metrics(tmp_path / "accum")
    assert rows[-1]["step"] == 4 and rows[1]["lr"] == pytest.approx(cfg.base_lr * 4 / 256 / 2)


def test_nonfinite_guard_stops_and_names_step_and_checkpoint(tmp_path):
    cfg = small_config(tmp_path / "nan")
    with pytest.raises(NonFiniteLoss, match=r"step 5: loss nan.*last checkpoint: .*ckpt-00000004"):
        train(cfg, loader=fake_loader(cfg, nan_at_batch=5))


def test_nonfinite_guard_skips_up_to_the_configured_count(tmp_path):
    cfg = small_config(tmp_path / "skip", max_nonfinite_skips=1)
    summary = train(cfg, loader=fake_loader(cfg, nan_at_batch=5))
    assert summary["skipped_steps"] == 1 and summary["steps"] == 8
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "skip"))


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = small_config(tmp_path / "run", total_steps=4)
    train(cfg, loader=fake_loader(cfg))
    changed = small_config(tmp_path / "run", total_steps=4, base_lr=0.5)
    with pytest.raises(ValueError, match=r"base_lr"):
        train(changed, loader=fake_loader(changed))


def test_missing_data_is_a_clear_error(tmp_path):
    cfg = small_config(tmp_path / "run", data=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*vmae2-shard"):
        train(cfg)
