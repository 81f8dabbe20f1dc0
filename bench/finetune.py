"""Fine-tuning with the full recipe on the CPU: tiny pre-trained vs from scratch on the synthetic labeled set.

    python -m bench.finetune --init RUN --out /tmp/vmae2-finetune [--steps 300] [--videos 128] [--val-videos 64]

Makes labeled training and validation shards (synth v2, VP9, disjoint seeds), fine-tunes `tiny` with its
`synth` recipe through `vmae2-train finetune` (the DALI loader: random-resized crop, flip, RandAugment, random
erasing, repeated augmentation 2; mixup/cutmix and label smoothing on the device; layer decay) from the
pre-training run INIT and from scratch, then scores the final weights on the validation set with
`vmae2-train eval`: 1 view and the recipe's 2 clips x 3 crops. Writes bench/reports/cpu/finetune.{json,md}:
top-1 with its binomial standard error, final train loss and fine-tuning clips/s (median over logged
windows). The hand-written notes below the marker survive reruns.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import click

from bench.env import environment, write_json_and_report

REPORT_DIR = Path(__file__).resolve().parent / "reports" / "cpu"
VIEWS = ("1x1", "2x3")


def shards(out: Path, name: str, videos: int, seed: int) -> Path:
    from shard_tools.synth import make_synthetic

    path = out / name
    if not (path / "manifest.json").is_file():
        make_synthetic(path, videos, codec="vp9", seed=seed, progress=False)
    return path


def finetune_and_score(out: Path, name: str, train: Path, val: Path, init: str | None, steps: int) -> dict:
    from vmae2.evaluate import run_eval
    from vmae2.train import run_finetune

    run_dir = out / name
    summary = run_finetune("tiny", str(train), str(run_dir), dataset="synth", init=init, steps=steps,
                           sets=["device=cpu", "progress=false", "tensorboard=false", "eval_every_epochs=0"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "clips_per_s" in r][1:] or [r for r in rows if "clips_per_s" in r]
    row = {"setting": name, "init": init, "steps": summary["steps"], "final_train_loss": summary["final_loss"],
           "clips_per_s": statistics.median(r["clips_per_s"] for r in trained), "wall_s": summary["wall_s"]}
    for views in VIEWS:
        result = run_eval(str(run_dir), str(val), str(out / f"{name}-eval-{views}"), views=views, device="cpu")
        top1, n = result["top1"], result["num_videos"]
        row[f"top1_{views}"] = top1
        row[f"top1_{views}_se"] = 100 * math.sqrt(top1 / 100 * (1 - top1 / 100) / n)
        row["val_videos"] = n
    return row


def markdown(report: dict) -> str:
    env, cfg = report["env"], report["config"]
    lines = ["# Fine-tuning `tiny` with the full recipe: pre-trained vs from scratch (CPU)", "",
             f"- command: `{env['command']}`",
             f"- git commit: {env['git_commit']}{' (dirty tree)' if env.get('git_dirty') else ''}, {env['time_utc']}",
             f"- hardware: {env['cpu']} ({env['cpu_count']} cores); torch {env['torch']}, DALI {env['dali']}",
             f"- data: synthetic set v2 (8 motion classes, chance 12.5 %), {cfg['videos']} labeled and "
             f"{cfg['val_videos']} validation videos; {cfg['steps']} steps of 4 videos x 2 views; pre-trained "
             f"weights: `{cfg['init']}`", "",
             "| start | steps | final train loss | top-1, 1 view (%) | top-1, 2 x 3 views (%) | fine-tuning clips/s |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['setting']} | {r['steps']} | {r['final_train_loss']:.3f} | "
                     f"{r['top1_1x1']:.1f} ± {r['top1_1x1_se']:.1f} | {r['top1_2x3']:.1f} ± {r['top1_2x3_se']:.1f} | "
                     f"{r['clips_per_s']:.1f} |")
    lines += ["", "± is the binomial standard error of the top-1 over the validation videos."]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--init", required=True, help="pre-training run (or weights) the pre-trained row starts from")
@click.option("--out", default="/tmp/vmae2-finetune", show_default=True, help="folder for shards and runs")
@click.option("--steps", default=300, show_default=True, help="fine-tuning steps per run")
@click.option("--videos", default=128, show_default=True, help="labeled training videos (seed 11)")
@click.option("--val-videos", default=64, show_default=True, help="validation videos (seed 12)")
@click.option("--report-dir", default=str(REPORT_DIR), show_default=True, help="where finetune.{json,md} go")
def main(init, out, steps, videos, val_videos, report_dir):
    out = Path(out)
    env = environment()
    env["command"] = " ".join(["python -m bench.finetune", *sys.argv[1:]])
    train, val = shards(out, "train", videos, 11), shards(out, "val", val_videos, 12)
    rows = [finetune_and_score(out, "pre-trained", train, val, init, steps),
            finetune_and_score(out, "scratch", train, val, None, steps)]
    report = {"bench": "finetune", "env": env, "rows": rows,
              "config": {"init": init, "steps": steps, "videos": videos, "val_videos": val_videos}}
    click.echo(write_json_and_report(Path(report_dir) / "finetune.json", report, markdown(report)))


if __name__ == "__main__":
    main()
