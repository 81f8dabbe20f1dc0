"""The README demo, smaller: synthetic shards → pre-training of `tiny` → reconstruction PNG.

The full demo (64 videos, 200 steps) reaches a loss near 0.5; here 8 videos and 100 steps have to
take the loss clearly below 1.0, the loss of predicting every masked patch's mean.
"""
import numpy as np
from PIL import Image


def test_demo_learns_and_draws_the_reconstructions(tmp_path):
    from vmae2.demo import run_demo
    from vmae2.visualize import render_png

    result = run_demo(tmp_path, num_videos=8, steps=100, sets=("progress=false", "tensorboard=false"), workers=1)

    assert result["steps"] == 100 and result["first_step"] == 10 and result["final_step"] == 100
    assert result["first_loss"] > 0.85                                    # starts near the mean prediction
    assert result["final_loss"] <= 0.8 * result["first_loss"]
    assert result["final_loss"] < 0.7
    # 2 clips x (original, masked, reconstruction) x 4 frames of the 112x112 crop, laid out by render_png.
    blank = {name: np.zeros((2, 16, 112, 112, 3), np.float32) for name in ("original", "masked", "reconstruction")}
    expected = Image.open(render_png(blank, tmp_path / "expected.png", num_frames=4)).size
    with Image.open(result["png"]) as png:
        assert png.size == expected
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.std() > 20                                              # frames drawn, not a blank canvas
