"""Test views and train-time draws of fine-tuning (dali_pipes.views) against hand-derived values.

The expected indices below are worked out by hand from the published rules (spec §7; VideoMAE V2
dataset/datasets.py): VideoClsDataset test/train for dense clips, RawFrameClsDataset for segments.
"""
from __future__ import annotations

import numpy as np
import pytest

from dali_pipes.views import (
    IDENTITY,
    RAND_OPS,
    EraseConfig,
    RandAugmentConfig,
    dense_train_frames,
    erase_boxes,
    erase_fill,
    rand_augment_draws,
    rand_augment_params,
    random_resized_boxes,
    resized_size,
    test_views,
    tsn_train_frames,
)


def frames_of(views, clip):
    return [v["frames"].tolist() for v in views if v["clip"] == clip]


# ---- test views -------------------------------------------------------------------------------------
def test_dense_views_of_a_long_landscape_video():
    """300 frames at stride 4 → 75 listed; step 59/4 = 14.75 → starts 0, 14, 29, 44, 59.

    340×256 resized to 297×224 (int(224·340/256) = int(297.5)); crop step 73/2 → x 0, 36, 73.
    """
    views = test_views(300, 340, 256)
    assert len(views) == 15
    assert [(v["clip"], v["crop"]) for v in views] == [(k, j) for k in range(5) for j in range(3)]
    for k, start in enumerate([0, 14, 29, 44, 59]):
        expected = [4 * (start + i) for i in range(16)]
        assert frames_of(views, k) == [expected] * 3
    assert frames_of(views, 4)[0][-1] == 296
    assert [v["box"] for v in views[:3]] == [(0, 0, 224, 224), (36, 0, 224, 224), (73, 0, 224, 224)]
    assert all(v["frames"].dtype == np.int64 for v in views)


def test_dense_views_of_a_portrait_video_slide_down():
    """256 wide × 340 high → 224 × 297: crops at y 0, 36, 73, full width."""
    views = test_views(300, 256, 340)
    assert [v["box"] for v in views[:3]] == [(0, 0, 224, 224), (0, 36, 224, 224), (0, 73, 224, 224)]
    assert resized_size(256, 340, 224) == (224, 297)


def test_square_video_crops_coincide():
    views = test_views(100, 256, 256, num_clips=2)
    assert {v["box"] for v in views} == {(0, 0, 224, 224)}


def test_short_video_repeats_its_last_listed_frame_in_every_clip():
    """30 frames at stride 4 → 0, 4, …, 28 (8 frames) then 28 repeated; no spare → all clips equal."""
    expected = [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8
    views = test_views(30, 320, 240)
    assert len(views) == 15
    assert all(v["frames"].tolist() == expected for v in views)


def test_more_clips_than_frames_still_yields_every_view():
    views = test_views(3, 320, 240, num_clips=5)
    assert len(views) == 15 and all(v["frames"].tolist() == [0] * 16 for v in views)
    views = test_views(3, 320, 240, num_clips=5, sampling="tsn")
    assert len(views) == 15
    # tick = 3/16: clip 0 takes int(0.1875·x) for x = 0…15
    assert frames_of(views, 0)[0] == [0] * 6 + [1] * 5 + [2] * 5
    assert max(max(v["frames"]) for v in views) == 2


def test_one_clip_one_crop_is_the_centre():
    """One view: start (75 − 16) // 2 = 29 in the listed frames; x offset (297 − 224) // 2 = 36."""
    (view,) = test_views(300, 340, 256, num_clips=1, num_crops=1)
    assert view["frames"].tolist() == [4 * (29 + i) for i in range(16)]
    assert view["box"] == (36, 0, 224, 224)
    views = test_views(300, 340, 256, num_clips=2, num_crops=1)
    assert [v["box"] for v in views] == [(36, 0, 224, 224)] * 2
    assert frames_of(views, 1)[0][0] == 4 * 59


def test_tsn_views_ssv2_two_by_three():
    """50 frames, 16 segments, tick 3.125: clip 0 int(3.125·x), clip 1 int(3.125·x + 1.5625)."""
    views = test_views(50, 427, 240, num_clips=2, sampling="tsn")
    assert len(views) == 6
    assert frames_of(views, 0)[0] == [0, 3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34, 37, 40, 43, 46]
    assert frames_of(views, 1)[0] == [1, 4, 7, 10, 14, 17, 20, 23, 26, 29, 32, 35, 39, 42, 45, 48]
    # 427×240 → int(224·427/240) = 398 × 224: crops at 0, 87, 174
    assert [v["box"] for v in views[:3]] == [(0, 0, 224, 224), (87, 0, 224, 224), (174, 0, 224, 224)]


def published_tsn_test_frames(n, num_frames, num_clips):
    """The published procedure, literally: all clips' indices sorted, then clip k = every num_clips-th from k."""
    tick = n / float(num_frames)
    every = [int(t * tick / num_clips + tick * x) for t in range(num_clips) for x in range(num_frames)]
    every = sorted(every)
    return [every[k::num_clips] for k in range(num_clips)]


@pytest.mark.parametrize("n", [1, 5, 16, 17, 31, 50, 99, 250, 1001])
def test_tsn_views_match_the_sorted_then_strided_published_procedure(n):
    views = test_views(n, 320, 240, num_clips=2, num_crops=1, sampling="tsn")
    assert [v["frames"].tolist() for v in views] == published_tsn_test_frames(n, 16, 2)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="sampling must be one of"):
        test_views(10, 32, 32, sampling="uniform")
    with pytest.raises(ValueError, match="metadata"):
        test_views(0, 32, 32)


# ---- train temporal sampling -------------------------------------------------------------------------
def test_dense_train_short_videos_hand_derived():
    """n ≤ 64: linspace(0, n, n // 4) then n, clipped to n − 1."""
    rng = np.random.default_rng(0)
    got = dense_train_frames(rng, [30, 64, 3, 5], 16, 4)
    assert got[0].tolist() == [0, 5, 10, 15, 20, 25, 29] + [29] * 9          # linspace(0, 30, 7)
    assert got[1].tolist() == [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 46, 51, 55, 59, 63]
    assert got[2].tolist() == [2] * 16                                         # count 0: all n, clipped
    assert got[3].tolist() == [0] + [4] * 15                                   # linspace(0, 5, 1) = [0]


def test_dense_train_long_videos_follow_linspace_over_a_64_frame_window():
    rng = np.random.default_rng(1)
    n = np.array([65, 100, 300] * 400)
    got = dense_train_frames(rng, n, 16, 4)
    starts = got[:, 0]
    assert (starts >= 0).all() and (starts <= n - 65).all()
    for row, start in zip(got, starts):
        expected = np.clip(np.linspace(start, start + 64, 16), start, start + 63).astype(np.int64)
        assert (row == expected).all()
    assert set(starts[n == 65]) == {0}
    assert set(starts[n == 100]) == set(range(36))   # end uniform over [64, 100) → start over [0, 35]


def test_tsn_train_one_frame_per_segment():
    rng = np.random.default_rng(2)
    got = tsn_train_frames(rng, np.array([50] * 500 + [10, 16]), 16)
    segments = got[:500]
    low = 3 * np.arange(16)                            # duration 50 // 16 = 3
    assert ((segments >= low) & (segments <= low + 2)).all()
    assert {int(v) - int(lo) for row in segments for v, lo in zip(row, low)} == {0, 1, 2}
    assert got[500].tolist() == [0] * 6 + list(range(10))
    assert got[501].tolist() == list(range(16))


# ---- train spatial draws -----------------------------------------------------------------------------
def test_random_resized_boxes_fit_and_follow_scale_and_ratio():
    rng = np.random.default_rng(3)
    boxes = random_resized_boxes(rng, np.full(3000, 320), np.full(3000, 240))
    x0, y0, w, h = boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 320).all() and (y0 + h <= 240).all()
    area = w * h / (320 * 240)
    assert area.min() > 0.07 and area.max() <= 1.0 and np.median(area) > 0.3
    aspect = w / h
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    assert len({tuple(b) for b in boxes}) > 2000


def test_random_resized_box_falls_back_to_a_centred_clamped_box():
    """1000×10 never fits 10 draws of ≥ 8 % area: h = 10, w = round(10·1.3333) = 13, centred."""
    boxes = random_resized_boxes(np.random.default_rng(4), [1000], [10])
    assert boxes[0].tolist() == [(1000 - 13) // 2, 0, 13, 10]


def test_erase_boxes_probability_and_bounds():
    rng = np.random.default_rng(5)
    boxes = erase_boxes(rng, 4000, 224, EraseConfig())
    erased = boxes[:, 2] > 0
    assert 0.22 < erased.mean() < 0.28
    x0, y0, w, h = boxes[erased].T
    assert (w < 224).all() and (h < 224).all() and (x0 + w <= 224).all() and (y0 + h <= 224).all()
    area = w * h / 224 ** 2
    assert area.min() > 0.015 and area.max() < 0.35
    fill = erase_fill(rng, boxes[:8], 224)
    for box, image in zip(boxes[:8], fill):
        x0, y0, w, h = box
        inside = np.zeros((224, 224), bool)
        inside[y0:y0 + h, x0:x0 + w] = True
        assert (image[~inside] == 0).all()
        if w:
            assert abs(image[inside][:, 0].mean() - 0.485 * 255) < 6


def test_rand_augment_draws_match_timm_statistics():
    cfg = RandAugmentConfig()
    draws = rand_augment_draws(np.random.default_rng(6), 5000, cfg, 224)
    op, param = draws["op"], draws["param"]
    assert op.shape == param.shape == (5000, 4) and param.dtype == np.float32
    assert 0.48 < (op == IDENTITY).mean() < 0.52                 # each op applied with p 0.5
    counts = np.bincount(op[op != IDENTITY], minlength=len(RAND_OPS))
    assert counts.min() > 0.8 * counts.mean()                      # uniform over the 15 ops
    rotate = param[op == RAND_OPS.index("rotate")]                 # ±30·level/10, level ~ N(7, 0.5)
    assert abs(np.abs(rotate).mean() - 21) < 0.3 and abs(np.abs(rotate).std() - 1.5) < 0.2
    assert 0.45 < (rotate < 0).mean() < 0.55
    assert (param[op == IDENTITY] == 0).all()


def test_rand_augment_params_follow_timm_level_rules():
    """Levels 0, 5, 7, 10 by hand: timm's increasing ops (rand_augment.py, _LEVEL_DENOM 10)."""
    levels = np.array([0.0, 5.0, 7.0, 10.0])
    def params(name, negate=False):
        op = np.full(4, RAND_OPS.index(name))
        return rand_augment_params(op, levels, np.full(4, negate), 224).tolist()
    assert params("rotate") == [0, 15, 21, 30] and params("rotate", True) == [0, -15, -21, -30]
    # bits kept 4 − int(4·l): 4, 2, 2 (int(2.8)), 0 → masks 0xF0, 0xC0, 0xC0, 0x00
    assert params("posterize") == [240, 192, 192, 0]
    assert params("solarize") == [256, 128, 77, 0]                 # 256 − int(179.2) = 77
    assert params("solarize_add") == [0, 55, 77, 110]
    assert np.allclose(params("contrast"), [1, 1.45, 1.63, 1.9]) and np.allclose(params("color", True),
                                                                                 [1, 0.55, 0.37, 0.1])
    assert np.allclose(params("shear_x"), [0, 0.15, 0.21, 0.3])
    assert np.allclose(params("translate_y"), [0, 50.4, 70.56, 100.8])   # 0.45·l of 224 pixels
    assert params("equalize") == [0, 0, 0, 0]
