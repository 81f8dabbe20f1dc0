"""`tiny`'s CPU recipes as a user runs them: pre-train on a small labelled set's training videos, fine-tune
from that, and compare with the same fine-tuning from scratch, all on held-out videos.

    python -m bench.finetune --out /tmp/vmae2-finetune [--per-class 16] [--val-per-class 16] [--style plain]
        [--train-seed 11] [--val-seed 12]

The set is the glyph set (`vmae2-shard synth --kind glyphs`, label glyph: 10 classes, a large digit moving
over a plain background; --style plain draws every digit upright in one weight), VP9; training and
held-out videos are disjoint seeds. The three runs are the CLI commands themselves, with no --set or
--steps (the presets' own recipes):

    vmae2-train pretrain --preset tiny --data TRAIN --out OUT/pretrain
    vmae2-train finetune --preset tiny --data TRAIN --val-data VAL --init OUT/pretrain --out OUT/finetune
    vmae2-train finetune --preset tiny --data TRAIN --val-data VAL --out OUT/scratch

Writes bench/reports/cpu/finetune.{json,md}: held-out top-1 with its binomial standard error (the recipe's
test views), the wall time of each command, and their sum. A command whose run folder is complete is not
rerun (OUT/data.json records the data options, and an OUT made with other ones is refused); the
hand-written notes below the marker survive reruns.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import click

from bench.env import environment, write_json_and_report

REPORT_DIR = Path(__file__).resolve().parent / "reports" / "cpu"
TRAIN_SEED, VAL_SEED = 11, 12


def shards(out: Path, name: str, videos: int, seed: int, style: str) -> Path:
    from shard_tools.synth import make_synthetic

    path = out / name
    make_synthetic(path, videos, kind="glyphs", label="glyph", style=style, seed=seed, progress=False)
    return path


def check_same_data(out: Path, data: dict) -> None:
    """Refuse an --out whose kept runs were made on other data; record the data of a new one."""
    record = out / "data.json"
    if record.is_file():
        before = json.loads(record.read_text())
        if before != data:
            raise click.ClickException(f"{out} holds runs on other data ({record}: {before}, asked: {data}); "
                                       "give a new --out, or the same options as before")
        return
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(data, indent=1) + "\n")


def run_command(args: list[str], run_dir: Path) -> float:
    """Run `vmae2-train ARGS` (unless run_dir already holds its summary); its wall time in seconds."""
    timing = run_dir.parent / f"{run_dir.name}.wall_s"
    if (run_dir / "summary.json").is_file() and timing.is_file():
        return float(timing.read_text())
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vmae2.cli", *args], check=True)
    wall = time.perf_counter() - start
    timing.write_text(f"{wall:.1f}\n")
    return wall


def row_of(name: str, run_dir: Path, wall_s: float, command: str) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    row = {"setting": name, "command": command, "wall_s": wall_s, "steps": summary["steps"],
           "final_loss": summary["final_loss"]}
    if "result" in summary:
        top1, n = summary["result"]["top1"], summary["result"]["num_videos"]
        row.update(top1=top1, top1_se=100 * math.sqrt(top1 / 100 * (1 - top1 / 100) / n), val_videos=n)
    return row


def markdown(report: dict) -> str:
    env, cfg, rows = report["env"], report["config"], report["rows"]
    by = {r["setting"]: r for r in rows}
    gain = by["pre-trained"]["top1"] - by["scratch"]["top1"]
    gain_se = math.hypot(by["pre-trained"]["top1_se"], by["scratch"]["top1_se"])
    lines = ["# `tiny`'s CPU recipes as a user runs them: pre-train, then fine-tune, vs fine-tuning from scratch", "",
             f"    {env['command']}", "",
             f"{env['cpu']} ({env['cpu_count']} cores), torch {env['torch']}, DALI {env['dali']}, commit "
             f"`{env['git_commit']}`{' (dirty tree)' if env.get('git_dirty') else ''}, {env['time_utc']}.", "",
             f"Data: the glyph set ({cfg.get('style', 'varied')} digits, label glyph, 10 classes, chance 10 %), "
             f"{cfg['per_class']} training videos per "
             f"class ({cfg['per_class'] * 10}; pre-training uses them without labels) and {cfg['val_per_class']} "
             f"held-out videos per class (seeds {cfg.get('train_seed', TRAIN_SEED)} and "
             f"{cfg.get('val_seed', VAL_SEED)}); VP9. Each row is one command, exactly as below (no --set, no "
             "--steps).", "",
             "| run | command | steps | wall | held-out top-1 (%) |", "|---|---|---|---|---|"]
    for r in rows:
        top1 = f"{r['top1']:.1f} ± {r['top1_se']:.1f}" if "top1" in r else "–"
        lines.append(f"| {r['setting']} | `{r['command']}` | {r['steps']} | {r['wall_s'] / 60:.1f} min | {top1} |")
    total = by["pretrain"]["wall_s"] + by["pre-trained"]["wall_s"]
    lines += ["", f"Pre-trained minus scratch: {gain:+.1f} ± {gain_se:.1f} points. Pre-training plus fine-tuning took "
              f"{total / 60:.1f} min; ± is the binomial standard error over the held-out videos."]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--out", default="/tmp/vmae2-finetune", show_default=True, type=click.Path(file_okay=False),
              help="Folder for shards and runs (complete runs are kept and not rerun).")
@click.option("--per-class", default=16, show_default=True, help="Training videos per class.")
@click.option("--val-per-class", default=16, show_default=True, help="Held-out videos per class.")
@click.option("--train-seed", default=TRAIN_SEED, show_default=True, help="Seed of the training videos.")
@click.option("--val-seed", default=VAL_SEED, show_default=True, help="Seed of the held-out videos (not the same).")
@click.option("--style", type=click.Choice(["plain", "varied"]), default="plain", show_default=True,
              help="How the digits are drawn (vmae2-shard synth --style).")
@click.option("--report-dir", default=str(REPORT_DIR), show_default=True, help="Where finetune.{json,md} go.")
def main(out, per_class, val_per_class, train_seed, val_seed, style, report_dir):
    if train_seed == val_seed:
        raise click.BadParameter("the held-out videos need a seed of their own", param_hint="--val-seed")
    out = Path(out)
    data = {"per_class": per_class, "val_per_class": val_per_class, "style": style,
            "train_seed": train_seed, "val_seed": val_seed}
    check_same_data(out, data)
    env = environment()
    train = shards(out, "train", 10 * per_class, train_seed, style)
    val = shards(out, "val", 10 * val_per_class, val_seed, style)
    runs = [("pretrain", ["pretrain", "--preset", "tiny", "--data", str(train), "--out", str(out / "pretrain")]),
            ("pre-trained", ["finetune", "--preset", "tiny", "--data", str(train), "--val-data", str(val),
                             "--init", str(out / "pretrain"), "--out", str(out / "finetune")]),
            ("scratch", ["finetune", "--preset", "tiny", "--data", str(train), "--val-data", str(val),
                         "--out", str(out / "scratch")])]
    rows = []
    for name, args in runs:
        run_dir = Path(args[args.index("--out") + 1])
        wall = run_command(args, run_dir)
        rows.append(row_of(name, run_dir, wall, "vmae2-train " + " ".join(args)))
    report = {"bench": "finetune", "env": env, "rows": rows,
              "config": data}
    click.echo(write_json_and_report(Path(report_dir) / "finetune.json", report, markdown(report)))


if __name__ == "__main__":
    main()
