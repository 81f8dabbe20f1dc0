"""Loader throughput: the DALI engine (dali_pipes) against the published recipe's loader, same shards.

    python -m bench.loader                       # CPU defaults sized for a small machine
    python -m bench.loader --codecs h264,vp9 --videos 512 --batches 20   # a GPU machine
    python -m bench.loader --stage sampling --batch-size 32 --json PATH   # the host side alone

Stage "throughput" measures clips/s (batch_size·num_sample clips per batch) and delivered frames/s (videos/s × T) of
each loader, at several thread / worker counts, after a warm-up, as the median of repeats. The
loader alone is timed: each batch is synchronised (CUDA) and dropped. Ratios are taken within the
run. Stage "sampling" measures the host side of the engine on a tiny-resolution set (decoding is
cheap there): `videos_per_s` of the sampling stage alone on one thread (read, clip starts, crops,
masks, checkpoint), and `host_ms_per_batch`, the training thread's wall time inside the loader per
batch while a simulated training step (a sleep longer than the loader needs per batch) lets the
loader run ahead. Writes JSON (--json) and a markdown report beside it.
"""
from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import click
import torch

from bench.env import environment, write_json_and_report
from dali_pipes.contract import forever
from shard_tools.format import CPU_DECODABLE_CODECS


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
    start = time.perf_counter()
    loader = make()
    stream = forever(loader)
    for _ in range(warmup):
        _sync(next(stream))
    # progress in the log, so that a run stopped at its time budget shows how far it got
    print(f"  built and warmed up ({warmup} batches) in {time.perf_counter() - start:.1f} s", flush=True)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            _sync(next(stream))
        runs.append((time.perf_counter() - start) / batches)
        print(f"  {batches} batches at {runs[-1]:.3f} s per batch", flush=True)
    start = time.perf_counter()
    if hasattr(loader, "close"):
        loader.close()
    print(f"  closed in {time.perf_counter() - start:.1f} s", flush=True)
    per_batch = statistics.median(runs)
    return {"seconds_per_batch": per_batch, "runs_seconds_per_batch": runs,
            "clips_per_s": clips_per_batch / per_batch}


def breakdown(data, codec, batch_size, threads, opts, batches, warmup, repeats) -> list[dict]:
    """Where our time goes: the sampling stage alone (read + parameters + masks), and decode with
    one crop (num_sample=1) against the full num_sample crops, per decoded video. Rows carry no
    clips/s: they are not a loader's rate."""
    sizes = {k: v for k, v in opts.items() if k != "device"}
    rows = [{"codec": codec, "loader": "stage: sampling stage only", "threads": 1,
             **sampling_stage_rate(data, batch_size, sizes, batches, warmup, repeats)}]
    for n in (1, opts["num_sample"]):
        o = {**opts, "num_sample": n}
        r = time_loader(lambda: make_loader(data, batch_size, threads, o), batches, warmup, repeats, batch_size * n)
        rows.append({"codec": codec, "loader": f"stage: decode + {n} crop(s)", "threads": threads,
                     "videos_per_s": batch_size / r["seconds_per_batch"], "seconds_per_batch": r["seconds_per_batch"]})
    return rows


def sampling_stage_rate(data, batch_size, sizes, batches, warmup, repeats) -> dict:
    """Videos/s of the sampling stage alone on one thread: the reader pipeline, every random choice and
    a checkpoint per batch (what the loader's producer thread does per batch), as wall time and as
    the process's CPU time (the cores are shared: CPU time is what the stage itself costs)."""
    loader = make_loader(data, batch_size, 1, {**sizes, "device": "cpu"})
    stage = loader.sampling_stage()
    loader.close()
    release = getattr(stage.recipe, "release", lambda arrays: None)

    def draw():  # the clip pipeline consumes each batch at once: its arrays go back to the recipe
        release(stage.draw()["arrays"])

    for _ in range(warmup):
        draw()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            draw()
        wall.append((time.perf_counter() - start) / batches)
        cpu.append((time.process_time() - start_cpu) / batches)
    return {"videos_per_s": batch_size / statistics.median(wall),
            "videos_per_cpu_s": batch_size / statistics.median(cpu)}


def make_loader(data, batch_size, threads, opts):
    import dali_pipes
    from dali_pipes.sampling import SamplingConfig

    sizes = {k: v for k, v in opts.items() if k != "device"}
    return dali_pipes.pretrain_loader(data, batch_size, SamplingConfig(**sizes), device=opts.get("device"),
                                      num_threads=threads)


def host_time(make, batches: int, warmup: int, step_ms: float | None) -> dict:
    """Training-thread milliseconds inside the loader per batch while the loader runs ahead: wall
    time, and the thread's own CPU time (which other processes on shared cores do not inflate).

    A simulated training step (sleep; it frees the cores) of `step_ms`, by default 3× the loader's
    own median time per batch measured in the warm-up (the cores are shared, so leave slack), comes
    before each timed batch.
    """
    loader = make()
    stream = forever(loader)
    _sync(next(stream))  # build and first fill
    loader_s = []
    for _ in range(max(warmup, 3)):
        start = time.perf_counter()
        _sync(next(stream))
        loader_s.append(time.perf_counter() - start)
    step_s = step_ms / 1000 if step_ms else 3 * statistics.median(loader_s)
    host_ms, host_cpu_ms = [], []
    for _ in range(batches):
        time.sleep(step_s)
        start, start_cpu = time.perf_counter(), time.thread_time()
        _sync(next(stream))
        host_ms.append(1000 * (time.perf_counter() - start))
        host_cpu_ms.append(1000 * (time.thread_time() - start_cpu))
    loader.close()
    return {"host_ms_per_batch": statistics.median(host_ms), "host_ms_max": max(host_ms),
            "host_cpu_ms_per_batch": statistics.median(host_cpu_ms),
            "loader_ms_per_batch": 1000 * statistics.median(loader_s), "step_ms": 1000 * step_s,
            "timed_batches": batches}


def _sync(batch):
    if batch["video"].is_cuda:
        torch.cuda.synchronize()


def markdown(report: dict) -> str:
    env, cfg = report["environment"], report["config"]
    decord = report["decord"] or ("not installed (reference decodes with PyAV)" if report["pyav"] else "not installed")
    lines = [f"# Loader: dali_pipes, its host side and the reference loader ({env['device']})", "",
             f"- command: `{env['command']}`", f"- git commit: {env['git_commit']}, {env['time_utc']}",
             f"- hardware: {env['cpu']} ({env['cpu_count']} cores)" + (f", {env.get('gpu')}" if env.get("gpu") else ""),
             f"- versions: python {env['python']}, torch {env['torch']}, DALI {env['dali']}, "
             f"PyAV {report['pyav'] or 'not installed'}, decord {decord}"]
    throughput = [r for r in report["results"] if r.get("stage", "throughput") == "throughput"]
    if throughput:
        lines += [f"- clips: {cfg['num_frames']}×{cfg['img_size']}² at stride {cfg['stride']}, num_sample "
                  f"{cfg['num_sample']}, batch {cfg['batch_size']} videos = {cfg['batch_size'] * cfg['num_sample']} "
                  f"clips; dataset {cfg['videos']} synthetic videos × {cfg['video_frames']} frames at "
                  f"{cfg['short_side']}p short side, GOP 16",
                  f"- timing: {cfg['warmup']} warm-up batches, then median of {cfg['repeats']} runs × "
                  f"{cfg['batches']} batches", ""]
        lines += _throughput_tables(throughput)
    if report.get("notes"):
        lines += ["", *report["notes"]]
    sampling = [r for r in report["results"] if r.get("stage") == "sampling"]
    if sampling:
        lines += ["", "## Host side: the sampling stage and the training thread", ""]
        lines += _sampling_table(report)
    return "\n".join(lines) + "\n"


def _throughput_tables(results: list[dict]) -> list[str]:
    lines = ["| codec | loader | threads / workers | clips/s | frames/s | vs reference (same codec, best) |",
             "|---|---|---|---|---|---|"]
    stages = [r for r in results if r["loader"].startswith("stage")]
    for r in results:
        if r in stages:
            continue
        best_ref = max((x["clips_per_s"] for x in results if x["codec"] == r["codec"] and x["loader"] == "reference"),
                       default=None)
        ratio = f"{r['clips_per_s'] / best_ref:.2f}×" if best_ref else "–"
        lines.append(f"| {r['codec']} | {r['loader']} | {r['threads']} | {r['clips_per_s']:.1f} | "
                     f"{r['frames_per_s']:.0f} | {ratio} |")
    if stages:
        lines += ["", "Where dali_pipes' time goes (decoded videos per second, each stage alone):", "",
                  "| codec | stage | threads | videos/s |", "|---|---|---|---|"]
        lines += [f"| {r['codec']} | {r['loader'][7:]} | {r['threads']} | {r['videos_per_s']:.1f} |" for r in stages]
    return lines


def _sampling_table(report: dict) -> list[str]:
    runs = [("this commit", report)] + ([("before", report["before"])] if report.get("before") else [])
    lines = []
    for label, run in runs:
        row = next(r for r in run["results"] if r.get("stage") == "sampling")
        c = row["config"]
        lines.append(f"- {label}: `{run['environment']['command']}` at commit {run['environment']['git_commit']}; "
                     f"batch {c['batch_size']} videos × num_sample {c['num_sample']}, {c['num_frames']}×"
                     f"{c['img_size']}² patch {c['patch_size']}, {c['videos']} videos at {c['short_side']}p short side")
    lines += ["", "| code | commit | sampling stage, videos/s (1 thread, wall) | videos per CPU second | "
              "host ms per batch (median) | host ms (max) | host CPU ms per batch (median) | loader ms per batch "
              "| simulated step ms |", "|---|---|---|---|---|---|---|---|---|"]
    for label, run in runs:
        row = next(r for r in run["results"] if r.get("stage") == "sampling")
        lines.append(f"| {label} | {run['environment']['git_commit']} | {row['videos_per_s']:,.0f} | "
                     f"{row['videos_per_cpu_s']:,.0f} | {row['host_ms_per_batch']:.2f} | {row['host_ms_max']:.2f} | "
                     f"{row['host_cpu_ms_per_batch']:.2f} | {row['loader_ms_per_batch']:.0f} | {row['step_ms']:.0f} |")
    return lines


@click.command()
@click.option("--stage", type=click.Choice(["all", "throughput", "sampling"]), default="all", show_default=True,
              help="throughput: dali_pipes against the reference loader; sampling: the engine's host side alone")
@click.option("--codecs", default=None, help="comma list; default vp9 on CPU, h264,vp9 on GPU")
@click.option("--videos", default=None, type=int, help="videos in the synthetic dataset (default 24 CPU / 512 GPU)")
@click.option("--short-side", default=None, type=int, help="stored short side (default 160 CPU / 320 GPU)")
@click.option("--video-frames", default=80, show_default=True, help="frames per synthetic video")
@click.option("--batch-size", default=None, type=int, help="videos per batch (default 2 CPU / 32 GPU)")
@click.option("--num-sample", default=4, show_default=True, help="crops (and masks) per decoded video")
@click.option("--num-frames", default=16, show_default=True, help="frames per clip")
@click.option("--img-size", default=224, show_default=True, help="output side of a crop")
@click.option("--patch-size", default=16, show_default=True, help="spatial patch of the token grid (ViT-B: 16)")
@click.option("--stride", default=4, show_default=True, help="temporal stride in source frames")
@click.option("--threads", default=None, help="comma list of DALI threads / reference workers (default 1,all)")
@click.option("--batches", default=None, type=int, help="timed batches per run (default 4 CPU / 20 GPU; "
              "sampling stage: 20)")
@click.option("--warmup", default=2, show_default=True, help="untimed batches before timing")
@click.option("--repeats", default=3, show_default=True, help="timed runs; the median is reported")
@click.option("--sampling-short-side", default=32, show_default=True,
              help="stored short side of the tiny set the sampling stage reads (decoding stays cheap)")
@click.option("--sampling-videos", default=256, show_default=True, help="videos in the sampling stage's tiny set")
@click.option("--step-ms", default=None, type=float,
              help="simulated training step for host_ms_per_batch (default 3x the loader's time per batch)")
@click.option("--before", "before_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="a loader JSON with sampling results from an earlier commit, shown beside this run's")
@click.option("--data-root", default="/tmp/vmae2-bench-loader", show_default=True,
              help="where the synthetic datasets are cached")
@click.option("--data", "data_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="a pre-made shard folder (vmae2-shard) to time instead of a synthetic set (one codec); "
                   "needed where PyAV is missing to make one")
@click.option("--json", "json_path", default=None, help="write the report here (and a .md beside it)")
def main(stage, codecs, videos, short_side, video_frames, batch_size, num_sample, num_frames, img_size, patch_size,
         stride, threads, batches, warmup, repeats, sampling_short_side, sampling_videos, step_ms, before_path,
         data_root, data_dir, json_path):
    from bench.baselines.reference_loader import decord

    gpu = torch.cuda.is_available()
    codecs = (codecs or ("h264,vp9" if gpu else "vp9")).split(",")
    videos = videos or (512 if gpu else 24)
    short_side = short_side or (320 if gpu else 160)
    batch_size = batch_size or (32 if gpu else 2)
    cores = os.cpu_count() or 1
    threads = [int(t) for t in threads.split(",")] if threads else sorted({1, cores})
    device = "cuda" if gpu else "cpu"
    sizes = dict(num_sample=num_sample, num_frames=num_frames, img_size=img_size, stride=stride,
                 patch_size=patch_size)
    results, notes = [], []
    throughput_batches = batches or (20 if gpu else 4)
    if data_dir:                                # its codec decides; no synthetic set is made
        codecs = list(json.loads((Path(data_dir) / "manifest.json").read_text())["codecs"])[:1]
    if stage in ("all", "throughput"):
        results += throughput_stage(codecs, videos, short_side, video_frames, batch_size, threads,
                                    throughput_batches, warmup, repeats, data_root, device, sizes, notes, data_dir)
    if stage in ("all", "sampling"):
        data = data_dir or make_dataset(Path(data_root), "vp9", sampling_videos, sampling_short_side, video_frames)
        n = batches or 20
        rate = sampling_stage_rate(data, batch_size, sizes, n, warmup, repeats)
        host = host_time(lambda: make_loader(data, batch_size, cores, {**sizes, "device": device}), n * repeats,
                         warmup, step_ms)
        results.append({"stage": "sampling", **rate, **host,
                        "config": dict(batch_size=batch_size, videos=sampling_videos, short_side=sampling_short_side,
                                       video_frames=video_frames, threads=cores, batches=n, repeats=repeats,
                                       **sizes)})
        click.echo(f"sampling stage {rate['videos_per_s']:,.0f} videos/s on one thread "
                   f"({rate['videos_per_cpu_s']:,.0f} per CPU second); training thread "
                   f"{host['host_ms_per_batch']:.2f} ms per batch (median, max {host['host_ms_max']:.2f})")
    env = environment()
    env["command"] = " ".join(["python -m bench.loader", *sys.argv[1:]])
    report = {"bench": "loader", "environment": env, "pyav": _version("av"),
              "decord": getattr(decord, "__version__", None),
              "config": dict(videos=videos, short_side=short_side, video_frames=video_frames, batch_size=batch_size,
                             num_sample=num_sample, num_frames=num_frames, img_size=img_size, stride=stride,
                             threads=threads, batches=throughput_batches, warmup=warmup, repeats=repeats, codecs=codecs,
                             stage=stage),
              "results": results, "notes": notes}
    if before_path:
        before = json.loads(Path(before_path).read_text())
        report["before"] = {"environment": before["environment"],
                            "results": [r for r in before["results"] if r.get("stage") == "sampling"]}
    if json_path:
        write_json_and_report(json_path, report, markdown(report))
    click.echo(markdown(report))


def _version(module: str) -> str | None:
    """A module's version, or None where it is not installed (the GPU host has no PyAV)."""
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def throughput_stage(codecs, videos, short_side, video_frames, batch_size, threads, batches, warmup, repeats,
                     data_root, device, sizes, notes, data_dir=None) -> list[dict]:
    """dali_pipes against the reference loader per codec and thread count, then the breakdown."""
    from bench.baselines.reference_loader import ReferenceLoader, decoder_name
    from dali_pipes.sampling import SamplingConfig

    gpu = device == "cuda"
    opts = {**sizes, "device": device}
    clips_per_batch = batch_size * sizes["num_sample"]
    results = []
    with_reference = decoder_name() is not None
    if not with_reference:   # dali_pipes' own numbers do not depend on it
        notes.append("- reference loader left out: it decodes with decord or PyAV, and neither is installed "
                     "(pip install decord).")
    for codec in codecs:
        if codec not in CPU_DECODABLE_CODECS and not gpu:
            notes.append(f"- {codec} skipped: DALI's CPU decoder reads only VP8, VP9 and MJPEG.")
            continue
        data = data_dir or make_dataset(Path(data_root), codec, videos, short_side, video_frames)
        for n in threads:
            loaders = [("dali_pipes", lambda: make_loader(data, batch_size, n, opts))]
            if with_reference:
                loaders.append(("reference", lambda: ReferenceLoader(data, batch_size, SamplingConfig(**sizes),
                                                                     num_workers=n, device=device)))
            for name, make in loaders:
                r = time_loader(make, batches, warmup, repeats, clips_per_batch)
                r.update(codec=codec, loader=name, threads=n,
                         frames_per_s=r["clips_per_s"] / sizes["num_sample"] * sizes["num_frames"])
                results.append(r)
                click.echo(f"{codec:6s} {name:10s} threads={n:<3d} {r['clips_per_s']:8.1f} clips/s "
                           f"{r['frames_per_s']:8.0f} frames/s")
        results += breakdown(data, codec, batch_size, max(threads), opts, batches, warmup, repeats)
    return results


if __name__ == "__main__":
    main()
