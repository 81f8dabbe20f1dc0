"""bench.colour: what the README says of YUV → RGB, on one small clip (DALI exact BT.601, swscale lower)."""
from __future__ import annotations

import numpy as np

from bench.colour import bt601_limited_to_rgb, dali_frames, encode_clips, level_stats, pyav_frames


def test_bt601_limited_range_reference_values():
    height, width = 2, 4
    planes = np.empty((height * 3 // 2, width), np.uint8)
    planes[:height] = [[16, 16, 235, 235], [126, 126, 126, 126]]   # black, white, grey
    planes[height:] = 128                                              # no chroma
    rgb = bt601_limited_to_rgb(planes, height, width, "bilinear")
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 3].tolist() == [255, 255, 255]
    assert rgb[1, 0].tolist() == [128, 128, 128]                       # (126 − 16) · 255 / 219 = 128.1
    red = planes.copy()
    red[:height], red[height] = 81, [90, 90, 240, 240]                 # Y; then U (2 samples), V (2 samples)
    assert np.abs(bt601_limited_to_rgb(red, height, width, "nearest").astype(int) - [255, 0, 0]).max() <= 1


def test_dali_converts_exactly_and_swscale_rounds_lower_on_the_same_stream():
    streams = encode_clips(1, 4, 64, 48, seed=0)
    dali = dali_frames(streams)[0]
    decoded = pyav_frames(streams[0])
    exact = level_stats(dali, decoded["exact"])
    assert dali.shape == decoded["pyav"].shape == (4, 48, 64, 3)
    assert exact["max_abs"] <= 1 and exact["mean_abs"] < 0.05              # DALI: the equations, rounded
    swscale = decoded["pyav"].astype(int) - decoded["exact_nearest"].astype(int)
    assert swscale.max() <= 0 and swscale.min() >= -3 and swscale.mean() < -0.5   # swscale: 0-3 levels lower
