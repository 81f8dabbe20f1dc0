"""Packing throughput of `vmae2-shard pack`: copy and a VP9 transcode, per worker count; with
`--ray`, a local Ray pack against the process pool on the same inputs.

    python -m bench.pack [--num-videos 96] [--workers 1,2] [--repeats 3] [--json PATH] [--md PATH]
    python -m bench.pack --ray [--workers 2] [--repeats 3]      # -> pack_ray.json / pack_ray.md

The input collection is generated once per run: synthetic motion clips (shard_tools.synth) stored
as H.264 MP4, `--size` pixels, `--num-frames` frames at 25 fps -- the kind of file a user brings.
Each configuration packs the whole collection into a fresh OUT `--repeats` times after one
warm-up run (imports, process-pool start-up) and reports the median wall time, videos/s and MB/s
of input read (plus MB/s of shards written). Worker speed-ups are ratios within the same run.
Only packing is timed; generating the collection is not.

`--ray` packs the same collection with `ray="local"` (a Ray instance started for each run with
`--workers` CPUs, as `vmae2-shard pack --ray local` does) and with the process pool of the same
size, alternating the two, and reports the Ray/pool time ratio with and without Ray's start-up
(timed apart: start Ray, run one trivial task per CPU, shut down). Both packs must give the same
bytes; the benchmark checks that too.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from bench.env import device_label, environment, write_json, write_report
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


def _digest(folder):
    """sha256 over the names and bytes of the files of a packed folder."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def time_pack(src, scratch, options, workers, ray=None):
    out = tempfile.mkdtemp(dir=scratch)
    shutil.rmtree(out)
    start = time.perf_counter()
    summary = pack(src, out, workers=workers, ray=ray, progress=False, **options)
    seconds = time.perf_counter() - start
    summary["digest"] = _digest(out)
    shutil.rmtree(out)
    return seconds, summary


def pool_startup_seconds(workers, repeats, ray=None):
    """Median time to start a spawn pool (or Ray) and run one trivial task per worker."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with worker_pool(workers, ray) as pool:
            if pool is not None:
                [f.result() for f in [pool.submit(abs, -i) for i in range(workers)]]
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


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def ray_head(num_cpus, scratch):
    """A running Ray head of `num_cpus` CPUs (`ray start --head --block` in its own session, so
    stopping it ends exactly the processes it started); yields its address."""
    port = free_port()
    command = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
               f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
               "--disable-usage-stats", f"--ray-client-server-port={free_port()}"]
    head = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=scratch)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


MODES = ("process pool", "ray local", "ray cluster")


def run_ray(num_videos, num_frames, width, height, workers, repeats, scratch):
    """The process pool of `workers`, Ray started per run with `workers` CPUs (`--ray local`),
    and a Ray head of `workers` CPUs already running (`--ray ADDRESS`), per config."""
    src = os.path.join(scratch, "collection")
    input_bytes = make_collection(src, num_videos, num_frames, width, height, workers)
    startup = {"process pool": pool_startup_seconds(workers, repeats),
               "ray local": pool_startup_seconds(workers, repeats, ray="local")}
    results = []
    with ray_head(workers, scratch) as address:
        ray_of = {"process pool": None, "ray local": "local", "ray cluster": address}
        for name, options in CONFIGS.items():
            for mode in MODES:  # warm-up of each
                time_pack(src, scratch, options, workers, ray=ray_of[mode])
            runs = {mode: [] for mode in MODES}
            for _ in range(repeats):  # interleaved, so drifting load hits all alike
                for mode in MODES:
                    runs[mode].append(time_pack(src, scratch, options, workers, ray_of[mode]))
            medians = {k: statistics.median(s for s, _ in v) for k, v in runs.items()}
            digests = {summary["digest"] for v in runs.values() for _, summary in v}
            results.append({
                "config": name, "options": options, "workers": workers,
                "seconds_median": medians,
                "seconds_all": {k: [s for s, _ in v] for k, v in runs.items()},
                "videos_per_s": {k: num_videos / m for k, m in medians.items()},
                "ray_local_over_pool": medians["ray local"] / medians["process pool"],
                "ray_cluster_over_pool": medians["ray cluster"] / medians["process pool"],
                "byte_identical": len(digests) == 1,
                "num_samples": runs["ray local"][0][1]["num_samples"],
            })
    return {"collection": {"num_videos": num_videos, "num_frames": num_frames, "width": width,
                           "height": height, "codec": "h264", "bytes": input_bytes},
            "repeats": repeats, "workers": workers, "startup_seconds": startup,
            "results": results}


def markdown_ray(report):
    env, col = report["env"], report["collection"]
    startup = report["startup_seconds"]
    lines = [
        "# vmae2-shard pack: Ray against the process pool",
        "",
        f"Command: `{env['command']}`",
        "",
        f"Input: {col['num_videos']} synthetic H.264 MP4 clips, {col['width']}x{col['height']}, "
        f"{col['num_frames']} frames at 25 fps, {col['bytes'] / 1e6:.1f} MB in all. Three ways "
        f"to pack it with {report['workers']} CPUs: the process pool (`--workers "
        f"{report['workers']}`); `--ray local`, Ray started and stopped by each run; `--ray "
        f"ADDRESS`, tasks sent to a Ray head of {report['workers']} CPUs started once beforehand "
        f"(the cluster case). Median of {report['repeats']} runs each, interleaved, after one "
        f"warm-up of each; each run packs into a fresh OUT.",
        "",
        "| config | pool s | Ray local s | Ray cluster s | local / pool | cluster / pool | "
        "same bytes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        m = r["seconds_median"]
        lines.append(f"| {r['config']} | {m['process pool']:.2f} | {m['ray local']:.2f} | "
                     f"{m['ray cluster']:.2f} | {r['ray_local_over_pool']:.2f}x | "
                     f"{r['ray_cluster_over_pool']:.2f}x | "
                     f"{'yes' if r['byte_identical'] else 'NO'} |")
    lines += [
        "",
        f"Start-up alone (start, one trivial task per CPU, stop; median of {report['repeats']}): "
        f"process pool {startup['process pool']:.2f} s, Ray local {startup['ray local']:.2f} s.",
        "",
        "## Environment",
        "",
        *[f"- {k}: {v}" for k, v in env.items()],
        "",
    ]
    return "\n".join(lines)


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
@click.option("--ray", "with_ray", is_flag=True,
              help="Compare a local Ray pack with the process pool, both with the largest "
                   "--workers count (default report pack_ray.json / pack_ray.md).")
def main(num_videos, num_frames, size, workers_list, repeats, json_path, md_path, scratch,
         with_ray):
    """Time packing a generated collection with copy and with a VP9 transcode."""
    width, height = (int(v) for v in size.lower().split("x"))
    worker_counts = [int(w) for w in workers_list.split(",")]
    env = environment()
    env["av"] = __import__("av").__version__
    name = "pack_ray" if with_ray else "pack"
    if with_ray:
        env["ray"] = __import__("ray").__version__
    json_path = json_path or os.path.join("bench", "reports", device_label(env), f"{name}.json")
    md_path = md_path or os.path.join(os.path.dirname(json_path), f"{name}.md")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        if with_ray:
            report = run_ray(num_videos, num_frames, width, height, max(worker_counts), repeats,
                             tmp)
        else:
            report = run(num_videos, num_frames, width, height, worker_counts, repeats, tmp)
    # Other jobs on a shared machine skew throughput; the load average shows whether they ran.
    env["loadavg_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    report["env"] = env
    write_json(json_path, report)
    text = write_report(md_path, markdown_ray(report) if with_ray else markdown(report))
    click.echo(text)


if __name__ == "__main__":
    main()
