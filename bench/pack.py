"""Packing throughput of `vmae2-shard pack`: copy and a VP9 transcode, per worker count.

    python -m bench.pack [--num-videos 96] [--workers 1,2] [--repeats 3] [--json PATH] [--md PATH]

The input collection is generated once per run: synthetic motion clips (shard_tools.synth) stored
as H.264 MP4, `--size` pixels, `--num-frames` frames at 25 fps -- the kind of file a user brings.
Each configuration packs the whole collection into a fresh OUT `--repeats` times after one
warm-up run (imports, process-pool start-up) and reports the median wall time, videos/s and MB/s
of input read (plus MB/s of shards written). Worker speed-ups are ratios within the same run.
Only packing is timed; generating the collection is not.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

import click

from bench.env import device_label, environment, write_json
from shard_tools.pack import pack
from shard_tools.pool import run_pool, worker_pool
from shard_tools.synth import CLASSES, write_clip

CONFIGS = {
    "copy": {"codec": "copy"},
    "vp9 short side 128, gop 16": {"codec": "vp9", "short_side": 128, "gop": 16},
}


def make_collection(folder, num_videos, num_frames, width, height, workers):
    """H.264 source clips in class folders; returns total bytes."""
    for name in CLASSES:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    tasks = [(os.path.join(folder, CLASSES[i % len(CLASSES)], f"clip-{i:05d}.mp4"), 0, i,
              "h264", num_frames, width, height, 25, 32) for i in range(num_videos)]
    with worker_pool(workers) as pool:
        return sum(run_pool(write_clip, tasks, pool, False, "generate", "video", lambda n: n))


def time_pack(src, scratch, options, workers):
    out = tempfile.mkdtemp(dir=scratch)
    shutil.rmtree(out)
    start = time.perf_counter()
    summary = pack(src, out, workers=workers, progress=False, **options)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds, summary


def pool_startup_seconds(workers, repeats):
    """Median time to start a spawn pool and run one trivial task in each worker."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with worker_pool(workers) as pool:
            if pool is not None:
                list(pool.map(abs, range(workers)))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(num_videos, num_frames, width, height, worker_counts, repeats, scratch):
    src = os.path.join(scratch, "collection")
    input_bytes = make_collection(src, num_videos, num_frames, width, height, max(worker_counts))
    startup = {w: pool_startup_seconds(w, repeats) for w in worker_counts}
    results = []
    for name, options in CONFIGS.items():
        for workers in worker_counts:
            time_pack(src, scratch, options, workers)  # warm-up
            runs = [time_pack(src, scratch, options, workers) for _ in range(repeats)]
            seconds = [s for s, _ in runs]
            median = statistics.median(seconds)
            summary = runs[0][1]
            results.append({
                "config": name, "options": options, "workers": workers,
                "seconds_median": median, "seconds_all": seconds,
                "videos_per_s": num_videos / median, "input_mb_per_s": input_bytes / 1e6 / median,
                "output_mb_per_s": summary["total_bytes"] / 1e6 / median,
                "num_samples": summary["num_samples"], "output_bytes": summary["total_bytes"],
            })
    for result in results:
        base = next(r for r in results if r["config"] == result["config"]
                    and r["workers"] == worker_counts[0])
        result["speedup_vs_first_worker_count"] = base["seconds_median"] / result["seconds_median"]
    return {"collection": {"num_videos": num_videos, "num_frames": num_frames, "width": width,
                           "height": height, "codec": "h264", "bytes": input_bytes},
            "repeats": repeats, "pool_startup_seconds": startup, "results": results}


def markdown(report):
    env, col = report["env"], report["collection"]
    lines = [
        "# vmae2-shard pack throughput",
        "",
        f"Input: {col['num_videos']} synthetic H.264 MP4 clips, {col['width']}x{col['height']}, "
        f"{col['num_frames']} frames at 25 fps, {col['bytes'] / 1e6:.1f} MB in all. "
        f"Median of {report['repeats']} runs after a warm-up; each run packs into a fresh OUT.",
        "",
        "| config | workers | s (median) | videos/s | MB/s in | MB/s out | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['config']} | {r['workers']} | {r['seconds_median']:.2f} | "
                     f"{r['videos_per_s']:.1f} | {r['input_mb_per_s']:.2f} | "
                     f"{r['output_mb_per_s']:.2f} | {r['speedup_vs_first_worker_count']:.2f}x |")
    lines += [
        "",
        "Process-pool start-up (spawn, once per run), included in the times above: "
        + ", ".join(f"{w} workers {s:.2f} s" for w, s in report["pool_startup_seconds"].items())
        + ". It is a fixed cost per run, visible here only because the collection is small.",
        "",
        "`copy` probes every input by decoding all of its frames (exact frame count, catches "
        "truncation), so its rate is bounded by decoding, not by I/O. The transcode decodes, "
        "scales and re-encodes with a single-threaded encoder per video (deterministic output); "
        "parallelism comes from `--workers`.",
        "",
        "## Environment",
        "",
        *[f"- {k}: {v}" for k, v in env.items()],
        "",
    ]
    return "\n".join(lines)


@click.command()
@click.option("--num-videos", type=int, default=96, show_default=True, help="Clips generated.")
@click.option("--num-frames", type=int, default=64, show_default=True, help="Frames per clip.")
@click.option("--size", default="320x256", show_default=True, help="WIDTHxHEIGHT of the clips.")
@click.option("--workers", "workers_list", default="1,2", show_default=True,
              help="Comma-separated worker counts to time.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs per config.")
@click.option("--json", "json_path", default=None,
              help="JSON report path (default bench/reports/{device}/pack.json).")
@click.option("--md", "md_path", default=None,
              help="Markdown report path (default beside the JSON, pack.md).")
@click.option("--scratch", default=None, help="Scratch folder (default: a temporary one).")
def main(num_videos, num_frames, size, workers_list, repeats, json_path, md_path, scratch):
    """Time packing a generated collection with copy and with a VP9 transcode."""
    width, height = (int(v) for v in size.lower().split("x"))
    worker_counts = [int(w) for w in workers_list.split(",")]
    env = environment()
    env["av"] = __import__("av").__version__
    env["command"] = " ".join(["python -m bench.pack", *sys.argv[1:]])
    json_path = json_path or os.path.join("bench", "reports", device_label(env), "pack.json")
    md_path = md_path or os.path.join(os.path.dirname(json_path), "pack.md")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        report = run(num_videos, num_frames, width, height, worker_counts, repeats, tmp)
    # Other jobs on a shared machine skew throughput; the load average shows whether they ran.
    env["loadavg_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    report["env"] = env
    write_json(json_path, report)
    with open(f"{md_path}.tmp", "w") as f:
        f.write(markdown(report))
    os.replace(f"{md_path}.tmp", md_path)
    click.echo(markdown(report))


if __name__ == "__main__":
    main()
