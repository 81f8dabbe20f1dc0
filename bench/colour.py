"""YUV → RGB: DALI's video decoder against FFmpeg's swscale (PyAV `rgb24`), on the same VP9 files.

    python -m bench.colour --json bench/reports/cpu/colour.json [--videos 4] [--width 320 --height 240]

Renders synthetic scenes (shard_tools.synth: lit from above, textured shapes, a moving camera), encodes
each to VP9 (the packer's StreamWriter, yuv420p) and decodes it twice: with DALI's CPU decoder
(`fn.decoders.video`, what the loaders and `vmae2-train extract` use) and with PyAV's
`to_ndarray(format="rgb24")` (FFmpeg's swscale, as the published extractor's decoders convert). Both
are also compared with an exact BT.601 limited-range conversion, in float, of the very YUV planes
FFmpeg decoded (chroma upsampled bilinearly, centre-aligned, and by nearest neighbour). Reported in
grey levels (0-255): the signed mean, the mean and the largest absolute difference; and how far the
two decodes move a ViT-B's pooled features (`VideoClassifier.forward_features` with random weights
from a fixed seed, on 16-frame clips squashed to 224² as `--compat official` does):
‖f(DALI) − f(PyAV)‖ / ‖f(PyAV)‖ per clip.
Writes JSON (--json) and the markdown beside it.
"""
from __future__ import annotations

import io
import statistics
import sys

import click
import numpy as np
import torch
import torch.nn.functional as F

from bench.env import environment, write_json_and_report

FEATURE_PRESET, FEATURE_SEED, FEATURE_SIZE, WINDOW = "vit_b", 0, 224, 16


def encode_clips(videos: int, frames: int, width: int, height: int, seed: int) -> list[bytes]:
    """VP9 streams of synthetic scenes, encoded as the packer encodes (shard_tools.synth's quality)."""
    from shard_tools.synth import QUALITY, render_clip
    from shard_tools.transcode import StreamWriter

    streams = []
    for index in range(videos):
        _, clip = render_clip(seed, index, num_frames=frames, width=width, height=height)
        writer = StreamWriter("vp9", 25, width, height, gop=16, quality=QUALITY["vp9"])
        for frame in clip:
            writer.write(frame)
        streams.append(writer.close())
    return streams


def dali_frames(streams: list[bytes]) -> list[np.ndarray]:
    """Every frame of each stream as DALI's CPU decoder gives it: (F, H, W, 3) uint8."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(streams), num_threads=1, device_id=None)
    def decode():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        return fn.decoders.video(encoded, device="cpu")

    pipe = decode()
    pipe.build()
    pipe.feed_input("encoded", [np.frombuffer(s, np.uint8) for s in streams])
    (out,) = pipe.run()
    return [np.array(out[i]) for i in range(len(streams))]


def pyav_frames(stream: bytes) -> dict[str, np.ndarray]:
    """PyAV's rgb24 frames (swscale) and exact BT.601 conversions of the same decoded YUV planes, with
    bilinear and with nearest chroma upsampling: {"pyav", "exact", "exact_nearest"} → (F, H, W, 3) uint8."""
    import av

    frames = {"pyav": [], "exact": [], "exact_nearest": []}
    with av.open(io.BytesIO(stream)) as container:
        for frame in container.decode(video=0):
            if frame.format.name != "yuv420p":
                raise ValueError(f"expected yuv420p frames from the VP9 encoder, got {frame.format.name}")
            planes = frame.to_ndarray(format="yuv420p")
            frames["pyav"].append(frame.to_ndarray(format="rgb24"))
            frames["exact"].append(bt601_limited_to_rgb(planes, frame.height, frame.width, "bilinear"))
            frames["exact_nearest"].append(bt601_limited_to_rgb(planes, frame.height, frame.width, "nearest"))
    return {name: np.stack(stack) for name, stack in frames.items()}


def bt601_limited_to_rgb(planes: np.ndarray, height: int, width: int, chroma_mode: str) -> np.ndarray:
    """yuv420p planes stacked as PyAV returns them ((H·3/2, W) uint8) → RGB by the BT.601 limited-range
    equations in float, chroma upsampled "bilinear" (centre-aligned) or "nearest", rounded: (H, W, 3) uint8."""
    luma = torch.from_numpy(planes[:height].astype(np.float64))
    chroma = torch.from_numpy(planes[height:].astype(np.float64)).reshape(2, height // 2, width // 2)
    align = {"align_corners": False} if chroma_mode == "bilinear" else {}
    u, v = F.interpolate(chroma[None], size=(height, width), mode=chroma_mode, **align)[0]
    y, u, v = (luma - 16) * 255 / 219, (u - 128) * 255 / 224, (v - 128) * 255 / 224
    rgb = torch.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], dim=-1)
    return rgb.round().clamp(0, 255).to(torch.uint8).numpy()


def level_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """a − b in grey levels over every pixel and channel."""
    diff = a.astype(np.int16) - b.astype(np.int16)
    return {"signed_mean": float(diff.mean()), "mean_abs": float(np.abs(diff).mean()),
            "max_abs": int(np.abs(diff).max()), "share_differing": float((diff != 0).mean()),
            "signed_mean_rgb": [float(diff[..., c].mean()) for c in range(3)]}


@torch.no_grad()
def pooled_features(model, frames: np.ndarray) -> torch.Tensor:
    """The first 16 frames squashed to 224² (bilinear, no antialias) and fed as pixels / 255, no mean/std:
    the published extractor's input (`vmae2-train extract --compat official`). (D,) float32."""
    from vmae2.extract import window_features

    clip = torch.from_numpy(frames[:WINDOW]).permute(0, 3, 1, 2).float() / 255       # (T, 3, H, W)
    resized = F.interpolate(clip, size=(FEATURE_SIZE, FEATURE_SIZE), mode="bilinear", align_corners=False)
    return window_features(model, (resized.permute(0, 2, 3, 1) * 255)[None], compat="official")[0]


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def markdown(report: dict) -> str:
    env, cfg, rows = report["env"], report["config"], report["rows"]
    lines = ["# YUV → RGB: DALI's decoder against FFmpeg's swscale (PyAV rgb24)", "",
             f"- command: `{env['command']}`",
             f"- git commit: {env['git_commit']}{' (dirty tree)' if env.get('git_dirty') else ''}, {env['time_utc']}",
             f"- hardware: {env['cpu']} ({env['cpu_count']} cores); torch {env['torch']}, DALI {env['dali']}, "
             f"PyAV {report['pyav']}",
             f"- data: {cfg['videos']} synthetic scenes (shard_tools.synth, seed {cfg['seed']}), {cfg['frames']} "
             f"frames of {cfg['width']}×{cfg['height']}, VP9 yuv420p (limited range), decoded whole by each",
             f"- features: {cfg['feature_model']}", "",
             "Grey levels (0-255) over every pixel and channel of every frame; \"exact\" is the BT.601 "
             "limited-range conversion, in float with bilinear chroma (or nearest, where said), of the YUV planes "
             "FFmpeg decoded.", "",
             "| comparison | signed mean (levels) | R, G, B signed means | mean abs | max abs | values differing |",
             "|---|---|---|---|---|---|"]
    for name, stats in report["levels"].items():
        lines.append(f"| {name} | {stats['signed_mean']:+.3f} | "
                     + ", ".join(f"{m:+.2f}" for m in stats["signed_mean_rgb"])
                     + f" | {stats['mean_abs']:.3f} | {stats['max_abs']} | {100 * stats['share_differing']:.1f} % |")
    lines += ["", "Pooled features of the first 16 frames, per clip:", "",
              "| clip | DALI − PyAV: mean / max abs (levels) | ‖f(DALI) − f(PyAV)‖ / ‖f(PyAV)‖ |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['clip']} | {r['dali_minus_pyav']['mean_abs']:.3f} / {r['dali_minus_pyav']['max_abs']} | "
                     f"{100 * r['feature_relative_l2']:.3f} % |")
    feature = report["feature_relative_l2"]
    lines += ["", f"Features move by {100 * feature['mean']:.3f} % on average (relative L2; largest "
                  f"{100 * feature['max']:.3f} %)."]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--videos", default=4, show_default=True, help="synthetic clips")
@click.option("--frames", default=16, show_default=True, help="frames per clip (the features read the first 16)")
@click.option("--width", default=320, show_default=True, help="frame width in pixels")
@click.option("--height", default=240, show_default=True, help="frame height in pixels")
@click.option("--seed", default=0, show_default=True, help="seed of the synthetic scenes")
@click.option("--json", "json_path", default=None, help="write the report here (and a .md beside it)")
def main(videos, frames, width, height, seed, json_path):
    import av

    from vmae2 import build_classifier

    if frames < WINDOW:
        raise click.BadParameter(f"the features read {WINDOW} frames; got --frames {frames}", param_hint="--frames")
    streams = encode_clips(videos, frames, width, height, seed)
    decoded_dali = dali_frames(streams)
    torch.manual_seed(FEATURE_SEED)
    model = build_classifier(FEATURE_PRESET, num_classes=400, drop_path=0.0).eval()
    rows, every = [], {}
    for index, (stream, dali) in enumerate(zip(streams, decoded_dali)):
        decoded = pyav_frames(stream)
        pyav = decoded["pyav"]
        if dali.shape != pyav.shape:
            raise RuntimeError(f"clip {index}: DALI decoded {dali.shape}, PyAV {pyav.shape}")
        for name, (a, b) in {"DALI − PyAV": (dali, pyav), "DALI − exact": (dali, decoded["exact"]),
                             "PyAV − exact": (pyav, decoded["exact"]),
                             "PyAV − exact with nearest chroma": (pyav, decoded["exact_nearest"])}.items():
            every.setdefault(name, []).append((a, b))
        row = {"clip": index, "bytes": len(stream), "dali_minus_pyav": level_stats(dali, pyav),
               "feature_relative_l2": relative_l2(pooled_features(model, dali), pooled_features(model, pyav))}
        rows.append(row)
        click.echo(f"clip {index}: DALI − PyAV {row['dali_minus_pyav']['signed_mean']:+.3f} levels "
                   f"(mean abs {row['dali_minus_pyav']['mean_abs']:.3f}, max {row['dali_minus_pyav']['max_abs']}); "
                   f"features {100 * row['feature_relative_l2']:.3f} %")
    levels = {name: level_stats(np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]))
              for name, pairs in every.items()}
    feature = [r["feature_relative_l2"] for r in rows]
    env = environment()
    env["command"] = " ".join(["python -m bench.colour", *sys.argv[1:]])
    report = {"bench": "colour", "env": env, "pyav": av.__version__,
              "config": {"videos": videos, "frames": frames, "width": width, "height": height, "seed": seed,
                         "feature_model": f"{FEATURE_PRESET} VideoClassifier, random init (torch seed "
                                          f"{FEATURE_SEED}), forward_features on {WINDOW}×{FEATURE_SIZE}² "
                                          f"clips, pixels / 255 without mean/std (--compat official)"},
              "levels": levels, "feature_relative_l2": {"mean": statistics.mean(feature), "max": max(feature)},
              "rows": rows}
    text = markdown(report)
    if json_path:
        write_json_and_report(json_path, report, text)
    click.echo(text)


if __name__ == "__main__":
    main()
