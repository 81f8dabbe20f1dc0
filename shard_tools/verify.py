"""`verify(out)`: check a packed dataset against FORMAT.md; return the problems found.

Per shard: the tar exists, has the manifest's size and sha256, reads as a tar whose members pair
up as (video, json) per key; the .idx equals the index rebuilt from the tar (a stale or missing
index is a problem); the sample count matches the manifest. Across shards: keys unique, totals
and labels consistent. Every video's bytes against the CRC-32 its json records (`video_crc32`).
Then one clip per shard (every clip with full=True) is decoded with PyAV and its frame count and
size compared with its json.

`check_digests(out)` is the quick part a trainer runs before reading (`vmae2-train ... --verify-data`):
each tar's size and sha256 against the manifest, nothing else.
"""

import io
import tarfile
from collections import Counter
from pathlib import Path

import av

from shard_tools.format import FormatError, checksum_mismatch, read_manifest
from shard_tools.index import index_for_tar
from shard_tools.samples import iter_samples
from shard_tools.shard import file_sha256

REQUIRED_META = ("label", "label_name", "source", "fps", "num_frames", "width", "height",
                 "duration", "codec", "keyframe_interval", "frame_stride", "clip_start")


def decode_count(video_bytes):
    """(frames decoded, width, height) of the first video stream of an encoded file in memory."""
    with av.open(io.BytesIO(video_bytes)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.codec_context.width, stream.codec_context.height


def verify(out, full=False):
    """Dict with "problems" (list of str; empty when OK), "shards", "samples", "decoded"."""
    out = Path(out)
    report = {"problems": [], "shards": 0, "samples": 0, "decoded": 0}
    problems = report["problems"]
    try:
        manifest = read_manifest(out)
    except (FormatError, ValueError) as err:
        problems.append(str(err))
        return report
    keys, total_bytes = Counter(), 0
    for entry in manifest["shards"]:
        tar_path, idx_path = out / entry["tar"], out / entry["index"]
        report["shards"] += 1
        if not tar_path.is_file():
            problems.append(f"{tar_path}: missing shard (listed in the manifest); repack OUT")
            continue
        total_bytes += tar_path.stat().st_size
        tar_problems, index_text = _check_tar(tar_path, idx_path, entry)
        problems.extend(tar_problems)
        if index_text is None:
            continue
        try:
            for n, (key, _, video, meta) in enumerate(
                    iter_samples(tar_path, index_text=index_text)):
                keys[key] += 1
                report["samples"] += 1
                problems.extend(_check_meta(tar_path, key, meta, manifest))
                mismatch = checksum_mismatch(video, meta)
                if mismatch:
                    problems.append(f"{tar_path}: {key} was changed after packing ({mismatch}); repack OUT")
                if full or n == 0:
                    problems.extend(_check_decode(tar_path, key, video, meta))
                    report["decoded"] += 1
        except (ValueError, OSError) as err:
            problems.append(f"{tar_path}: {err}")
    problems.extend(f"key {k!r} appears {c} times across shards" for k, c in keys.items() if c > 1)
    if report["samples"] != manifest["num_samples"] and not problems:
        problems.append(f"manifest says {manifest['num_samples']} samples, shards hold "
                        f"{report['samples']}")
    if total_bytes != manifest["total_bytes"] and not problems:
        problems.append(f"manifest says {manifest['total_bytes']} bytes, shards hold {total_bytes}")
    return report


def check_digests(out, rank=0, world_size=1):
    """Problems of the shards' sizes and sha256 against the manifest (empty when all match).

    rank, world_size: check only shards rank, rank + world_size, ... (processes of one job share the work).
    """
    out = Path(out)
    manifest = read_manifest(out)
    problems = []
    for entry in manifest["shards"][rank::world_size]:
        tar_path = out / entry["tar"]
        if not tar_path.is_file():
            problems.append(f"{tar_path}: missing shard (listed in the manifest); repack OUT")
        else:
            problems.extend(_check_digest(tar_path, entry))
    return problems


def _check_digest(tar_path, entry):
    size = tar_path.stat().st_size
    if size != entry["bytes"]:
        return [f"{tar_path}: {size} bytes, manifest says {entry['bytes']} (truncated or replaced); repack OUT"]
    if entry.get("sha256") and file_sha256(tar_path) != entry["sha256"]:
        return [f"{tar_path}: sha256 differs from the manifest (corrupted); repack OUT"]
    return []


def _check_tar(tar_path, idx_path, entry):
    """(problems, the index rebuilt from the tar or None when the tar cannot be read)."""
    problems = _check_digest(tar_path, entry)
    try:
        expected_index = index_for_tar(tar_path)
    except (tarfile.TarError, OSError, ValueError) as err:
        return problems + [f"{tar_path}: not a readable tar ({err}); repack OUT"], None
    if not idx_path.is_file():
        problems.append(f"{idx_path}: missing index; rebuild it with `wds2idx {tar_path}` or "
                        f"repack")
    elif idx_path.read_text(encoding="utf-8") != expected_index:
        problems.append(f"{idx_path}: stale index, does not match {tar_path.name}; rebuild it "
                        f"with `wds2idx {tar_path}` or repack")
    count = int(expected_index.split("\n", 1)[0].split()[1])
    if count != entry["num_samples"]:
        problems.append(f"{tar_path}: holds {count} samples, manifest says {entry['num_samples']}")
    return problems, expected_index


def _check_meta(tar_path, key, meta, manifest):
    missing = [f for f in REQUIRED_META if f not in meta]
    if missing:
        return [f"{tar_path}: {key}.json lacks {', '.join(missing)}"]
    label = meta["label"]
    if label is not None and not 0 <= label < len(manifest["labels"]):
        return [f"{tar_path}: {key}.json label {label} outside the manifest's "
                f"{len(manifest['labels'])} labels"]
    return []


def _check_decode(tar_path, key, video, meta):
    try:
        count, width, height = decode_count(video)
    except (av.error.FFmpegError, IndexError) as err:
        return [f"{tar_path}: {key} does not decode ({err})"]
    if (count, width, height) != (meta["num_frames"], meta["width"], meta["height"]):
        return [f"{tar_path}: {key} decodes to {count} frames {width}x{height}, its json says "
                f"{meta['num_frames']} frames {meta['width']}x{meta['height']}"]
    return []
