"""Projected time of one pre-training epoch from measured rates.

    python -m bench.epoch --step bench/reports/DEV/step.json [--loader .../loader.json] [--e2e .../e2e.json]

One epoch shows every video once; with repeated augmentation each video yields `num_sample` clips,
so an epoch trains videos × num_sample clips (the paper's epochs count all of them). The per-GPU
rate is the slowest of: the model's step rate (bench.step, decoder ratio 0.5, fastest measured
configuration of the preset), our loader's rate (bench.loader) and the end-to-end rate (bench.e2e)
when given. Scaling over GPUs is assumed linear (data parallel, no communication cost): a lower bound.
"""
from __future__ import annotations

import json

import click

from bench.env import environment, write_json

DATASETS = {"K400": 240_000, "UnlabeledHybrid": 1_350_000}   # videos per epoch
GPU_COUNTS = (1, 8, 64)
PAPER_REFERENCE = "VideoMAE V1 ViT-B on K400, 800 epochs: about 27 h on 64 V100s, about 31 clips/s per GPU"


def best_model_rates(step: dict) -> dict[str, dict]:
    """preset -> fastest dual-masking row."""
    best = {}
    for row in step.get("rows", []):
        if row["decoder_mask_ratio"] != 0.5:
            continue
        if row["preset"] not in best or row["clips_per_s"] > best[row["preset"]]["clips_per_s"]:
            best[row["preset"]] = row
    return best


def loader_rate(loader: dict | None) -> float | None:
    """Fastest clips/s among our pipeline's rows (rows naming the reference loader are skipped)."""
    if not loader:
        return None
    rates = [r["clips_per_s"] for r in loader.get("rows") or loader.get("results", [])
             if "clips_per_s" in r and "ref" not in str(r.get("loader", r.get("pipeline", ""))).lower()]
    return max(rates) if rates else None


def e2e_rates(e2e: dict | None) -> dict[str, float]:
    if not e2e:
        return {}
    return {r["preset"]: r["clips_per_s"] for r in e2e.get("rows", []) if "clips_per_s" in r and "preset" in r}


def project(step: dict, loader: dict | None, e2e: dict | None, num_sample: int) -> list[dict]:
    rows = []
    feed = loader_rate(loader)
    measured_e2e = e2e_rates(e2e)
    for preset, row in best_model_rates(step).items():
        limits = {"model": row["clips_per_s"]}
        if feed:
            limits["loader"] = feed
        if preset in measured_e2e:
            limits["end_to_end"] = measured_e2e[preset]
        bound_by = min(limits, key=limits.get)
        rate = limits[bound_by]
        for dataset, videos in DATASETS.items():
            clips = videos * num_sample
            out = {"preset": preset, "dataset": dataset, "videos": videos, "clips_per_epoch": clips,
                   "clips_per_s_per_gpu": rate, "limited_by": bound_by,
                   "model_config": f"clips={row['clips_per_step']} compile={row['compile']} "
                                   f"ckpt={row['activation_checkpointing']}"}
            for gpus in GPU_COUNTS:
                out[f"hours_{gpus}gpu"] = clips / (rate * gpus) / 3600
            rows.append(out)
    return rows


def read_json(path: str | None) -> dict | None:
    if not path:
        return None
    with open(path) as f:
        return json.load(f)


@click.command(help="Project one pre-training epoch's wall time (K400, UnlabeledHybrid) from measured bench JSON.")
@click.option("--step", "step_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="bench.step JSON.")
@click.option("--loader", "loader_path", type=click.Path(exists=True, dir_okay=False), help="bench.loader JSON.")
@click.option("--e2e", "e2e_path", type=click.Path(exists=True, dir_okay=False), help="bench.e2e JSON.")
@click.option("--num-sample", default=4, show_default=True, help="Clips per video per epoch (repeated augmentation).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the projection as JSON here.")
def main(step_path, loader_path, e2e_path, num_sample, json_path):
    step = read_json(step_path)
    rows = project(step, read_json(loader_path), read_json(e2e_path), num_sample)
    if not rows:
        raise click.ClickException(f"{step_path} has no decoder-ratio-0.5 rows to project from")
    for r in rows:
        hours = "  ".join(f"{g} GPU {r[f'hours_{g}gpu']:.1f} h" for g in GPU_COUNTS)
        click.echo(f"{r['preset']:6} {r['dataset']:15} {r['clips_per_s_per_gpu']:9.1f} clips/s/device "
                   f"(limited by {r['limited_by']})  {hours}")
    notes = [__doc__.split("\n\n")[2].replace("\n", " "), f"Reference point: {PAPER_REFERENCE}.",
             f"Device of the step measurement: {step['env'].get('gpu') or step['env'].get('cpu')}."]
    if json_path:
        write_json(json_path, {"bench": "epoch", "env": environment(), "notes": notes, "rows": rows,
                               "inputs": {"step": step_path, "loader": loader_path, "e2e": e2e_path}})
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
