"""The synthetic shard sets the acceptance run reads, made ahead where PyAV can encode them.

The GPU machine has no PyAV, so it cannot encode H.264 / HEVC; `python -m bench.gpu make-shards DIR`
makes them on any machine with PyAV, and the run reads them with `--shards DIR`. The full sets are
sized to travel with the code tree (about 12 MiB in all).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shard_tools.files import write_bytes_atomic

SHARDS_RECORD = "shards.json"


@dataclass(frozen=True)
class ShardSpec:
    codec: str          # vmae2-shard synth codec
    videos: int         # synthetic videos
    frames: int         # stored frames per video
    width: int          # pixels
    height: int         # pixels (the short side)
    used_by: str        # which parts read the set
    coded: bool = False  # self-describing clips (coded_frames) instead of vmae2-shard synth scenes


# Self-describing decode-test clips: R = R0 + R_STEP·frame is flat over each frame, so a decoded frame
# says which stored frame it is; G and B are gentle ramps over x and y. Smooth content keeps the
# decoders' different chroma upsampling from showing up as large differences at edges.
R0, R_STEP = 20.0, 7.0
MAX_CODED_FRAMES = 33                      # R = 20 + 7·32 = 244 fits a byte
CODED_QUALITY = {"h264": 12, "hevc": 14, "vp9": 8}   # near-lossless CRFs


def coded_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """(F, H, W, 3) uint8: R codes the frame number, G = 20 + 200·x/W, B = 20 + 200·y/H."""
    if num_frames > MAX_CODED_FRAMES:
        raise ValueError(f"coded clips hold at most {MAX_CODED_FRAMES} frames, asked for {num_frames}")
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    frames[..., 1] = np.round(20 + 200 * x / width)
    frames[..., 2] = np.round(20 + 200 * y / height)
    for f in range(num_frames):
        frames[f, ..., 0] = round(R0 + R_STEP * f)
    return frames


def coded_frame_numbers(clip: np.ndarray) -> np.ndarray:
    """The stored frame number of each frame of a decoded coded clip, from its flat red channel."""
    red = np.median(clip[..., 0].reshape(len(clip), -1).astype(np.float64), axis=1)
    return np.round((red - R0) / R_STEP).astype(int)


def make_coded_set(out: Path, spec: ShardSpec, progress: bool) -> None:
    """Encode spec.videos coded clips (lengths spec.frames − i, so they differ) and pack them (--codec copy)."""
    from shard_tools.pack import pack
    from shard_tools.transcode import ENCODERS, StreamWriter

    src = out.parent / f".{out.name}-src"
    for i in range(spec.videos):
        folder = src / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        writer = StreamWriter(spec.codec, 25, spec.width, spec.height, gop=8, quality=CODED_QUALITY[spec.codec])
        for frame in coded_frames(spec.frames - i % 4, spec.height, spec.width):
            writer.write(frame)
        write_bytes_atomic(folder / f"coded{i:03d}.{ENCODERS[spec.codec].ext}", writer.close())
    pack(src, out, codec="copy", progress=progress)
    shutil.rmtree(src)


# NVDEC decodes HEVC from 144×144 up, so the decode-test clips are 192×144.
FULL_SETS = {
    "h264-320p": ShardSpec("h264", 48, 64, 426, 320, "loader, e2e (320p short side, 16x224 clips at stride 4)"),
    "h264-test": ShardSpec("h264", 8, 24, 192, 144, "GPU tests: loader resume, DLPack"),
    "h264-coded": ShardSpec("h264", 4, 24, 192, 144, "GPU tests: NVDEC vs reference decoder", coded=True),
    "hevc-coded": ShardSpec("hevc", 4, 24, 192, 144, "GPU tests: NVDEC vs reference decoder", coded=True),
    "vp9-coded": ShardSpec("vp9", 4, 24, 192, 144, "GPU tests: NVDEC vs reference decoder", coded=True),
}
# --dry-run: what DALI's CPU decoder reads, at toy size.
DRY_SETS = {
    "vp9-bench": ShardSpec("vp9", 4, 24, 80, 64, "loader, e2e"),
}


def shard_sets(dry_run: bool) -> dict[str, ShardSpec]:
    return DRY_SETS if dry_run else FULL_SETS


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def missing_sets(root, dry_run: bool) -> list[str]:
    """Names of the sets that `root` lacks (no manifest.json)."""
    return [name for name in shard_sets(dry_run) if not (Path(root) / name / "manifest.json").is_file()]


def make_shards(root, dry_run: bool = False, workers: int = 1, progress: bool = True) -> dict:
    """Make every missing set under `root` and return (and write to root/shards.json) what is there.

    Raises RuntimeError naming the fix when PyAV (the encoder) is missing.
    """
    from shard_tools.files import write_json_atomic

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    todo = missing_sets(root, dry_run)
    if todo:
        try:
            import av  # noqa: F401  (the encoder of vmae2-shard synth)
        except ImportError as err:
            raise RuntimeError(
                f"{root} lacks the shard sets {todo} and PyAV is not installed here to encode them: run "
                f"`python -m bench.gpu make-shards {root}{' --dry-run' if dry_run else ''}` on a machine with "
                f"PyAV, bring the folder along and pass --shards {root}") from err
        from shard_tools.synth import make_synthetic

        for name in todo:
            spec = shard_sets(dry_run)[name]
            if spec.coded:
                make_coded_set(root / name, spec, progress)
                continue
            make_synthetic(root / name, spec.videos, codec=spec.codec, num_frames=spec.frames, width=spec.width,
                           height=spec.height, workers=workers, progress=progress)
    record = {name: {**asdict(spec), "path": str(root / name), "bytes": folder_bytes(root / name)}
              for name, spec in shard_sets(dry_run).items()}
    record_all = {"sets": record, "total_bytes": sum(r["bytes"] for r in record.values())}
    write_json_atomic(root / SHARDS_RECORD, record_all)
    return record_all


def read_record(root) -> dict | None:
    path = Path(root) / SHARDS_RECORD
    return json.loads(path.read_text()) if path.is_file() else None
