"""The README's CPU demo: glyph shards → pre-training of `tiny` → held-out loss against baselines → a PNG.

The clips are the learnable glyph set (`vmae2-shard synth --kind glyphs`: a large digit moving over a
plain, lightly shaded background). Pre-training sees DEMO_VIDEOS of them; the loss is then scored on
HELD_OUT_VIDEOS clips it never saw, next to the predictors that see nothing of the clip (the best constant
patch and the best patch per position, vmae2.baselines): a loss below the per-position baseline is what
the model took from the visible patches of each clip, not from the data's average. It also prints the share of
the detail inside the masked patches (each patch's pixels about its own mean: strokes, edges) that the
reconstruction draws: 0 for a model that draws patch means, which is what these CPU minutes at 90 % masking give.

The demo runs `tiny`'s pre-training recipe (8 frames of 48x48, the factorised 3-D position table, 4 videos
x 4 crops per step at peak lr 1.5e-3) with patch 6 instead of tiny's 8 (a 4x8x8 token grid, the size
bench/reports/cpu/table1.md measured learning at: a finer picture) and 3,000 steps instead of 10,000.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

DEMO_VIDEOS = 64
HELD_OUT_VIDEOS = 32
DEMO_STEPS = 3000
# Pre-training overrides of the `tiny` preset for the demo (the preset's own values otherwise).
DEMO_SETS = ("device=cpu", "model.img_size=48", "model.patch_size=6", "model.num_frames=8", "model.pos_embed=3d",
             "batch_videos_per_gpu=4", "base_lr=0.096", "min_lr_base=0.00064", "save_every=1000")


def run_demo(out, num_videos: int = DEMO_VIDEOS, steps: int | None = DEMO_STEPS, sets=(), workers: int = 2,
             held_out_videos: int = HELD_OUT_VIDEOS) -> dict:
    """Synthesise glyph clips into OUT/shards (pre-training) and OUT/held-out, pre-train `tiny` for `steps`
    into OUT/run, score the held-out loss against the baselines and draw OUT/recon.png from held-out clips;
    returns the paths, the losses and the wall time.

    `sets` are pre-training overrides (`key=value`) applied after the demo's own.
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
    summary = run_pretrain("tiny", str(shards), str(out / "run"), steps=steps, sets=(*DEMO_SETS, *sets))
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [row for row in rows if "loss" in row]
    print(f"3/4 the loss on {held_out_videos} held-out clips, next to predictors that see nothing of the clip")
    cfg = load_config(PretrainConfig, out / "run" / "config.json")
    model = VideoMAEv2(cfg.model)
    load_weights(model, str(out / "run"))
    torch.manual_seed(0)
    scores = recon_baselines(model, str(held_out), cfg, batches=max(1, held_out_videos // cfg.batch_videos_per_gpu))
    print("4/4 reconstructions of held-out clips")
    png = visualize(out / "run", held_out, out / "recon.png", num_clips=2, num_frames=4)
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
