"""The README's CPU demo: synthetic shards → pre-training of `tiny` → a reconstruction PNG."""
from __future__ import annotations

import json
import time
from pathlib import Path


def run_demo(out, num_videos: int = 64, steps: int = 200, sets=()) -> dict:
    from shard_tools.synth import make_synthetic

    from .train import run_pretrain
    from .visualize import visualize

    out = Path(out)
    start = time.perf_counter()
    shards = out / "shards"
    if not (shards / "manifest.json").is_file():
        print(f"1/3 synthesising {num_videos} videos into {shards}")
        make_synthetic(shards, num_videos, codec="vp9", seed=0, progress=True)
    print(f"2/3 pre-training `tiny` for {steps} steps on the CPU into {out / 'run'}")
    summary = run_pretrain("tiny", str(shards), str(out / "run"), steps=steps,
                           sets=("device=cpu", "warmup_steps=" + str(max(1, steps // 10)), *sets))
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    print("3/3 reconstructions")
    png = visualize(out / "run", shards, out / "recon.png", num_clips=2, num_frames=4)
    result = {"shards": str(shards), "run": str(out / "run"), "png": str(png),
              "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"], "steps": summary["steps"],
              "wall_s": time.perf_counter() - start}
    print(f"loss {result['first_loss']:.3f} (step {rows[0]['step']}) -> {result['final_loss']:.3f} "
          f"(step {rows[-1]['step']}); reconstructions in {png}")
    return result
