"""The paper's Table 1 on a CPU: does dual-masking pre-training on unlabelled clips help, and does it cost less?

    python -m bench.experiments.table1 --out /tmp/vmae2-table1

On the learnable glyph set (`vmae2-shard synth --kind glyphs`, `--style plain` by default: a digit moving left,
right, up or down over a plain background; VP9 shards, three disjoint seeds), with `tiny` and its own recipes,
or another size and recipe through `--pretrain-set`/`--finetune-set` (the probes take the pre-training's
`model.*` keys; bench/reports/cpu/table1.md names the command it ran):

    pre-train   dual masking (decoder ratio 0.5) and encoder-only masking (0, VideoMAE V1) on unlabelled clips,
                `vmae2-train pretrain`'s loop and DALI loader; wall time and GFLOPs per clip; the held-out
                reconstruction loss next to the best constant patch and the best patch per position
    probe       a linear probe on the frozen encoder's pooled features (glyph and motion labels) of the
                labelled clips, scored on held-out clips, against the same probe on a random init; for the
                motion label, the same clips mirrored and played backwards (a probe that reads motion swaps
                left and right on both, and up and down on the second)
    fine-tune   `vmae2-train finetune` with tiny's recipe on few labels per class (glyph), from each
                pre-training and from scratch, scored with the recipe's test views

Every stage's result is kept in OUT, so a rerun continues where a run stopped; the report
(bench/reports/cpu/table1.{json,md}) is written when every stage is done and keeps the notes below its marker.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import numpy as np
import torch

from bench.env import environment, write_json_and_report
from bench.experiments.probe import VIEWS, clip_features, fit_probe, probe_predict, recon_baselines, standard_error
from shard_tools.files import write_json_atomic
from shard_tools.flipmap import flip_permutation
from shard_tools.glyphs import FLIP_PAIRS, GLYPHS, MOTIONS
from shard_tools.synth import make_synthetic, synth_index, synth_labels
from vmae2.overrides import parse_set_args

REPORT_DIR = Path(__file__).resolve().parent.parent / "reports" / "cpu"
PRETRAIN_SEED, TRAIN_SEED, VAL_SEED = 0, 1, 2
SETTINGS = {"dual": 0.5, "encoder-only": 0.0, "scratch": None}   # decoder mask ratio of the pre-training
TITLES = {"dual": "dual masking (V2)", "encoder-only": "encoder masking only (V1)", "scratch": "random init / scratch"}
LABELS = {"glyph": GLYPHS, "motion": MOTIONS}
# a clip played backwards moves the other way along both axes
REVERSE_PAIRS = (("left", "right"), ("up", "down"))


def shard_set(out: Path, name: str, videos: int, seed: int, label: str, style: str = "plain") -> Path:
    path = out / "data" / name
    make_synthetic(path, videos, kind="glyphs", label=label, seed=seed, progress=False, style=style)
    return path


def record(path: Path, compute) -> dict:
    """A stage's result: read back when OUT holds it, else computed, timed and written."""
    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = compute()
    result["stage_wall_s"] = time.perf_counter() - start
    write_json_atomic(path, result, indent=2, sort_keys=False)
    return result


def pretrain(out: Path, name: str, data: Path, steps: int | None, sets: list[str]) -> dict:
    from vmae2.flops import pretrain_flops
    from vmae2.train import run_pretrain

    ratio = SETTINGS[name]
    run_dir = out / f"pretrain-{name}"

    def run():
        summary = run_pretrain("tiny", str(data), str(run_dir), steps,
                               sets=["device=cpu", "tensorboard=false", f"model.decoder_mask_ratio={ratio}", *sets])
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if "loss" in r]
        model = pretrain_config_of(str(run_dir)).model
        return {"model": model_text(model), "run": str(run_dir), "steps": summary["steps"], "wall_s": summary["wall_s"],
                "first_loss": losses[0], "last_loss": float(np.mean(losses[-max(1, len(losses) // 10):])),
                "gflops_per_clip": pretrain_flops(model, ratio)["total"] / 1e9}

    return record(out / f"pretrain-{name}.json", run)


def model_text(model) -> str:
    """How a report names the model's size, e.g. "16x112x112, patch 14, 1D position table"."""
    return (f"{model.num_frames}x{model.img_size}x{model.img_size}, patch {model.patch_size}, "
            f"{model.pos_embed.upper()} position table")


def pretrain_config_of(run: str):
    from vmae2.config import PretrainConfig, load_config

    return load_config(PretrainConfig, Path(run) / "config.json")


def recon(out: Path, name: str, run: str, val: Path) -> dict:
    from vmae2.model import VideoMAEv2
    from vmae2.weights import load_weights

    def compute():
        cfg = pretrain_config_of(run)
        model = VideoMAEv2(cfg.model)
        load_weights(model, run)
        return recon_baselines(model, str(val), cfg)

    return record(out / f"recon-{name}.json", compute)


def classifier_of(run: str | None, num_classes: int, model_sets: dict | None = None):
    """tiny's classifier with the pre-trained encoder of `run` (None: a fixed random init), its architecture
    changed by `model_sets` ({"model.key": value}, the pre-training's --pretrain-set model keys)."""
    from vmae2.config import finetune_config
    from vmae2.model import VideoClassifier
    from vmae2.weights import load_weights

    cfg = finetune_config("tiny", None, {"device": "cpu", "loader_threads": 2, **(model_sets or {})})
    torch.manual_seed(0)
    model = VideoClassifier(cfg.model, num_classes, drop_path=0.0)
    if run is not None:
        load_weights(model, run)
    return model, cfg


def probe(out: Path, name: str, run: str | None, train: Path, val: Path, model_sets: dict | None = None) -> dict:
    """Linear probes (glyph, motion) on frozen features of the labelled clips, scored on the held-out ones;
    both labels come from the generator, by clip key. model_sets: as classifier_of."""
    def compute():
        model, cfg = classifier_of(run, len(GLYPHS), model_sets)
        feats = {split: clip_features(model, str(path), cfg, views=VIEWS if split == "val" else ("plain",))
                 for split, path in (("train", train), ("val", val))}
        result = {}
        for label, classes in LABELS.items():
            y = {split: labels_of(feats[split]["keys"], split_seed(split), label) for split in feats}
            fitted = fit_probe(feats["train"]["plain"], y["train"], len(classes))
            row = {"l2": fitted["l2"], "cv_accuracy": {str(k): v for k, v in fitted["cv_accuracy"].items()}}
            for view in VIEWS:
                expected = y["val"]
                if label == "motion" and view != "plain":
                    pairs = FLIP_PAIRS if view == "mirrored" else REVERSE_PAIRS
                    expected = np.array(flip_permutation(pairs, list(MOTIONS)))[expected]
                elif view != "plain":
                    continue
                top1 = 100 * float((probe_predict(fitted, feats["val"][view]) == expected).mean())
                row[f"top1_{view}"] = top1
                row[f"top1_{view}_se"] = standard_error(top1, len(expected))
            row["val_clips"], row["train_clips"] = len(y["val"]), len(y["train"])
            result[label] = row
        return result

    return record(out / f"probe-{name}.json", compute)


def split_seed(split: str) -> int:
    return {"train": TRAIN_SEED, "val": VAL_SEED}[split]


def labels_of(keys: list[str], seed: int, label: str) -> np.ndarray:
    """The generator's label of each clip key (keys end with the clip's file name, synth-NNNNNN)."""
    return np.array([synth_labels("glyphs", seed, synth_index(key.rsplit("_", 1)[0]))[label] for key in keys])


def finetune(out: Path, name: str, run: str | None, train: Path, val: Path, steps: int | None,
             sets: list[str]) -> dict:
    from vmae2.train import run_finetune

    run_dir = out / f"finetune-{name}"

    def compute():
        summary = run_finetune("tiny", str(train), str(run_dir), val_data=str(val), init=run, steps=steps,
                               sets=["device=cpu", "tensorboard=false", *sets])
        result = summary["result"]
        return {"run": str(run_dir), "steps": summary["steps"], "wall_s": summary["wall_s"],
                "final_train_loss": summary["final_loss"], "top1": result["top1"],
                "top1_se": standard_error(result["top1"], result["num_videos"]), "val_videos": result["num_videos"],
                "views": result.get("views")}

    return record(out / f"finetune-{name}.json", compute)


def versus(a: float, a_se: float, b: float, b_se: float) -> str:
    diff, se = a - b, math.hypot(a_se, b_se)
    return f"{diff:+.1f} ± {se:.1f} ({diff / se:.1f} SE)" if se > 0 else f"{diff:+.1f}"


def report_text(rows: dict, config: dict, env: dict) -> str:
    chance = {label: 100 / len(classes) for label, classes in LABELS.items()}
    lines = ["# Table 1 on a CPU: dual masking vs encoder-only masking vs no pre-training", "",
             f"`tiny` ({rows['dual']['pretrain'].get('model', '16x112x112, patch 14, 1D position table')}) on the "
             f"glyph set (`vmae2-shard synth --kind glyphs --style {config.get('style', 'varied')}`, VP9): "
             f"{config['pretrain_videos']} unlabelled clips for pre-training, {config['train_videos']} labelled clips "
             f"({config['train_videos'] // len(GLYPHS)} per glyph class) for the probes and fine-tuning, "
             f"{config['val_videos']} held-out clips for every score; three disjoint seeds. Chance: glyph "
             f"{chance['glyph']:.0f} %, motion {chance['motion']:.0f} %. ± is the binomial standard error over the "
             "held-out clips; a difference's ± combines both.", "",
             f"    {env['command']}", "",
             f"{env['cpu']} ({env['cpu_count']} cores), torch {env['torch']}, DALI {env['dali']}, commit "
             f"`{env['git_commit']}`{' (dirty tree)' if env.get('git_dirty') else ''}, {env['time_utc']}.", "",
             "## Pre-training and reconstruction on held-out clips", "",
             "| setting | GFLOPs / clip | steps | wall (s) | train loss first → last | held-out loss | best constant "
             "patch | best patch per position | loss / per-position |", "|---|---|---|---|---|---|---|---|---|"]
    for name in ("dual", "encoder-only"):
        p, r = rows[name]["pretrain"], rows[name]["recon"]
        lines.append(f"| {TITLES[name]} | {p['gflops_per_clip']:.3f} | {p['steps']} | {p['wall_s']:.0f} | "
                     f"{p['first_loss']:.3f} → {p['last_loss']:.3f} | {r['model']:.3f} | {r['constant']:.3f} | "
                     f"{r['per_position']:.3f} | {r['model'] / r['per_position']:.2f} |")
    dual, enc = rows["dual"]["pretrain"], rows["encoder-only"]["pretrain"]
    lines += ["", f"Dual masking costs {dual['gflops_per_clip'] / enc['gflops_per_clip']:.2f}x the FLOPs of "
              f"encoder-only masking per clip and took {dual['wall_s'] / enc['wall_s']:.2f}x its wall time.", "",
              "## Linear probe on frozen features (held-out top-1, %)", "",
              "| setting | glyph | vs random init | motion | motion, mirrored | motion, reversed |",
              "|---|---|---|---|---|---|"]
    base = rows["scratch"]["probe"]
    for name in SETTINGS:
        g, m = rows[name]["probe"]["glyph"], rows[name]["probe"]["motion"]
        vs = "–" if name == "scratch" else versus(g["top1_plain"], g["top1_plain_se"], base["glyph"]["top1_plain"],
                                                  base["glyph"]["top1_plain_se"])
        lines.append(f"| {TITLES[name]} | {g['top1_plain']:.1f} ± {g['top1_plain_se']:.1f} | {vs} | "
                     f"{m['top1_plain']:.1f} ± {m['top1_plain_se']:.1f} | {m['top1_mirrored']:.1f} | "
                     f"{m['top1_reversed']:.1f} |")
    lines += ["", "Mirrored and reversed: the held-out clips flipped left-right or played backwards, scored against "
              "the motion they then show (left and right swapped; on reversal up and down too). A probe that reads "
              "the motion scores them as the plain clips; one that reads appearance does not.", "",
              "## Fine-tuning with few labels (glyph, held-out top-1 with the recipe's test views, %)", "",
              "| setting | steps | wall (s) | final train loss | top-1 | vs scratch |", "|---|---|---|---|---|---|"]
    scratch = rows["scratch"]["finetune"]
    for name in SETTINGS:
        f = rows[name]["finetune"]
        vs = "–" if name == "scratch" else versus(f["top1"], f["top1_se"], scratch["top1"], scratch["top1_se"])
        lines.append(f"| {TITLES[name]} | {f['steps']} | {f['wall_s']:.0f} | {f['final_train_loss']:.3f} | "
                     f"{f['top1']:.1f} ± {f['top1_se']:.1f} | {vs} |")
    d, e = rows["dual"]["finetune"], rows["encoder-only"]["finetune"]
    lines += ["", f"Dual vs encoder-only, fine-tuned: {versus(d['top1'], d['top1_se'], e['top1'], e['top1_se'])}. "
              f"Whole run: {config['wall_s'] / 60:.0f} min."]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--out", default="/tmp/vmae2-table1", show_default=True, type=click.Path(file_okay=False),
              help="Folder for shards, runs and each stage's result (a rerun continues there).")
@click.option("--pretrain-videos", default=400, show_default=True, help="Unlabelled pre-training clips (seed 0).")
@click.option("--train-videos", default=200, show_default=True, help="Labelled clips (seed 1), balanced over glyphs.")
@click.option("--val-videos", default=400, show_default=True, help="Held-out clips (seed 2).")
@click.option("--style", default="plain", show_default=True, type=click.Choice(["plain", "varied"]),
              help="How the digits are drawn (vmae2-shard synth --style): plain, upright in one weight, or varied.")
@click.option("--pretrain-steps", default=None, type=int, help="Pre-training steps [default: tiny's recipe].")
@click.option("--finetune-steps", default=None, type=int, help="Fine-tuning steps [default: tiny's recipe].")
@click.option("--pretrain-set", multiple=True, metavar="KEY=VALUE", help="Pre-training config override (repeatable).")
@click.option("--finetune-set", multiple=True, metavar="KEY=VALUE", help="Fine-tuning config override (repeatable).")
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
@click.option("--report-dir", default=str(REPORT_DIR), show_default=True, help="Where table1.{json,md} go.")
def main(out, pretrain_videos, train_videos, val_videos, style, pretrain_steps, finetune_steps, pretrain_set,
         finetune_set, threads, report_dir):
    for item in (*pretrain_set, *finetune_set):
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: write key=value (a vmae2.config field)")
    torch.set_num_threads(threads)
    out = Path(out)
    start = time.perf_counter()
    data = shard_set(out, "pretrain", pretrain_videos, PRETRAIN_SEED, "glyph", style)
    train = shard_set(out, "train", train_videos, TRAIN_SEED, "glyph", style)
    val = shard_set(out, "val", val_videos, VAL_SEED, "glyph", style)
    rows = {name: {} for name in SETTINGS}
    # the probes' classifier takes the pre-training's architecture (fine-tuning takes --finetune-set's)
    model_sets = {key: value for key, value in parse_set_args(pretrain_set).items() if key.startswith("model.")}
    for name in ("dual", "encoder-only"):
        rows[name]["pretrain"] = pretrain(out, name, data, pretrain_steps, list(pretrain_set))
        rows[name]["recon"] = recon(out, name, rows[name]["pretrain"]["run"], val)
    for name in SETTINGS:
        run = rows[name]["pretrain"]["run"] if name != "scratch" else None
        rows[name]["probe"] = probe(out, name, run, train, val, model_sets)
        rows[name]["finetune"] = finetune(out, name, run, train, val, finetune_steps, list(finetune_set))
        click.echo(f"{name}: probe glyph {rows[name]['probe']['glyph']['top1_plain']:.1f} %, fine-tuned "
                   f"{rows[name]['finetune']['top1']:.1f} %")
    stage_s = sum(stage.get("stage_wall_s", 0) for row in rows.values() for stage in row.values())
    config = {"style": style, "pretrain_videos": pretrain_videos, "train_videos": train_videos,
              "val_videos": val_videos, "wall_s": max(stage_s, time.perf_counter() - start)}
    env = environment()
    click.echo(write_json_and_report(Path(report_dir) / "table1.json", {"rows": rows, "config": config, "env": env},
                                     report_text(rows, config, env)))


if __name__ == "__main__":
    main()
