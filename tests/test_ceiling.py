"""The glyph generator's plain style and bench.experiments.ceiling's supervised baseline."""
from __future__ import annotations

import numpy as np
import pytest

from bench.experiments import ceiling
from shard_tools.glyphs import glyph_mask, render_glyph_scene


def test_plain_glyphs_are_one_drawing_per_digit_and_varied_is_the_default():
    plain = [glyph_mask(np.random.default_rng(seed), "7", 40, style="plain") for seed in (0, 1)]
    assert np.array_equal(*plain)                                   # draws nothing from the generator
    varied = [glyph_mask(np.random.default_rng(seed), "7", 40) for seed in (0, 1)]
    assert not (varied[0].shape == varied[1].shape and np.array_equal(*varied))
    default = render_glyph_scene(3, 5, num_frames=4, width=32, height=32)["frames"]
    assert np.array_equal(default, render_glyph_scene(3, 5, num_frames=4, width=32, height=32,
                                                      style="varied")["frames"])
    with pytest.raises(ValueError, match="plain"):
        glyph_mask(np.random.default_rng(0), "7", 40, style="bold")


def test_the_cnn_baseline_fits_its_labelled_clips_by_their_labels():
    train = ceiling.render(ceiling.TRAIN_SEED, 40, 24, 2, "plain")
    assert np.array_equal(train[1], [(i // 4) % 10 for i in range(40)])
    row = ceiling.train_supervised("cnn", train, train, steps=150, lr=3e-3)
    assert row["train_top1"] >= 90 and row["held_out_top1"] == row["train_top1"]
    shuffled = (train[0], np.random.default_rng(0).permutation(train[1]))
    assert ceiling.train_supervised("cnn", shuffled, train, steps=150, lr=3e-3)["held_out_top1"] < 50
