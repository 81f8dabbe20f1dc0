"""The README's CPU demo: glyph shards → pre-training of `tiny` → held-out loss against baselines → a PNG.

The clips are the learnable glyph set (`vmae2-shard synth --kind glyphs`: a large digit moving over a
plain, lightly shaded background). Pre-training sees DEMO_VIDEOS of them; the loss is then scored on
HELD_OUT_VIDEOS clips it never saw, next to the predictors that see nothing of the clip (the best constant
patch and the best patch per position, vmae2.baselines): a loss below the per-position baseline is what
the model took from the visible patches of each clip, not from the data's average. It also prints the share of
the detail inside the masked patches (each patch's pixels about its own mean: strokes, edges) that the
reconstruction draws: 0 for a model that draws patch means.

The demo is sized so that a few CPU minutes draw the digits' strokes inside masked patches: `tiny`'s widths on
2 frames of 48x48 (one time slice of tubelets) with patch 6 (an 8x8 token grid), the encoder seeing 75 % of
the positions and the decoder reconstructing every one it did not see, 3,000 steps of 4 videos x 4 crops at peak
lr 3e-3. At V2's own ratios (8 frames, 90 % tube masking, running-cell masking of half the rest) the same
minutes draw patch means, a blur: the 7 visible positions of 64 leave the digit's shape open (README).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

DEMO_VIDEOS = 64
HELD_OUT_VIDEOS = 32
DEMO_STEPS = 3000
# Pre-training overrides of the `tiny` preset for the demo (the preset's own values otherwise).
DEMO_SETS = ("device=cpu", "model.img_size=48", "model.patch_size=6", "model.num_frames=2", "model.pos_embed=3d",
             "model.encoder_mask_ratio=0.25", "model.decoder_mask_ratio=0", "batch_videos_per_gpu=4",
             "base_lr=0.192", "min_lr_base=0.00128", "save_every=1000")
# `--set`s that give the demo V2's masking instead (8 frames, 90 % tube masking, running-cell masking, tiny's lr).
V2_MASKING_SETS = ("model.num_frames=8", "model.encoder_mask_ratio=0.9", "model.decoder_mask_ratio=0.5",
                   "base_lr=0.096", "min_lr_base=0.00064")


def demo_sets(v2_masking: bool = False, sets=()) -> tuple[str, ...]:
    """The demo's pre-training overrides of `tiny`: DEMO_SETS, then V2_MASKING_SETS if asked, then `sets`."""
    return (*DEMO_SETS, *(V2_MASKING_SETS if v2_masking else ()), *sets)


def run_demo(out, num_videos: int = DEMO_VIDEOS, steps: int | None = DEMO_STEPS, sets=(), workers: int = 2,
             held_out_videos: int = HELD_OUT_VIDEOS, v2_masking: bool = False) -> dict:
    """Synthesise glyph clips into OUT/shards (pre-training) and OUT/held-out, pre-train `tiny` for `steps`
    into OUT/run, score the held-out loss against the baselines and draw OUT/recon.png from held-out clips;
    returns the paths, the losses and the wall time.

    `sets` are pre-training overrides (`key=value`) applied after the demo's own (demo_sets); `v2_masking`
    trains with V2's masking ratios on 8 frames instead of the demo's 25 % on 2.
    """
    import torch

    from shard_tools.synth import make_synthetic

    from .baselines import recon_baselines
    from .config import PretrainConfig, load_config
    from .model import VideoMAEv2
    from .train import run_pretrain
    from .visualize import visualize
    from .weights import load_weights

    out = Path(out)
    start = time.perf_counter()
    shards, held_out = out / "shards", out / "held-out"
    steps = DEMO_STEPS if steps is None else steps
    for path, count, seed in ((shards, num_videos, 0), (held_out, held_out_videos, 1)):
        if not (path / "manifest.json").is_file():
            print(f"1/4 synthesising {count} glyph clips into {path}")
            make_synthetic(path, count, kind="glyphs", codec="vp9", seed=seed, workers=workers, progress=True)
    print(f"2/4 pre-training `tiny` for {steps} steps on the CPU into {out / 'run'}")
    summary = run_pretrain("tiny", str(shards), str(out / "run"), steps=steps, sets=demo_sets(v2_masking, sets))
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [row for row in rows if "loss" in row]
    print(f"3/4 the loss on {held_out_videos} held-out clips, next to predictors that see nothing of the clip")
    cfg = load_config(PretrainConfig, out / "run" / "config.json")
    model = VideoMAEv2(cfg.model)
    load_weights(model, str(out / "run"))
    torch.manual_seed(0)
    scores = recon_baselines(model, str(held_out), cfg, batches=max(1, held_out_videos // cfg.batch_videos_per_gpu))
    print("4/4 reconstructions of held-out clips")
    png = visualize(out / "run", held_out, out / "recon.png", num_clips=min(4, held_out_videos), num_frames=4)
    result = {"shards": str(shards), "held_out": str(held_out), "run": str(out / "run"), "png": str(png),
              "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"], "first_step": rows[0]["step"],
              "final_step": rows[-1]["step"], "steps": summary["steps"], "held_out_loss": scores["model"],
              "constant_baseline": scores["constant"], "per_position_baseline": scores["per_position"],
              "patch_mean_oracle": scores["patch_mean"], "detail": scores["detail"],
              "normalize_target": cfg.model.normalize_target, "wall_s": time.perf_counter() - start}
    target = "per-patch normalised pixels" if cfg.model.normalize_target else "pixels"
    print(f"training loss {result['first_loss']:.4f} (step {result['first_step']}) -> {result['final_loss']:.4f} "
          f"(step {result['final_step']}), target: {target}\n"
          f"held-out loss {scores['model']:.4f}; best constant patch {scores['constant']:.4f}; best patch per "
          f"position {scores['per_position']:.4f} (the model's loss is "
          f"{scores['model'] / scores['per_position']:.2f}x it)\n"
          f"inside the masked patches it draws {100 * scores['detail']:.0f} % of the detail about each patch's mean "
          f"(flat patches: 0 %)\nreconstructions in {png}")
    return result
