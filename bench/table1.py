"""A small version of the paper's Table 1 on the CPU: encoder-only vs dual masking vs scratch.

    python -m bench.table1 --out /tmp/table1 [--pretrain-steps 1200 --finetune-steps 400]

Pre-trains `tiny` (16x112x112, patch 14) on an unlabeled synthetic set with encoder-only masking
(decoder_mask_ratio 0, VideoMAE V1) and with dual masking (0.5), fine-tunes each and a from-scratch
model on a small labeled split, and measures top-1 on a held-out split. Writes
bench/reports/cpu/table1.{json,md} with the hardware, versions, git commit and exact commands.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import click
import torch

from vmae2.config import PRESETS
from vmae2.flops import classifier_flops, pretrain_flops

REPORT_DIR = Path(__file__).parent / "reports" / "cpu"


def sh(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def last_rows_mean(run: Path, fraction: float = 0.1) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tail = rows[-max(1, int(len(rows) * fraction)):]
    return sum(r["loss"] for r in tail) / len(tail)


@click.command()
@click.option("--out", default="/tmp/vmae2-table1", show_default=True)
@click.option("--pretrain-videos", default=128, show_default=True)
@click.option("--finetune-videos", default=64, show_default=True)
@click.option("--val-videos", default=64, show_default=True)
@click.option("--pretrain-steps", default=1200, show_default=True)
@click.option("--finetune-steps", default=400, show_default=True)
def main(out, pretrain_videos, finetune_videos, val_videos, pretrain_steps, finetune_steps):
    out = Path(out)
    cli = [sys.executable, "-m", "vmae2.cli"]
    commands, started = [], time.perf_counter()
    for name, n, seed in (("pretrain", pretrain_videos, 0), ("finetune", finetune_videos, 1), ("val", val_videos, 2)):
        if not (out / name / "manifest.json").is_file():
            from shard_tools.synth import make_synthetic

            make_synthetic(out / name, n, codec="vp9", seed=seed, progress=False)
        commands.append(f"shard_tools.synth.make_synthetic({str(out / name)!r}, {n}, codec='vp9', seed={seed})")

    common = ["--set", "device=cpu", "--set", "progress=false", "--set", "log_every=20", "--set", "save_every=400"]
    rows = []
    for label, ratio in (("encoder masking only", 0.0), ("dual masking", 0.5)):
        run = out / f"pretrain-dec{ratio}"
        args = [*cli, "pretrain", "--preset", "tiny", "--data", str(out / "pretrain"), "--out", str(run),
                "--steps", str(pretrain_steps), "--set", f"model.decoder_mask_ratio={ratio}",
                "--set", f"warmup_steps={pretrain_steps // 10}", *common]
        sh(args)
        commands.append(" ".join(args[2:]))
        summary = json.loads((run / "summary.json").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        cfg = PRESETS["tiny"]
        rows.append({"setting": label, "decoder_mask_ratio": ratio, "run": str(run),
                     "pretrain_gflops_per_clip": pretrain_flops(cfg, ratio)["total"] / 1e9,
                     "pretrain_wall_s": summary["wall_s"],
                     "pretrain_steps": pretrain_steps,
                     "final_recon_loss": last_rows_mean(run),
                     "first_logged_loss": metrics[0]["loss"]})
    rows.append({"setting": "from scratch", "decoder_mask_ratio": None, "run": None,
                 "pretrain_gflops_per_clip": 0.0, "pretrain_wall_s": 0.0, "pretrain_steps": 0,
                 "final_recon_loss": None, "first_logged_loss": None})

    for row in rows:
        ft = out / f"finetune-{row['setting'].replace(' ', '_')}"
        args = [*cli, "finetune", "--preset", "tiny", "--data", str(out / "finetune"), "--val-data", str(out / "val"),
                "--out", str(ft), "--steps", str(finetune_steps), "--set", "device=cpu", "--set", "progress=false",
                "--set", f"warmup_steps={finetune_steps // 10}"]
        if row["run"]:
            args += ["--init", row["run"]]
        sh(args)
        commands.append(" ".join(args[2:]))
        result = json.loads((ft / "result.json").read_text())
        row.update({"top1": result["top1"], "val_videos": result["num_videos"], "finetune_wall_s": result["train_s"]})

    report = {
        "what": "Table 1 (small, CPU): tiny 16x112x112 patch 14, synthetic motion classes (8)",
        "rows": rows, "classifier_gflops_per_view": classifier_flops(PRESETS["tiny"], 8) / 1e9,
        "hardware": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
                     "torch_threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "git_commit": git_commit(), "commands": commands, "total_wall_s": time.perf_counter() - started,
        "settings": {"pretrain_videos": pretrain_videos, "finetune_videos": finetune_videos, "val_videos": val_videos,
                     "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps},
    }
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "table1.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| setting | pre-train GFLOPs / clip | pre-train wall (s) | final recon loss | top-1 (%) |",
             "|---|---|---|---|---|"]
    for r in rows:
        loss = f"{r['final_recon_loss']:.4f}" if r["final_recon_loss"] is not None else "–"
        lines.append(f"| {r['setting']} | {r['pretrain_gflops_per_clip']:.2f} | {r['pretrain_wall_s']:.0f} | "
                     f"{loss} | {r['top1']:.1f} |")
    (REPORT_DIR / "table1.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
