"""Loader throughput: the DALI engine (dali_pipes) against the published recipe's loader, same shards.

    python -m bench.loader                       # CPU defaults sized for a small machine
    python -m bench.loader --codecs h264,vp9 --videos 512 --batches 20   # a GPU machine

Measures clips/s (batch_size·num_sample clips per batch) and delivered frames/s (videos/s × T) of
each loader, at several thread / worker counts, after a warm-up, as the median of repeats. The
loader alone is timed: each batch is synchronised (CUDA) and dropped. Ratios are taken within the
run. Writes JSON (--json) and a markdown report beside it.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import click
import torch

from bench.env import environment


def make_dataset(root: Path, codec: str, videos: int, short_side: int, frames: int) -> Path:
    """Synthetic shards (shard_tools.synth) at the given short side, 4:3, cached by parameters."""
    from shard_tools.synth import make_synthetic

    width = (short_side * 4 // 3) // 2 * 2
    out = root / f"{codec}-{videos}x{frames}-{width}x{short_side}"
    if not (out / "manifest.json").is_file():
        make_synthetic(out, videos, codec=codec, num_frames=frames, width=width, height=short_side,
                       workers=os.cpu_count(), progress=False)
    return out


def time_loader(make, batches: int, warmup: int, repeats: int, clips_per_batch: int) -> dict:
    """Median seconds per batch over `repeats` runs of `batches` after `warmup`, on one loader."""
    loader = make()
    stream = _forever(loader)
    for _ in range(warmup):
        _sync(next(stream))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            _sync(next(stream))
        runs.append((time.perf_counter() - start) / batches)
    if hasattr(loader, "close"):
        loader.close()
    per_batch = statistics.median(runs)
    return {"seconds_per_batch": per_batch, "runs_seconds_per_batch": runs,
            "clips_per_s": clips_per_batch / per_batch}


def breakdown(data, codec, batch_size, threads, opts, batches, warmup, repeats) -> list[dict]:
    """Where our time goes: the sampling pipeline alone (read + parameters + masks), and decode with
    one crop (num_sample=1) against the full num_sample crops, per decoded video."""
    import dali_pipes
    from dali_pipes.manifest import open_shards
    from dali_pipes.pipeline import sampling_pipeline

    loader = dali_pipes.pretrain_loader(data, batch_size, num_threads=threads, **opts)
    pipe = sampling_pipeline(open_shards(data), loader.cfg, 0, 1, batch_size=batch_size, num_threads=1,
                             device_id=None, seed=0, exec_dynamic=True)
    loader.close()
    pipe.build()
    for _ in range(warmup):
        pipe.run()
    start = time.perf_counter()
    for _ in range(batches * repeats):
        pipe.run()
        pipe.checkpoint()
    sampling_s = (time.perf_counter() - start) / (batches * repeats) / batch_size
    rows = [{"codec": codec, "loader": "stage: sampling pipeline only", "threads": 1,
             "videos_per_s": 1 / sampling_s}]
    for n in (1, opts["num_sample"]):
        o = {**opts, "num_sample": n}
        r = time_loader(lambda: dali_pipes.pretrain_loader(data, batch_size, num_threads=threads, **o),
                        batches, warmup, repeats, batch_size * n)
        rows.append({"codec": codec, "loader": f"stage: decode + {n} crop(s)", "threads": threads,
                     "videos_per_s": batch_size / r["seconds_per_batch"], **r})
    return rows


def _forever(loader):
    while True:
        yield from loader


def _sync(batch):
    if batch["video"].is_cuda:
        torch.cuda.synchronize()


def markdown(report: dict) -> str:
    env, cfg = report["environment"], report["config"]
    lines = [f"# Loader throughput: dali_pipes vs the reference loader ({env['device']})", "",
             f"- command: `{env['command']}`", f"- git commit: {env['git_commit']}, {env['time_utc']}",
             f"- hardware: {env['cpu']} ({env['cpu_count']} cores)" + (f", {env.get('gpu')}" if env.get("gpu") else ""),
             f"- versions: python {env['python']}, torch {env['torch']}, DALI {env['dali']}, PyAV {report['pyav']}, "
             f"decord {report['decord'] or 'not installed (reference decodes with PyAV)'}",
             f"- clips: {cfg['num_frames']}×{cfg['img_size']}² at stride {cfg['stride']}, num_sample {cfg['num_sample']}, "
             f"batch {cfg['batch_size']} videos = {cfg['batch_size'] * cfg['num_sample']} clips; dataset "
             f"{cfg['videos']} synthetic videos × {cfg['video_frames']} frames at {cfg['short_side']}p short side, GOP 16",
             f"- timing: {cfg['warmup']} warm-up batches, then median of {cfg['repeats']} runs × {cfg['batches']} batches",
             "", "| codec | loader | threads / workers | clips/s | frames/s | vs reference (same codec, best) |",
             "|---|---|---|---|---|---|"]
    stages = [r for r in report["results"] if r["loader"].startswith("stage")]
    for r in report["results"]:
        if r in stages:
            continue
        best_ref = max((x["clips_per_s"] for x in report["results"]
                        if x["codec"] == r["codec"] and x["loader"] == "reference"), default=None)
        ratio = f"{r['clips_per_s'] / best_ref:.2f}×" if best_ref else "–"
        lines.append(f"| {r['codec']} | {r['loader']} | {r['threads']} | {r['clips_per_s']:.1f} | "
                     f"{r['frames_per_s']:.0f} | {ratio} |")
    if stages:
        lines += ["", "Where dali_pipes' time goes (decoded videos per second, each stage alone):", "",
                  "| codec | stage | threads | videos/s |", "|---|---|---|---|"]
        lines += [f"| {r['codec']} | {r['loader'][7:]} | {r['threads']} | {r['videos_per_s']:.1f} |" for r in stages]
    lines += ["", *report.get("notes", [])]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--codecs", default=None, help="comma list; default vp9 on CPU, h264,vp9 on GPU")
@click.option("--videos", default=None, type=int, help="videos in the synthetic dataset (default 24 CPU / 512 GPU)")
@click.option("--short-side", default=None, type=int, help="stored short side (default 160 CPU / 320 GPU)")
@click.option("--video-frames", default=80, show_default=True)
@click.option("--batch-size", default=None, type=int, help="videos per batch (default 2 CPU / 32 GPU)")
@click.option("--num-sample", default=4, show_default=True)
@click.option("--num-frames", default=16, show_default=True)
@click.option("--img-size", default=224, show_default=True)
@click.option("--stride", default=4, show_default=True)
@click.option("--threads", default=None, help="comma list of DALI threads / reference workers (default 1,all)")
@click.option("--batches", default=None, type=int, help="timed batches per run (default 4 CPU / 20 GPU)")
@click.option("--warmup", default=2, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--data-root", default="/tmp/vmae2-bench-loader", show_default=True)
@click.option("--json", "json_path", default=None, help="write the report here (and a .md beside it)")
def main(codecs, videos, short_side, video_frames, batch_size, num_sample, num_frames, img_size, stride,
         threads, batches, warmup, repeats, data_root, json_path):
    import av

    import dali_pipes
    from bench.baselines.reference_loader import ReferenceLoader, decord

    gpu = torch.cuda.is_available()
    codecs = (codecs or ("h264,vp9" if gpu else "vp9")).split(",")
    videos = videos or (512 if gpu else 24)
    short_side = short_side or (320 if gpu else 160)
    batch_size = batch_size or (32 if gpu else 2)
    batches = batches or (20 if gpu else 4)
    cores = os.cpu_count() or 1
    threads = [int(t) for t in threads.split(",")] if threads else sorted({1, cores})
    device = "cuda" if gpu else "cpu"
    opts = dict(num_sample=num_sample, num_frames=num_frames, img_size=img_size, stride=stride, device=device)
    clips_per_batch = batch_size * num_sample
    results, notes = [], []
    for codec in codecs:
        if codec not in ("vp8", "vp9", "mjpeg") and not gpu:
            notes.append(f"- {codec} skipped: DALI's CPU decoder reads only VP8, VP9 and MJPEG.")
            continue
        data = make_dataset(Path(data_root), codec, videos, short_side, video_frames)
        for n in threads:
            for name, make in (
                ("dali_pipes", lambda: dali_pipes.pretrain_loader(data, batch_size, num_threads=n, **opts)),
                ("reference", lambda: ReferenceLoader(data, batch_size, num_workers=n, **opts)),
            ):
                r = time_loader(make, batches, warmup, repeats, clips_per_batch)
                r.update(codec=codec, loader=name, threads=n,
                         frames_per_s=r["clips_per_s"] / num_sample * num_frames)
                results.append(r)
                click.echo(f"{codec:6s} {name:10s} threads={n:<3d} {r['clips_per_s']:8.1f} clips/s "
                           f"{r['frames_per_s']:8.0f} frames/s")
        results += breakdown(data, codec, batch_size, max(threads), opts, batches, warmup, repeats)
    env = environment()
    env["command"] = " ".join(["python -m bench.loader", *sys.argv[1:]])
    report = {"environment": env, "pyav": av.__version__,
              "decord": getattr(decord, "__version__", None),
              "config": dict(videos=videos, short_side=short_side, video_frames=video_frames, batch_size=batch_size,
                             num_sample=num_sample, num_frames=num_frames, img_size=img_size, stride=stride,
                             threads=threads, batches=batches, warmup=warmup, repeats=repeats, codecs=codecs),
              "results": results, "notes": notes}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1))
        Path(json_path).with_suffix(".md").write_text(markdown(report))
    click.echo(markdown(report))


if __name__ == "__main__":
    main()
