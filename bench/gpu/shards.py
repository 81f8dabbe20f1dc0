"""The synthetic shard sets the acceptance run reads, made ahead where PyAV can encode them.

The GPU machine has no PyAV, so it cannot encode H.264 / HEVC; `python -m bench.gpu make-shards DIR`
makes them on any machine with PyAV, and the run reads them with `--shards DIR`. The full sets are
sized to travel with the code tree (about 12 MiB in all).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

SHARDS_RECORD = "shards.json"


@dataclass(frozen=True)
class ShardSpec:
    codec: str          # vmae2-shard synth codec
    videos: int         # synthetic videos
    frames: int         # stored frames per video
    width: int          # pixels
    height: int         # pixels (the short side)
    used_by: str        # which parts read the set


# NVDEC decodes HEVC from 144×144 up, so the decode-test clips are 192×144.
FULL_SETS = {
    "h264-320p": ShardSpec("h264", 48, 64, 426, 320, "loader, e2e (320p short side, 16x224 clips at stride 4)"),
    "h264-test": ShardSpec("h264", 8, 24, 192, 144, "GPU tests: NVDEC vs reference decoder, resume, DLPack"),
    "hevc-test": ShardSpec("hevc", 8, 24, 192, 144, "GPU tests: NVDEC vs reference decoder"),
    "vp9-test": ShardSpec("vp9", 8, 24, 192, 144, "GPU tests: NVDEC vs reference decoder"),
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
