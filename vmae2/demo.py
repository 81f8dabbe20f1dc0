"""The README's CPU demo: synthetic shards → pre-training of `tiny` → a reconstruction PNG.

The synthetic scenes (shard_tools.synth) are predictable from context as natural video is, so a
few minutes of CPU pre-training take the loss clearly below 1.0, the loss of predicting each
masked patch's mean, and the PNG shows the reconstructed shapes and backgrounds.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

DEMO_VIDEOS = 64
DEMO_STEPS = 200
# Pre-training overrides of the `tiny` preset for the demo (the preset's own values otherwise).
DEMO_SETS = ("device=cpu",)


def run_demo(out, num_videos: int = DEMO_VIDEOS, steps: int | None = DEMO_STEPS, sets=(), workers: int = 2) -> dict:
    """Synthesise `num_videos` clips into OUT/shards, pre-train `tiny` for `steps` into OUT/run and
    draw OUT/recon.png; returns the paths, the first and last logged loss and the wall time.

    `sets` are pre-training overrides (`key=value`) applied after the demo's own.
    """
    from shard_tools.synth import make_synthetic

    from .train import run_pretrain
    from .visualize import visualize

    out = Path(out)
    start = time.perf_counter()
    shards = out / "shards"
    steps = DEMO_STEPS if steps is None else steps
    if not (shards / "manifest.json").is_file():
        print(f"1/3 synthesising {num_videos} videos into {shards}")
        make_synthetic(shards, num_videos, codec="vp9", seed=0, workers=workers, progress=True)
    print(f"2/3 pre-training `tiny` for {steps} steps on the CPU into {out / 'run'}")
    summary = run_pretrain("tiny", str(shards), str(out / "run"), steps=steps, sets=(*DEMO_SETS, *sets))
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    print("3/3 reconstructions")
    png = visualize(out / "run", shards, out / "recon.png", num_clips=2, num_frames=4)
    result = {"shards": str(shards), "run": str(out / "run"), "png": str(png),
              "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"], "first_step": rows[0]["step"],
              "final_step": rows[-1]["step"], "steps": summary["steps"], "wall_s": time.perf_counter() - start}
    print(f"loss {result['first_loss']:.3f} (step {result['first_step']}) -> {result['final_loss']:.3f} "
          f"(step {result['final_step']}); 1.0 is the loss of predicting each patch's mean; "
          f"reconstructions in {png}")
    return result
