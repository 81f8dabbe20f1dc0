"""The batch contract: a dali_pipes batch goes straight into vmae2's pre-training forward."""
from __future__ import annotations

import torch
from test_dali_clips import make_shards

import dali_pipes
from dali_pipes.masking import mask_counts, token_grid
from dali_pipes.sampling import SamplingConfig
from vmae2.config import model_config
from vmae2.model import VideoMAEv2


def test_loader_batch_feeds_the_tiny_model(tmp_path):
    out = tmp_path / "ds"
    make_shards(out, [20, 24], shard_size=10 ** 9)
    cfg = model_config("tiny")  # 8 frames × 48², patch 8 → grid (4, 6, 6)
    assert cfg.grid == (4, 6, 6)
    sampling = SamplingConfig(num_frames=8, img_size=48, stride=1, patch_size=cfg.patch_size, num_sample=2)
    loader = dali_pipes.pretrain_loader(out, 2, sampling, device="cpu", num_threads=2)
    batch = next(iter(loader))
    counts = mask_counts(token_grid(8, 48, cfg.patch_size))
    assert batch["video"].shape == (4, 8, 48, 48, 3)
    assert {k: v.shape[1] for k, v in batch["masks"].items()} == counts
    torch.manual_seed(0)
    model = VideoMAEv2(cfg)
    loss, pred = model(batch["video"], batch["masks"])
    assert torch.isfinite(loss) and pred.shape[:2] == (4, counts["query_idx"])
    loss.backward()
