"""The batch-vectorised sampler (dali_pipes.sampling, dali_pipes.masking) against the published rules.

The scalar functions state each rule one draw at a time; the batch draws must give the same values
(masks: the same generator state gives identical indices) or the same distribution (clip starts,
crops), with every sample of a batch drawn independently.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dali_pipes.masking import MASK_KEYS, dual_masks, from_boolean, mask_counts, running_cell_mask, tube_mask
from dali_pipes.pretrain import PretrainRecipe
from dali_pipes.sampling import (
    SamplingConfig,
    clip_start,
    clip_starts,
    crop_size_pairs,
    draw_pretrain_batch,
    fix_offsets,
    multiscale_crop,
    multiscale_crops,
)

GRID_B = (8, 14, 14)  # ViT-B: 16×224², patch 16


def _reference_masks(seed, batch_size, grid, encoder_ratio, decoder_ratio):
    """The boolean-mask route of the published code: tube mask, running-cell mask, then indices."""
    rng = np.random.default_rng(seed)
    encoder_mask = tube_mask(rng, batch_size, grid, encoder_ratio)
    if decoder_ratio == 0:
        return from_boolean(encoder_mask, None)
    phases = rng.integers(0, 4, size=batch_size)
    return from_boolean(encoder_mask, running_cell_mask(phases, grid, decoder_ratio))


@pytest.mark.parametrize("grid", [GRID_B, (8, 16, 16), (4, 4, 4), (16, 4, 6)])
@pytest.mark.parametrize("ratios", [(0.9, 0.5), (0.9, 0.25), (0.75, 0.75), (0.9, 0.0), (0.0, 0.5)])
@pytest.mark.parametrize("batch_size", [1, 13, 300])  # 300 rows cross the row chunks
def test_vectorised_masks_equal_the_boolean_route(grid, ratios, batch_size):
    fast = dual_masks(np.random.default_rng(5), batch_size, grid, *ratios)
    slow = _reference_masks(5, batch_size, grid, *ratios)
    counts = mask_counts(grid, *ratios)
    for key in MASK_KEYS:
        assert fast[key].shape == (batch_size, counts[key]) and fast[key].dtype == np.int64
        assert fast[key].flags.c_contiguous
        np.testing.assert_array_equal(fast[key], slow[key])


def test_masks_written_into_given_arrays():
    counts = mask_counts(GRID_B)
    out = {k: np.full((64, c), -7, np.int64) for k, c in counts.items()}
    got = dual_masks(np.random.default_rng(9), 64, GRID_B, out=out)
    fresh = dual_masks(np.random.default_rng(9), 64, GRID_B)
    for key in MASK_KEYS:
        assert got[key] is out[key]
        np.testing.assert_array_equal(out[key], fresh[key])


def test_each_clip_is_a_tube_and_a_running_cell_with_the_spec_counts():
    masks = dual_masks(np.random.default_rng(1), 512, GRID_B, 0.9, 0.5)
    t, h, w = GRID_B
    assert mask_counts(GRID_B) == {"visible_idx": 160, "query_idx": 784, "loss_idx": 704}
    patterns = ~running_cell_mask(np.arange(4), GRID_B, 0.5)
    phases = []
    for vis, query, loss in zip(*(masks[k] for k in MASK_KEYS)):
        visible = np.zeros(t * h * w, bool)
        visible[vis] = True
        slices = visible.reshape(t, h * w)
        assert (slices == slices[0]).all() and slices[0].sum() == 20              # a tube of 20 kept positions
        queried = np.zeros(t * h * w, bool)
        queried[query] = True
        phase = [p for p in range(4) if (patterns[p] == queried).all()]
        assert len(phase) == 1                                                    # one running-cell phase
        phases.append(phase[0])
        np.testing.assert_array_equal(loss, np.flatnonzero(~visible[query]))      # queried and removed
    counts = np.bincount(phases, minlength=4)
    assert counts.min() > 512 / 4 - 5 * np.sqrt(512 * 3 / 16)                    # phases uniform (5 sigma)


def test_tube_positions_are_uniform_and_samples_independent():
    n, kept, positions, t_h_w = 8000, 20, 196, 8 * 196
    masks = dual_masks(np.random.default_rng(2), n, GRID_B, 0.9, 0.5)
    first_slice = masks["visible_idx"][:, :kept]                                 # kept spatial positions
    visible = np.zeros((n, positions), bool)
    np.put_along_axis(visible, first_slice, True, axis=1)
    p = kept / positions
    sigma = np.sqrt(p * (1 - p) / n)
    assert np.abs(visible.mean(axis=0) - p).max() < 5 * sigma                    # every position equally likely
    # Independence within a batch: neighbouring rows (crops of one video, videos of one batch) share
    # kept positions only by chance, kept²/positions on average, and share phases 1/4 of the time.
    overlap = (visible[:-1] & visible[1:]).sum(axis=1)
    expected = kept * kept / positions
    assert abs(overlap.mean() - expected) < 5 * overlap.std() / np.sqrt(n)
    phase_key = masks["query_idx"][:, 0] * t_h_w + masks["query_idx"][:, 1]    # the first two tell the phase
    assert len(np.unique(phase_key)) == 4
    same_phase = (phase_key[:-1] == phase_key[1:]).mean()
    assert abs(same_phase - 0.25) < 5 * np.sqrt(0.25 * 0.75 / n)


def test_tied_noise_still_removes_exactly_the_tube_count():
    class TiedDraws:  # float32 draws with many equal values, as at the threshold by chance
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def random(self, shape, dtype):
            return (self.rng.integers(0, 8, size=shape) / 8).astype(dtype)

        def integers(self, *args, **kwargs):
            return self.rng.integers(*args, **kwargs)

    masks = dual_masks(TiedDraws(), 50, GRID_B, 0.9, 0.5)
    slices = masks["visible_idx"].reshape(50, 8, 20) % 196
    assert (slices == slices[:, :1]).all() and (np.diff(slices[:, 0], axis=1) > 0).all()
    assert masks["loss_idx"].shape == (50, 704)


def test_clip_starts_are_uniform_over_the_published_window():
    rng = np.random.default_rng(3)
    frames = np.array([80, 64, 65, 30, 96])   # T·s = 64: starts in [0, 16], {0}, [0, 1], {0}, [0, 32]
    draws = np.stack([clip_starts(rng, frames, 16, 4) for _ in range(4000)])  # (4000, 5)
    for column, n in enumerate(frames):
        high = max(n - 64, 0)
        values, counts = np.unique(draws[:, column], return_counts=True)
        assert values.tolist() == list(range(high + 1))                         # every start, none past n − 64
        expected = 4000 / (high + 1)
        assert np.abs(counts - expected).max() < 5 * np.sqrt(expected) + 1
    scalar = [clip_start(np.random.default_rng(s), 80, 16, 4) for s in range(2000)]
    assert min(scalar) == 0 and max(scalar) == 16


@pytest.mark.parametrize("size", [(42, 32), (80, 64), (320, 240), (240, 320), (398, 224)])
def test_batch_crops_are_the_multiscale_crops(size):
    width, height = size
    img_size = 224 if min(size) >= 224 else 32
    allowed = {(x, y, w, h) for w, h in crop_size_pairs(width, height, img_size)
               for x, y in fix_offsets(width, height, w, h)}
    boxes = multiscale_crops(np.random.default_rng(4), np.full(500, width), np.full(500, height), img_size, 4)
    assert boxes.shape == (500, 4, 4) and boxes.dtype == np.int64
    seen = {tuple(int(v) for v in box) for box in boxes.reshape(-1, 4)}
    assert seen <= allowed
    scalar = {multiscale_crop(np.random.default_rng(s), width, height, img_size) for s in range(3000)}
    assert seen == {b for b in scalar}                                           # the same support, all reached
    pairs = crop_size_pairs(width, height, img_size)
    sizes = boxes[..., 2:].reshape(-1, 2)
    draws = len(sizes)
    for pair in set(pairs):  # uniform over the allowed pairs (a pair may repeat when sides snap)
        share = pairs.count(pair) / len(pairs)
        got = (sizes == pair).all(axis=1).mean()
        assert abs(got - share) < 5 * np.sqrt(share * (1 - share) / draws)


def test_crops_follow_each_videos_own_size():
    widths, heights = np.array([42, 320, 80]), np.array([32, 240, 64])
    boxes = multiscale_crops(np.random.default_rng(6), widths, heights, 32, 200)
    for b, (w, h) in enumerate(zip(widths, heights)):
        allowed = {(x, y, cw, ch) for cw, ch in crop_size_pairs(int(w), int(h), 32)
                   for x, y in fix_offsets(int(w), int(h), cw, ch)}
        assert {tuple(int(v) for v in box) for box in boxes[b]} <= allowed


def test_pretrain_batch_fields_and_determinism():
    cfg = SamplingConfig(num_frames=8, img_size=32, stride=2, patch_size=8, num_sample=3)
    metas = [{"num_frames": 30, "width": 80, "height": 64, "label": 2},
             {"num_frames": 9, "width": 80, "height": 64}]
    batch = draw_pretrain_batch(metas, np.random.default_rng(8), cfg, stored_stride=2)
    again = draw_pretrain_batch(metas, np.random.default_rng(8), cfg, stored_stride=2)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    assert batch["start"].dtype == np.int32 and 0 <= batch["start"][0] <= 30 - 16 and batch["start"][1] == 0
    assert batch["label"].tolist() == [2, -1]
    x0, y0, w, h = np.moveaxis(batch["boxes"], -1, 0)
    np.testing.assert_array_equal(batch["roi_start"], np.stack([y0, x0], -1).astype(np.float32))
    np.testing.assert_array_equal(batch["roi_end"], np.stack([y0 + h, x0 + w], -1).astype(np.float32))
    for key, count in cfg.mask_counts.items():
        assert batch[key].shape == (2, 3, count)
    # The masks are the stream's last draws: after the starts and the crops.
    rng = np.random.default_rng(8)
    clip_starts(rng, [30, 9], 8, 2)
    multiscale_crops(rng, [80, 80], [64, 64], 32, 3)
    masks = dual_masks(rng, 6, cfg.grid)
    for key in MASK_KEYS:
        np.testing.assert_array_equal(batch[key].reshape(6, -1), masks[key])


def test_recipe_reuses_released_buffers_without_changing_values():
    cfg = SamplingConfig(num_frames=8, img_size=32, stride=2, patch_size=8, num_sample=2)
    metas = [{"num_frames": 30, "width": 80, "height": 64}] * 4
    recipe = PretrainRecipe(cfg, stored_stride=2)
    first = recipe.sample(metas, np.random.default_rng(0))
    recipe.release(first)
    second = recipe.sample(metas, np.random.default_rng(1))
    assert all(second[k] is first[k] for k in MASK_KEYS)                         # the same memory again
    fresh = draw_pretrain_batch(metas, np.random.default_rng(1), cfg, 2)
    assert all(np.array_equal(second[k], fresh[k]) for k in fresh)
    assert recipe.sample(metas[:3], np.random.default_rng(1))["visible_idx"].shape[0] == 3


def test_sampling_config_rejects_bad_values_when_made():
    cfg = SamplingConfig()
    assert cfg.grid == GRID_B and cfg.mask_counts["loss_idx"] == 704
    for change, message in [({"img_size": 220}, "multiple of 16"), ({"num_frames": 15}, "multiple of 2"),
                            ({"num_frames": 12}, "multiple of 4"), ({"decoder_mask_ratio": 0.3}, "one of 0, 0.25"),
                            ({"encoder_mask_ratio": 1.0}, r"\[0, 1\)"), ({"stride": 0}, "stride must be a positive"),
                            ({"num_sample": 2.5}, "num_sample must be a positive integer")]:
        with pytest.raises(ValueError, match=message):
            replace(cfg, **change)
