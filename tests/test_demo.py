"""The README demo, smaller: glyph shards → pre-training of `tiny` → held-out loss against baselines → PNG.

The full demo (64 clips, 3,000 steps at 8x48x48) ends at about 0.35x the loss of the best patch per position on
held-out clips; here 32 clips and 200 steps must beat that baseline by a fifth on 8 clips the model never saw.
The baselines see nothing of the clip, so a model that ignored its visible patches could not pass.
"""
import numpy as np
from PIL import Image


def test_demo_beats_the_per_position_baseline_on_held_out_clips(tmp_path):
    from vmae2.demo import run_demo
    from vmae2.visualize import render_png

    result = run_demo(tmp_path, num_videos=32, steps=200, sets=("progress=false", "tensorboard=false"), workers=1,
                      held_out_videos=8)
    print({key: value for key, value in result.items() if isinstance(value, float)})

    assert result["steps"] == 200 and result["first_step"] == 10 and result["final_step"] == 200
    assert result["normalize_target"] is False                            # tiny trains on pixels
    assert result["per_position_baseline"] <= result["constant_baseline"]
    assert result["held_out_loss"] <= 0.8 * result["per_position_baseline"]
    assert result["final_loss"] < 0.5 * result["first_loss"]
    # 2 clips x (original, masked, reconstruction) x 4 frames of the demo's 48x48 crop, laid out by render_png.
    blank = {name: np.zeros((2, 8, 48, 48, 3), np.float32) for name in ("original", "masked", "reconstruction")}
    expected = Image.open(render_png(blank, tmp_path / "expected.png", num_frames=4)).size
    with Image.open(result["png"]) as png:
        assert png.size == expected
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.std() > 20                                              # frames drawn, not a blank canvas
