"""End to end: shards -> DALI -> the trainer, for a fixed number of steps.

    python -m bench.e2e --data SHARDS [--preset tiny] [--steps 40] [--set key=value ...] [--json PATH]

Runs the real training loop (`vmae2.train.train`) in a scratch folder and reads its metrics: clips/s,
the share of step time spent waiting for the next batch, step time. On a GPU it also samples GPU
and NVDEC utilisation with nvidia-smi while the loop runs. The first logging window (loader start-up,
compilation) is excluded from the medians.
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path

import click

from bench.env import environment, write_json


class UtilisationSampler:
    """Samples GPU and decoder (NVDEC) utilisation, in percent, with nvidia-smi in the background."""

    def __init__(self, interval_ms: int = 500):
        self.samples: list[tuple[float, float]] = []
        self._proc = None
        self._interval_ms = interval_ms

    def __enter__(self):
        try:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,utilization.decoder", "--format=csv,noheader,nounits",
                 f"-lms={self._interval_ms}", "-i", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                gpu, dec = (float(x) for x in line.split(","))
                self.samples.append((gpu, dec))
            except ValueError:
                continue

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_pct": None, "nvdec_util_pct": None}
        return {"gpu_util_pct": statistics.median(s[0] for s in self.samples),
                "nvdec_util_pct": statistics.median(s[1] for s in self.samples)}


def run_e2e(data: str, preset: str, steps: int, overrides: dict, keep_dir: str | None = None) -> dict:
    from vmae2.config import pretrain_config
    from vmae2.train import train

    run_dir = keep_dir or tempfile.mkdtemp(prefix="vmae2-e2e-")
    try:
        log_every = max(1, steps // 8)
        settings = {"data": data, "out_dir": run_dir, "total_steps": steps, "warmup_fraction": 0.0,
                    "log_every": log_every, "save_every": 10 * steps, "tensorboard": False,
                    "progress": True}   # the bar in the log shows how far a run that was stopped at its budget got
        cfg = pretrain_config(preset, {**settings, **overrides})
        with UtilisationSampler() as sampler:
            summary = train(cfg)
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    finally:
        if keep_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    timed = rows[1:] or rows   # the first window holds start-up and compilation
    return {
        "preset": preset, "steps": steps, "clips_per_step": cfg.videos_per_step * cfg.num_sample,
        "num_sample": cfg.num_sample, "img_size": cfg.model.img_size, "num_frames": cfg.model.num_frames,
        "compile": cfg.compile, "clips_per_s": statistics.median(r["clips_per_s"] for r in timed),
        "step_time_s": statistics.median(r["step_time_s"] for r in timed),
        "data_wait_frac": statistics.median(r["data_wait_frac"] for r in timed),
        "final_loss": summary["final_loss"], "peak_mem_gib": max(r["peak_mem_gib"] for r in rows),
        "windows_timed": len(timed), **sampler.summary(),
    }


@click.command(help="Time the real loop (shards -> DALI -> trainer) for a fixed number of steps.")
@click.option("--data", required=True, multiple=True,
              help="Shard folder or manifest; repeat to compare datasets (e.g. H.264 and VP9).")
@click.option("--preset", default="tiny", show_default=True, help="Training preset (vmae2-train presets).")
@click.option("--steps", default=40, show_default=True, help="Optimizer steps per run.")
@click.option("--set", "set_args", multiple=True, metavar="KEY=VALUE",
              help="Training config overrides, as in vmae2-train.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write rows and environment as JSON here.")
def main(data, preset, steps, set_args, json_path):
    from vmae2.overrides import parse_set_args

    overrides = parse_set_args(set_args)
    rows = []
    for path in data:
        row = {"data": path, **run_e2e(path, preset, steps, overrides)}
        manifest = Path(path) / "manifest.json" if Path(path).is_dir() else Path(path)
        row["codecs"] = ",".join(json.loads(manifest.read_text()).get("codecs", {}))
        rows.append(row)
        util = (f"  GPU {row['gpu_util_pct']:.0f}%  NVDEC {row['nvdec_util_pct']:.0f}%"
                if row["gpu_util_pct"] is not None else "")
        click.echo(f"{path} ({row['codecs']}): {row['clips_per_s']:.1f} clips/s, "
                   f"step {row['step_time_s'] * 1e3:.0f} ms, "
                   f"data wait {100 * row['data_wait_frac']:.1f}% of step time{util}")
    if json_path:
        write_json(json_path, {"bench": "e2e", "env": environment(), "rows": rows})
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
