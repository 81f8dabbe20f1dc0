"""Open a vmae2-shard dataset for the pipeline: find its manifest, check its shards and indices.

DALI's reader fails late and vaguely on a missing tar or an index that does not match it; this
module fails early with the file and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shard_tools.format import MANIFEST_NAME, VIDEO_EXTS, read_manifest, stored_stride
from shard_tools.index import parse_index


class DatasetError(Exception):
    """A shard folder that the pipeline cannot read as given."""


@dataclass(frozen=True)
class ShardSet:
    """What the reader needs to know about a packed dataset."""

    root: Path
    tar_paths: list[str]
    index_paths: list[str]
    num_samples: int
    frame_stride: int       # K: the stored stream holds every K-th source frame
    codecs: dict
    video_exts: tuple[str, ...]

    def stored_stride(self, train_stride: int) -> int:
        """Decoder stride in the stored stream for a training stride in source frames."""
        return stored_stride(train_stride, self.frame_stride)


def _index_samples(idx_path: Path) -> list[list[tuple[str, int, int, str]]]:
    """[[(ext, data offset, size, member name), ...] per sample] of a wds2idx v1.2 index file."""
    try:
        return parse_index(idx_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{idx_path}: not a DALI webdataset index (v1.2): {err}; rebuild it with "
                           f"`wds2idx {idx_path.with_suffix('.tar')} {idx_path}` or repack") from err


def _check_index_matches_tar(tar: Path, idx: Path, samples) -> None:
    """The first and last sample's members sit in the tar where the index says (cheap: 2 seeks each)."""
    size = tar.stat().st_size
    with open(tar, "rb") as f:
        for members in (samples[0], samples[-1]):
            for ext, offset, length, name in members:
                f.seek(max(offset - 512, 0))
                header_name = f.read(100).split(b"\0", 1)[0].decode("utf-8", "replace")
                if offset < 512 or offset + length > size or header_name != name:
                    raise DatasetError(f"{idx}: index says {name} is at byte {offset} of {tar.name}, but the tar "
                                       f"holds {header_name or 'nothing'} there; the index does not belong to this "
                                       f"shard: rebuild it with `wds2idx {tar} {idx}` or repack")


def open_shards(data) -> ShardSet:
    """Read and check the dataset at `data` (its folder or its manifest.json)."""
    path = Path(data)
    root = path.parent if path.name == MANIFEST_NAME or path.suffix == ".json" else path
    if not (root / MANIFEST_NAME).is_file():
        raise DatasetError(f"{root / MANIFEST_NAME}: no manifest; pass a folder written by `vmae2-shard pack` "
                           f"(or its manifest.json)")
    try:
        manifest = read_manifest(root)
    except Exception as err:  # the format module's own errors already name the file and the fix
        raise DatasetError(str(err)) from err
    tars, idxs, total = [], [], 0
    for shard in manifest["shards"]:
        tar, idx = root / shard["tar"], root / shard["index"]
        for f, what in ((tar, "shard"), (idx, "index")):
            if not f.is_file():
                raise DatasetError(f"{f}: {what} listed in {root / MANIFEST_NAME} is missing; restore it "
                                   f"or repack the dataset")
        if "bytes" in shard and tar.stat().st_size != shard["bytes"]:
            raise DatasetError(f"{tar}: {tar.stat().st_size} bytes but the manifest says {shard['bytes']}; "
                               f"the shard was changed or truncated after packing; repack it")
        samples = _index_samples(idx)
        exts = [[m[0] for m in members] for members in samples]
        count = len(samples)
        if count != shard["num_samples"]:
            raise DatasetError(f"{idx}: index lists {count} samples but the manifest says "
                               f"{shard['num_samples']} for {shard['tar']}; the index does not belong to this "
                               f"shard: rebuild it with `wds2idx {tar} {idx}` or repack")
        for n, sample_exts in enumerate(exts):
            if "json" not in sample_exts or not any(e in VIDEO_EXTS for e in sample_exts):
                raise DatasetError(f"{idx}: sample {n} has members {sample_exts}, expected one of "
                                   f"{list(VIDEO_EXTS)} and json (FORMAT.md); repack the dataset")
        if samples:
            _check_index_matches_tar(tar, idx, samples)
        tars.append(str(tar))
        idxs.append(str(idx))
        total += count
    if total != manifest["num_samples"]:
        raise DatasetError(f"{root / MANIFEST_NAME}: shards hold {total} samples but num_samples is "
                           f"{manifest['num_samples']}; the manifest is inconsistent: repack")
    if total == 0:
        raise DatasetError(f"{root}: the dataset holds no samples")
    return ShardSet(root=root, tar_paths=tars, index_paths=idxs, num_samples=total,
                    frame_stride=int(manifest.get("frame_stride", 1)), codecs=dict(manifest.get("codecs", {})),
                    video_exts=tuple(manifest.get("video_exts") or VIDEO_EXTS))
