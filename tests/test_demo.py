"""The README demo, smaller: glyph shards → pre-training of `tiny` → held-out loss against baselines → PNG.

The full demo (64 clips, 3,000 steps at 2x48x48, 25 % masked) ends at about 0.13x the loss of the best patch per
position on held-out clips; here 32 clips and 200 steps must beat that baseline by a fifth on 8 clips the model
never saw. The baselines see nothing of the clip, so a model that ignored its visible patches could not pass.
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
    # 4 clips x (original, masked, reconstruction) x the demo's 2 frames of 48x48, laid out by render_png.
    blank = {name: np.zeros((4, 2, 48, 48, 3), np.float32) for name in ("original", "masked", "reconstruction")}
    expected = Image.open(render_png(blank, tmp_path / "expected.png", num_frames=2)).size
    with Image.open(result["png"]) as png:
        assert png.size == expected
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.std() > 20                                              # frames drawn, not a blank canvas


def test_the_demo_and_its_v2_masking_resolve_to_the_configs_they_name(tmp_path):
    from dali_pipes.masking import mask_counts
    from vmae2.demo import demo_sets
    from vmae2.train import resolve_config

    def config(*args):
        return resolve_config("pretrain", "tiny", sets=demo_sets(*args), data=str(tmp_path), out_dir=str(tmp_path))

    demo, v2 = config(), config(True)
    assert demo.model.grid == (1, 8, 8) and v2.model.grid == (4, 8, 8)
    # the demo: 48 of 64 positions visible, the decoder reconstructs all 16 others
    assert mask_counts(demo.model.grid, demo.model.encoder_mask_ratio, demo.model.decoder_mask_ratio) == {
        "visible_idx": 48, "query_idx": 16, "loss_idx": 16}
    # V2: 7 of 64 positions visible in each of 4 slices, running-cell masking keeps half of each slice decoded
    assert (v2.model.encoder_mask_ratio, v2.model.decoder_mask_ratio) == (0.9, 0.5)
    assert mask_counts(v2.model.grid, 0.9, 0.5)["visible_idx"] == 4 * 7
    assert 2 * v2.base_lr == demo.base_lr and v2.batch_videos_per_gpu == demo.batch_videos_per_gpu == 4
    assert config(True, ("model.encoder_mask_ratio=0.75",)).model.encoder_mask_ratio == 0.75   # --set comes last
