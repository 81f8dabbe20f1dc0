"""Distillation against training on labels: does a student that never sees a label learn its teacher's function?

    python -m bench.experiments.distill [--out /tmp/vmae2-distill] [--train-clips 1280] [--held-out-clips 400]

The comparison of tests/test_distill.py's acceptance test at a larger scale, on the CPU, every run through
the one training loop with the small model of the tests (2 blocks, width 48, 32² crops, 4 frames 4 apart):

1. glyph-motion shards (shard_tools.glyphs, 4 classes): labelled training clips, the same clips packed again
   without labels, and held-out clips of another seed;
2. a short pre-training run on the training clips (`vmae2-train pretrain`);
3. the teacher: fine-tuned on the labels from that pre-training run (`vmae2-train finetune`);
4. students with the teacher's architecture, for the same steps: distilled from the teacher on the
   unlabelled copy, alpha = 0, from the pre-training run (`vmae2-train distill`); trained on the labels from
   scratch (a random initialisation); and, for how much two models agree when neither copies the other,
   fine-tuned on the labels from the pre-training run as the teacher was, with the next seed;
5. every model scored with `vmae2-train eval` on the held-out clips with tiny's standard 2 x 3 views:
   top-1 with its binomial standard error, and the share of clips whose top-1 class is the teacher's.

It writes bench/reports/cpu/distill.{json,md}; the notes below the marker in the markdown survive a rerun.
"""
from __future__ import annotations

import json
import math
import tarfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from bench.env import environment, write_json_and_report
from shard_tools.pack import pack
from shard_tools.synth import make_synthetic
from vmae2.evaluate import run_eval
from vmae2.train import run_distill, run_finetune, run_pretrain

REPORT_DIR = Path(__file__).resolve().parent.parent / "reports" / "cpu"
TRAIN_SEED, HELD_OUT_SEED = 21, 22
# The small model of the tests (tests/conftest.py SMALL_MODEL) at 4 frames 4 apart: the tubelet pairs frames
# whose shift shows the direction of motion.
MODEL = {"model.img_size": 32, "model.patch_size": 8, "model.depth": 2, "model.embed_dim": 48,
         "model.num_heads": 2, "model.mlp_hidden_dim": 96, "model.decoder_depth": 1,
         "model.decoder_embed_dim": 32, "model.decoder_num_heads": 2, "model.num_frames": 4,
         "model.pos_embed": "1d"}
CLIPS = {**MODEL, "frame_stride": 4, "loader_threads": 1, "progress": False, "tensorboard": False,
         "device": "cpu", "log_every": 100, "save_every": 100_000}
# A plain classifier recipe (constant lr, no mixup, RandAugment or erasing, full-frame crops, flips that swap
# left and right) under which the small model leaves its loss plateau within the steps; the students use it too.
RECIPE = {**CLIPS, "batch_videos_per_gpu": 16, "num_sample": 1, "base_lr": 0.016, "min_lr_base": 0.016,
          "warmup_fraction": 0.02, "crop_scale_min": 1.0, "crop_ratio_min": 1.0, "crop_ratio_max": 1.0,
          "layer_decay": 1.0, "drop_path": 0.0, "rand_augment": "", "random_erase_prob": 0.0, "mixup_alpha": 0.0,
          "cutmix_alpha": 0.0, "label_smoothing": 0.0, "eval_every_epochs": 0, "flip": True,
          "colour_permute_prob": 0.0, "invert_prob": 0.0}
# tests/test_distill.py's pre-training, with the per-patch normalised target and the lr it was measured with
# (tiny's recipe now reconstructs pixels at another lr)
PRETRAIN = {**CLIPS, "batch_videos_per_gpu": 8, "num_sample": 2, "model.decoder_mask_ratio": 0.0,
            "model.normalize_target": True, "base_lr": 0.192, "min_lr_base": 0.00128}


def as_sets(values: dict) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def unlabelled_copy(labelled: Path, out: Path) -> Path:
    """The videos of a shard set packed again from a flat folder: the same clips, no labels."""
    if (out / "manifest.json").is_file():
        return out
    src = out.parent / f"{out.name}-src"
    src.mkdir(parents=True, exist_ok=True)
    count = 0
    for tar_path in sorted(labelled.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".webm"):
                    (src / f"clip-{count:05d}.webm").write_bytes(tar.extractfile(member).read())
                    count += 1
    pack(src, out, codec="copy", progress=False)
    return out


def top1_predictions(eval_dir: Path) -> dict[str, int]:
    return {row["key"]: row["top5"][0] for row in map(json.loads, (eval_dir / "predictions.jsonl").open())}


def standard_error(percent: float, count: int) -> float:
    """Binomial standard error of a rate measured on `count` clips, in points."""
    p = percent / 100
    return 100 * math.sqrt(p * (1 - p) / count)


def final_loss(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [r["loss"] for r in rows if "loss" in r][-1]


def run_all(out: Path, train_clips: int, held_out_clips: int, pretrain_steps: int, teacher_steps: int,
            student_steps: int, seed: int, echo=print) -> dict:
    """Every run of the module doc into OUT; returns the report's payload.

    A run folder left by an earlier call continues from its checkpoint, as `vmae2-train` does: a finished run
    is kept, and one made with other settings stops with the settings that differ.
    """
    out.mkdir(parents=True, exist_ok=True)
    walls = {}

    def timed(name, run):
        start = time.perf_counter()
        run()
        walls[name] = time.perf_counter() - start
        echo(f"{name}: {walls[name]:.0f} s")

    for name, count, data_seed in (("train", train_clips, TRAIN_SEED), ("held_out", held_out_clips, HELD_OUT_SEED)):
        make_synthetic(out / name, count, kind="glyphs", label="motion", seed=data_seed, num_frames=16, width=48,
                       height=48, progress=False, workers=2)
    unlabelled_copy(out / "train", out / "unlabelled")
    train, pre = str(out / "train"), str(out / "pre")
    recipe = {**RECIPE, "seed": seed}
    timed("pre", lambda: run_pretrain("tiny", train, pre, steps=pretrain_steps,
                                      sets=as_sets({**PRETRAIN, "seed": seed})))
    timed("teacher", lambda: run_finetune("tiny", train, str(out / "teacher"), init=pre, steps=teacher_steps,
                                          sets=as_sets(recipe)))
    timed("distilled", lambda: run_distill("tiny", str(out / "unlabelled"), str(out / "distilled"),
                                           teacher=str(out / "teacher"), init=pre, steps=student_steps,
                                           sets=as_sets(recipe)))
    timed("labels_scratch", lambda: run_finetune("tiny", train, str(out / "labels_scratch"), steps=student_steps,
                                                 sets=as_sets(recipe)))
    timed("labels_next_seed", lambda: run_finetune("tiny", train, str(out / "labels_next_seed"), init=pre,
                                                   steps=student_steps, sets=as_sets({**recipe, "seed": seed + 1})))
    runs = {"teacher": f"fine-tuned on the labels, {teacher_steps} steps from the pre-training run",
            "distilled": f"distilled from the teacher on the unlabelled copy, alpha 0, {student_steps} steps from "
                         f"the pre-training run",
            "labels_scratch": f"trained on the labels, {student_steps} steps from a random init",
            "labels_next_seed": f"fine-tuned on the labels, {student_steps} steps from the pre-training run, as the "
                                f"teacher but with seed {seed + 1}"}
    rows = []
    for name, how in runs.items():
        result = run_eval(str(out / name), str(out / "held_out"), str(out / f"eval-{name}"), views="2x3",
                          device="cpu")
        rows.append({"model": name, "how": how, "top1": result["top1"],
                     "top1_se": standard_error(result["top1"], result["num_videos"]),
                     "held_out_clips": result["num_videos"], "final_train_loss": final_loss(out / name)})
    teacher = top1_predictions(out / "eval-teacher")
    for row in rows:
        mine = top1_predictions(out / f"eval-{row['model']}")
        agreement = 100 * float(np.mean([mine[key] == teacher[key] for key in teacher]))
        row.update(agreement_with_teacher=agreement, agreement_se=standard_error(agreement, len(teacher)))
    config = {"train_clips": train_clips, "held_out_clips": held_out_clips, "pretrain_steps": pretrain_steps,
              "teacher_steps": teacher_steps, "student_steps": student_steps, "seed": seed, "views": "2x3",
              "recipe": recipe, "pretrain": {**PRETRAIN, "seed": seed}, "wall_s": walls,
              "model": {k.removeprefix("model."): v for k, v in MODEL.items()}}
    return {"bench": "distill", "env": environment(), "config": config, "rows": rows}


def report_text(payload: dict) -> str:
    config, rows, env = payload["config"], payload["rows"], payload["env"]
    by_name = {r["model"]: r for r in rows}
    teacher, student = by_name["teacher"]["top1"], by_name["distilled"]["top1"]
    commit = env["git_commit"] + (" (uncommitted changes: rerun from a clean checkout)" if env["git_dirty"] else "")
    lines = ["# Distillation without labels against training on labels (CPU, small model)", "",
             f"Command: `{env['command']}`", "",
             f"Hardware: {env['cpu']} ({env['cpu_count']} cores); torch {env['torch']}, DALI {env['dali']}, "
             f"python {env['python']}; commit `{commit}`; {env['time_utc']}.", "",
             f"Glyph-motion clips (4 classes, chance 25 %): {config['train_clips']} training clips (seed "
             f"{TRAIN_SEED}), the same clips without labels for distillation, {config['held_out_clips']} held-out "
             f"clips (seed {HELD_OUT_SEED}) scored with `vmae2-train eval` at {config['views']} views. The small "
             f"model of the tests at 4x32x32; pre-training {config['pretrain_steps']} steps, then every run seed "
             f"{config['seed']}. ± is the binomial standard error over the held-out clips.", "",
             "| model | how it was trained | held-out top-1 (%) | top-1 = the teacher's (%) | train loss at the end |",
             "|---|---|---|---|---|"]
    for r in rows:
        agreement = "—" if r["model"] == "teacher" else f"{r['agreement_with_teacher']:.1f} ± {r['agreement_se']:.1f}"
        lines.append(f"| {r['model']} | {r['how']} | {r['top1']:.1f} ± {r['top1_se']:.1f} | {agreement} | "
                     f"{r['final_train_loss']:.3f} |")
    lines += ["", f"The distilled student reaches {student / teacher:.2f} of the teacher's top-1 (the acceptance "
              f"bar is 0.9) and picks the teacher's class on {by_name['distilled']['agreement_with_teacher']:.1f} % "
              f"of the held-out clips (bar 85 %), without reading a label; the same student trained on the labels "
              f"from scratch for the same steps reaches {by_name['labels_scratch']['top1']:.1f} %, and a second "
              f"model trained as the teacher was, with another seed, agrees with it on "
              f"{by_name['labels_next_seed']['agreement_with_teacher']:.1f} %.",
              "", "Wall time per run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in config["wall_s"].items())
              + " (a run found finished in --out takes a few seconds)."]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--out", default="/tmp/vmae2-distill", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the shards and runs (a finished run is kept and reused).")
@click.option("--train-clips", default=1280, show_default=True, help="Labelled training clips.")
@click.option("--held-out-clips", default=400, show_default=True, help="Held-out clips (another seed).")
@click.option("--pretrain-steps", default=300, show_default=True)
@click.option("--teacher-steps", default=2500, show_default=True)
@click.option("--student-steps", default=2500, show_default=True, help="Steps of every student, distilled or not.")
@click.option("--seed", default=0, show_default=True, help="Seed of every run (init, crops, order).")
@click.option("--threads", default=1, show_default=True,
              help="torch CPU threads (the small model runs faster on one than on two shared cores).")
@click.option("--report-dir", default=str(REPORT_DIR), show_default=True, help="Where distill.{json,md} go.")
def main(out, train_clips, held_out_clips, pretrain_steps, teacher_steps, student_steps, seed, threads, report_dir):
    torch.set_num_threads(threads)
    payload = run_all(Path(out), train_clips, held_out_clips, pretrain_steps, teacher_steps, student_steps, seed,
                      echo=click.echo)
    payload["config"]["threads"] = threads
    click.echo(write_json_and_report(Path(report_dir) / "distill.json", payload, report_text(payload)))


if __name__ == "__main__":
    main()
