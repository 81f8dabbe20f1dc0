"""Feature extraction throughput: `vmae2-train extract` against the published extractor's procedure.

    python -m bench.extract                                   # CPU defaults: tiny at 112 px, 4 × 128-frame videos
    python -m bench.extract --device cuda --preset vit_s --size 224 --videos 8 --frames 512 \
        --json bench/reports/gpu/extract.json                 # a GPU machine (NVDEC decode for vmae2)

Both read the same videos (synthetic VP9 shards from shard_tools.synth) with the same model, window
rule (16 frames every --step), preprocessing (--compat official: squash, bilinear, pixels / 255) and
weights (random: the rate does not depend on their values).

- vmae2: dali_pipes.windows streams each video once through DALI in chunks and cuts the windows;
  `--batch` windows of any videos share one forward. Timed by extract's own summary (from the first
  video to the last file written; model loading and dataset opening excluded, as for the reference).
- published procedure (the reference extractor, rewritten here with PyAV since decord is absent
  where it is not installed): per video a reader opened once; per window a seek to the key frame
  before its start and a decode forward to its 16 frames (what decord's get_batch does), torch
  interpolate to size × size, and one forward of one window.

Each is warmed up on one video, then timed `--repeats` times; the report gives the median windows/s
and the ratio within the run. A sanity row checks that both give the same features on one video.
"""
from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from bench.env import environment, write_json_and_report


def make_dataset(root: Path, videos: int, frames: int, short_side: int) -> Path:
    """Synthetic VP9 shards (4:3), cached by parameters."""
    from shard_tools.synth import make_synthetic

    width = (short_side * 4 // 3) // 2 * 2
    out = root / f"vp9-{videos}x{frames}-{width}x{short_side}"
    if not (out / "manifest.json").is_file():
        make_synthetic(out, videos, codec="vp9", num_frames=frames, width=width, height=short_side, progress=False)
    return out


def pyav_window(container, stream, start: int, window: int, fps: float) -> np.ndarray:
    """Frames start..start+window−1 (T, H, W, 3): seek to the key frame before, decode forward."""
    container.seek(int(start / fps / stream.time_base), stream=stream, backward=True, any_frame=False)
    frames = []
    for frame in container.decode(stream):
        if round(float(frame.pts * stream.time_base) * fps) >= start:
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == window:
                break
    return np.stack(frames)


@torch.no_grad()
def published_procedure(model, videos, *, window: int, step: int, size: int,
                        device: str = "cpu") -> tuple[int, dict]:
    """The reference extractor's loop: one window at a time. Returns (windows, {key: rows})."""
    import av

    from dali_pipes.windows import window_starts
    from vmae2.extract import window_features

    count, rows = 0, {}
    for video in videos:
        with av.open(io.BytesIO(video.read())) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate)
            feats = []
            for start in window_starts(int(video.meta["num_frames"]), window, step):
                frames = torch.from_numpy(pyav_window(container, stream, start, window, fps))
                pixels = frames.permute(3, 0, 1, 2).float() / 255                        # (3, T, H, W)
                pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
                x = pixels.permute(1, 2, 3, 0)[None].to(device) * 255                  # (1, T, S, S, 3)
                feats.append(window_features(model, x, compat="official")[0].cpu().numpy())
                count += 1
            rows[video.key] = np.stack(feats) if feats else None
    return count, rows


def run_vmae2(weights: Path, data: Path, *, preset, size, step, batch, device) -> tuple[float, Path]:
    from vmae2.extract import extract

    out = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    summary = extract(weights, data, out, preset=preset, size=size, step=step, compat="official", batch=batch,
                      device=device, progress=False)
    return summary["windows_per_s"], out


def markdown(report: dict) -> str:
    env, cfg = report["environment"], report["config"]
    where = f"GPU: {env.get('gpu')}" if cfg.get("device") == "cuda" else "CPU"
    lines = [
        f"# Feature extraction throughput ({where})", "",
        f"Command: `{env['command']}`  ",
        f"Commit: `{env['git_commit']}`{' (dirty tree)' if env.get('git_dirty') else ''}; "
        f"CPU: {env['cpu']} ({env.get('cpu_count', '?')} logical cores); torch {env['torch']}, DALI {env['dali']}, "
        f"PyAV {report['pyav']}, torch threads {report['torch_threads']}.", "",
        f"Model `{cfg['preset']}` at {cfg['size']} px (random weights), windows of 16 frames every {cfg['step']} "
        f"frames, `--compat official`; {cfg['videos']} synthetic VP9 videos of {cfg['frames']} frames at "
        f"{cfg['width']}×{cfg['short_side']} ({report['windows']} windows). Median of {cfg['repeats']} timed runs "
        f"after one warm-up video.", "",
        "| extractor | windows/s (median) | runs | vs published |", "|---|---|---|---|",
    ]
    base = report["results"]["published"]["median"]
    for name, row in report["results"].items():
        lines.append(f"| {row['label']} | {row['median']:.2f} | {', '.join(f'{r:.2f}' for r in row['runs'])} | "
                     f"{row['median'] / base:.2f}× |")
    check = report["agreement"]
    lines += ["", f"Same features: on video `{check['key']}` the two agree to cosine ≥ {check['min_cosine']:.6f} "
              f"(max abs difference {check['max_abs_diff']:.4f}; the decoders' YUV→RGB differ by about a level)."]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--preset", default="tiny", show_default=True, help="model size")
@click.option("--size", type=int, default=112, show_default=True, help="input side in pixels")
@click.option("--step", type=int, default=4, show_default=True, help="frames between window starts")
@click.option("--batch", type=int, default=16, show_default=True, help="windows per forward for vmae2")
@click.option("--videos", type=int, default=4, show_default=True, help="synthetic videos")
@click.option("--frames", type=int, default=128, show_default=True, help="frames per video")
@click.option("--short-side", type=int, default=128, show_default=True, help="stored video height (4:3)")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="where both extractors run the model (and vmae2 decodes: NVDEC on cuda)")
@click.option("--repeats", type=int, default=3, show_default=True, help="timed runs per extractor")
@click.option("--data-root", default=str(Path(tempfile.gettempdir()) / "vmae2-bench-extract"), show_default=True,
              help="where the synthetic shards are cached")
@click.option("--json", "json_path", default="bench/reports/cpu/extract.json", show_default=True,
              help="JSON report; the markdown goes beside it (.md)")
def main(preset, size, step, batch, videos, frames, short_side, device, repeats, data_root, json_path):
    """Windows/s of vmae2-train extract against the published one-window-at-a-time procedure."""
    import shutil

    import av

    from vmae2.config import model_config
    from vmae2.extract import list_videos, load_model, open_dataset
    from vmae2.model import VideoClassifier

    env = environment()
    data = make_dataset(Path(data_root), videos, frames, short_side)
    weights = Path(data_root) / f"{preset}-random.pt"
    torch.manual_seed(0)
    torch.save(VideoClassifier(model_config(preset), 10, drop_path=0.0).state_dict(), weights)
    model, _ = load_model(weights, preset, None, size)
    model.to(device)
    all_videos = list_videos(open_dataset(data))

    # Warm-up: one video each (allocator, DALI pipeline build, PyAV codec init).
    published_procedure(model, all_videos[:1], window=16, step=step, size=size, device=device)
    results = {"vmae2": {"label": f"vmae2 extract (DALI stream, batch {batch})", "runs": []},
               "vmae2_batch1": {"label": "vmae2 extract (DALI stream, batch 1)", "runs": []},
               "published": {"label": "published procedure (PyAV seek per window, batch 1)", "runs": []}}
    windows, outs = 0, []
    for _ in range(repeats):
        for name, b in (("vmae2", batch), ("vmae2_batch1", 1)):
            rate, out = run_vmae2(weights, data, preset=preset, size=size, step=step, batch=b, device=device)
            results[name]["runs"].append(rate)
            outs.append(out)
        start = time.perf_counter()
        windows, reference_rows = published_procedure(model, all_videos, window=16, step=step, size=size,
                                                       device=device)
        results["published"]["runs"].append(windows / (time.perf_counter() - start))
    for row in results.values():
        row["median"] = statistics.median(row["runs"])

    key = next(k for k, v in reference_rows.items() if v is not None)
    ours = torch.from_numpy(np.load(outs[0] / f"{key}.npy"))
    theirs = torch.from_numpy(reference_rows[key])
    agreement = {"key": key, "min_cosine": float(F.cosine_similarity(ours, theirs, dim=1).min()),
                 "max_abs_diff": float((ours - theirs).abs().max())}
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)

    width = (short_side * 4 // 3) // 2 * 2
    report = {"environment": env, "pyav": av.__version__, "torch_threads": torch.get_num_threads(),
              "config": {"preset": preset, "size": size, "step": step, "batch": batch, "videos": videos,
                         "frames": frames, "short_side": short_side, "width": width, "repeats": repeats,
                         "device": device},
              "windows": windows, "results": results, "agreement": agreement,
              "ratio_vmae2_vs_published": results["vmae2"]["median"] / results["published"]["median"]}
    write_json_and_report(json_path, report, markdown(report))
    click.echo(markdown(report))


if __name__ == "__main__":
    main()
