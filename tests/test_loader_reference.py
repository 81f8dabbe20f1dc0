"""The reference (published-recipe) loader reads the same shards and obeys the same sampling rules."""
from __future__ import annotations

import numpy as np
import torch
from test_dali_clips import HEIGHT, WIDTH, crop_box, frame_numbers, make_shards

import dali_pipes
from bench.baselines.reference_loader import ReferenceLoader
from dali_pipes.sampling import SamplingConfig, crop_size_pairs, fix_offsets, frame_indices

CFG = SamplingConfig(num_frames=8, img_size=32, stride=2, patch_size=8, num_sample=2)


def test_reference_loader_matches_the_dali_batch_contract(tmp_path):
    out = tmp_path / "ds"
    metas = make_shards(out, [30, 9, 20, 16, 25, 12], shard_size=20_000)
    ref = ReferenceLoader(out, 2, CFG, num_workers=0, seed=1)
    ours = next(iter(dali_pipes.pretrain_loader(out, 2, CFG, device="cpu")))
    allowed = np.array([(x, y, w, h) for w, h in crop_size_pairs(WIDTH, HEIGHT, 32)
                        for x, y in fix_offsets(WIDTH, HEIGHT, w, h)])
    keys = []
    assert len(ref) == 3
    for batch in ref:
        assert batch["video"].shape == ours["video"].shape and batch["video"].dtype == torch.uint8
        assert {k: v.shape for k, v in batch["masks"].items()} == {k: v.shape for k, v in ours["masks"].items()}
        for clip, key in zip(batch["video"].numpy(), batch["keys"]):
            got = frame_numbers(clip)
            start = int(got[0])
            assert 0 <= start <= max(metas[key]["num_frames"] - 16, 0)  # the clip spans T·stride = 16 frames
            assert (got == frame_indices(start, metas[key]["num_frames"], 8, 2)).all()
            assert np.abs(allowed - np.array(crop_box(clip))).max(axis=1).min() < 1.0
        keys += batch["keys"][::2]
    assert sorted(keys) == sorted(metas)
