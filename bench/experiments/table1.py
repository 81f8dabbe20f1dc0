"""A small version of the paper's Table 1 on the CPU: encoder-only vs dual masking vs scratch.

    python -m bench.experiments.table1 --out /tmp/table1 [--pretrain-steps 1500] [--setting dual ...]

Pre-trains `tiny` (16x112x112, patch 14) with its recipe on shards of the synthetic set (`make_synthetic`,
VP9; the DALI pre-training loader through `vmae2.train.run_pretrain`) with encoder-only masking
(decoder_mask_ratio 0, VideoMAE V1) and with dual masking (0.5). Then fine-tunes each, and a model from
scratch, with tiny's synth recipe through the same loop (layer decay, mixup/cutmix, label smoothing,
drop path) on labeled clips held in memory (bench.experiments.budget: a random window, a random 112² crop and
a flip; the RandAugment and random erasing of the shard loader are not applied), and scores top-1 on
held-out videos with the recipe's 2 × 3 test views. The three splits are disjoint seeds of the set.

Stages already done in OUT (a run folder with its summary.json) are not run again, so settings can run
in separate processes (`--setting`). The call that finds all three settings done writes the report
(bench/reports/cpu/table1.{json,md}, with each row's command, commit and environment; the notes below the
marker survive reruns); a call without work left only writes the report.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click
import torch

from bench.env import environment, write_json_and_report
from bench.experiments import budget
from shard_tools.files import write_json_atomic
from shard_tools.synth import CLASSES
from vmae2.config import PRESETS
from vmae2.flops import classifier_flops, pretrain_flops
from vmae2.train import run_pretrain

REPORT_DIR = Path(__file__).resolve().parent.parent / "reports" / "cpu"
# setting -> decoder_mask_ratio of its pre-training (None: no pre-training)
SETTINGS = {"encoder-only": 0.0, "dual": 0.5, "scratch": None}
TITLES = {"encoder-only": "encoder masking only (V1)", "dual": "dual masking (V2)", "scratch": "from scratch"}


def done(run_dir: Path) -> dict | None:
    """The summary of a finished run folder, else None."""
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pretrain_setting(out: Path, name: str, ratio: float, videos: int, steps: int, sets: list[str]) -> dict:
    """Pre-train one setting on the synthetic shards (made once in OUT/pretrain-shards); returns its row part."""
    shards = out / "pretrain-shards"
    if not (shards / "manifest.json").is_file():
        from shard_tools.synth import make_synthetic

        make_synthetic(shards, videos, codec="vp9", seed=budget.PRETRAIN_SEED)
    run_dir = out / f"pretrain-{name}"
    summary = done(run_dir)
    if summary is None or summary["steps"] != steps:
        summary = run_pretrain("tiny", str(shards), str(run_dir), steps,
                               sets=["device=cpu", "tensorboard=false", f"model.decoder_mask_ratio={ratio}", *sets])
    losses = [r["loss"] for r in budget.read_metrics(run_dir) if "loss" in r]
    tail = losses[-max(1, len(losses) // 10):]
    return {"pretrain_run": str(run_dir), "pretrain_steps": summary["steps"], "pretrain_videos": videos,
            "pretrain_wall_s": summary["wall_s"], "first_logged_loss": losses[0],
            "final_recon_loss": sum(tail) / len(tail), "recon_curve": losses,
            "pretrain_gflops_per_clip": pretrain_flops(PRESETS["tiny"].model, ratio)["total"] / 1e9}


def standard_error(top1: float, n: int) -> float:
    """Binomial standard error of a top-1 (%) over n videos, in points."""
    p = top1 / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def report_rows(out: Path) -> list[dict]:
    rows = []
    for name in SETTINGS:
        path = out / f"{name}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    scratch = next((r for r in rows if r["setting"] == "scratch"), None)
    for row in rows:
        row["top1_se"] = standard_error(row["top1"], row["val_videos"])
    for row in rows:
        if scratch is not None and row is not scratch:
            row["vs_scratch"] = row["top1"] - scratch["top1"]
            row["vs_scratch_se"] = math.hypot(row["top1_se"], scratch["top1_se"])
    return rows


def report_text(rows: list[dict]) -> str:
    lines = ["# Table 1 (small, CPU): encoder-only vs dual masking vs scratch", "",
             f"tiny 16x112x112, patch 14, on the synthetic set's {len(CLASSES)} motion classes (chance "
             f"{100 / len(CLASSES):.1f} %); top-1 over held-out videos, softmax averaged over the test views; "
             "± is the binomial standard error.", "",
             "| setting | pre-train GFLOPs / clip | pre-train steps | pre-train wall (s) | recon loss first → last "
             "| fine-tune steps | top-1 (%) | vs scratch (points) | commit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        recon = (f"{r['first_logged_loss']:.4f} → {r['final_recon_loss']:.4f}" if "final_recon_loss" in r else "–")
        versus = "–"
        if "vs_scratch" in r:
            versus = f"{r['vs_scratch']:+.1f} ± {r['vs_scratch_se']:.1f}"
            if r["vs_scratch_se"] > 0:
                versus += f" ({r['vs_scratch'] / r['vs_scratch_se']:.1f} SE)"
        commit = r["git_commit"] + (" (dirty)" if r["git_dirty"] else "")
        lines.append(f"| {TITLES[r['setting']]} | {r.get('pretrain_gflops_per_clip', 0.0):.2f} | "
                     f"{r.get('pretrain_steps', 0)} | {r.get('pretrain_wall_s', 0.0):.0f} | {recon} | "
                     f"{r['finetune_steps']} | {r['top1']:.1f} ± {r['top1_se']:.1f} | {versus} | {commit} |")
    if rows:
        r = rows[0]
        lines += ["", f"{r['val_videos']} validation videos ({r['views']} views each), {r['finetune_videos']} "
                  "labeled training videos; recon loss: mean of the first logged window → mean of the last "
                  f"10 % of logged windows. Classifier forward: {classifier_flops(PRESETS['tiny'].model, 8) / 1e9:.2f} "
                  "GFLOPs per view.", "", "Commands (one per row; a row's stages already in OUT were not rerun):", ""]
        lines += [f"    {command}" for command in dict.fromkeys(r["command"] for r in rows)]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--out", default="/tmp/vmae2-table1", show_default=True, type=click.Path(file_okay=False),
              help="Folder for shards, clip caches, runs and per-setting results.")
@click.option("--setting", "settings", multiple=True, type=click.Choice(list(SETTINGS)),
              help="Run only these settings (repeatable); default all three. The report takes every finished one.")
@click.option("--pretrain-videos", default=128, show_default=True, help="Unlabeled videos (synthetic seed 0).")
@click.option("--finetune-videos", default=256, show_default=True, help="Labeled training videos (seed 1).")
@click.option("--val-videos", default=256, show_default=True, help="Validation videos (seed 2).")
@click.option("--pretrain-steps", default=1500, show_default=True, help="Pre-training steps of 2 videos x 4 crops.")
@click.option("--finetune-steps", default=0, show_default=True,
              help="Fine-tuning steps of 4 videos x 2 crops; 0 = the synth recipe's 10 epochs.")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads of this process.")
@click.option("--pretrain-set", multiple=True, help="Override of the pre-training config, key=value (repeatable).")
@click.option("--finetune-set", multiple=True, help="Override of the fine-tuning config, key=value (repeatable).")
@click.option("--report-dir", default=str(REPORT_DIR), show_default=True, help="Where table1.{json,md} go.")
def main(out, settings, pretrain_videos, finetune_videos, val_videos, pretrain_steps, finetune_steps, threads,
         pretrain_set, finetune_set, report_dir):
    """Pre-train, fine-tune and score each setting, then write the report (see the module docstring)."""
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    finetune_sets = {}
    for item in finetune_set:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: write key=value (a FinetuneConfig field)", param_hint="--finetune-set")
        finetune_sets.update([item.split("=", 1)])
    if finetune_steps:
        finetune_sets["total_steps"] = finetune_steps
    for name in settings or SETTINGS:
        record_path = out / f"{name}.json"
        if record_path.is_file():
            continue
        ratio = SETTINGS[name]
        row = {"setting": name, "decoder_mask_ratio": ratio}
        if ratio is not None:
            row.update(pretrain_setting(out, name, ratio, pretrain_videos, pretrain_steps, list(pretrain_set)))
        train_set = budget.render_set(budget.FINETUNE_SEED, finetune_videos, cache_dir=out)
        val_set = budget.render_set(budget.VAL_SEED, val_videos, cache_dir=out)
        init = str(Path(row["pretrain_run"]) / "pretrain_final.pt") if ratio is not None else ""
        run_dir = out / f"finetune-{name}"
        summary = done(run_dir) or budget.finetune_run(run_dir, train_set, val_set, num_classes=len(CLASSES),
                                                       init=init, overrides=finetune_sets)
        losses = [r["loss"] for r in budget.read_metrics(run_dir) if "loss" in r]
        row.update({"finetune_run": str(run_dir), "finetune_steps": summary["steps"],
                    "finetune_videos": finetune_videos, "val_videos": summary["result"]["num_videos"],
                    "views": summary["result"]["views"], "top1": summary["result"]["top1"],
                    "final_train_loss": losses[-1], "finetune_wall_s": summary["wall_s"], **budget.run_record()})
        write_json_atomic(record_path, row, indent=2, sort_keys=False)
        print(f"{name}: top-1 {row['top1']:.1f} %", flush=True)

    waiting = [name for name in SETTINGS if not (out / f"{name}.json").is_file()]
    if waiting:
        # A report written now would change tracked files while other settings still run from this
        # checkout, and their rows would be recorded as measured on a dirty tree.
        print(f"the report waits for: {', '.join(waiting)} (run them with the same --out)")
        return
    rows = report_rows(out)
    print(write_json_and_report(Path(report_dir) / "table1.json", {"rows": rows, "environment": environment()},
                                report_text(rows)))


if __name__ == "__main__":
    main()
