"""Per-video stage of packing: probe one entry, then copy or transcode it into staged samples
(a frame folder: read its frames and encode them).

Runs in worker processes. Each entry's outcome (its samples, or why it was skipped) is saved as
OUT/.staging/items/{key}.json, after any transcoded bytes it points to, so an interrupted run
finds finished entries and does not process them again. Copied videos are not staged: their
samples point at the source file, whose size and mtime the saved outcome records (for a frame
folder, the folder's own size and mtime, which change when frames are added or removed).
"""

import json
import os
from pathlib import Path

from shard_tools.files import write_bytes_atomic, write_json_atomic
from shard_tools.format import CONTAINER_EXTS, ENGINE_CODECS, VIDEO_CHECKSUM_KEY, file_checksum, video_checksum
from shard_tools.frames import frame_paths
from shard_tools.probe import SkipInput, probe
from shard_tools.transcode import transcode, transcode_frames

# Pixel formats the engine's H.264/HEVC decoders accept (spec §9: no 4:2:2/4:4:4, no 10-bit).
ENGINE_PIX_FMTS = ("yuv420p", "yuvj420p", "nv12")


def _source_stamp(path):
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cached_outcome(item_path, source_path):
    """The saved outcome of an entry if it is still valid (same source file, staged bytes whole)."""
    try:
        outcome = json.loads(Path(item_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        stamp = _source_stamp(source_path)
    except OSError:
        stamp = None
    if outcome.get("source_stamp") != stamp:
        return None
    for sample in outcome.get("samples", []):
        if not os.path.isfile(sample["data"]) or os.path.getsize(sample["data"]) != sample["size"]:
            return None
    return outcome


def _meta(entry, info, frame_stride, clip_start, checksum):
    return {"label": entry["label"], "label_name": entry["label_name"], "source": entry["source"],
            VIDEO_CHECKSUM_KEY: checksum, "fps": info.fps, "num_frames": info.num_frames, "width": info.width,
            "height": info.height, "duration": info.duration, "codec": info.codec,
            "keyframe_interval": info.keyframe_interval, "frame_stride": frame_stride,
            "clip_start": clip_start}


def copy_check(info, path):
    """Raise SkipInput('unsupported-codec') when the engine could not decode the stream as is."""
    fix = "repack with --codec vp9 (decoded on CPU and GPU) or --codec h264 (GPU only)"
    if info.codec not in ENGINE_CODECS:
        raise SkipInput("unsupported-codec", f"{path}: codec {info.codec!r} is not decodable by "
                                             f"the data engine; {fix}")
    if info.codec in ("h264", "hevc") and info.pix_fmt not in ENGINE_PIX_FMTS:
        raise SkipInput("unsupported-codec", f"{path}: {info.codec} in {info.pix_fmt} (NVDEC "
                                             f"takes 8-bit 4:2:0 only); {fix}")
    if not any(name in CONTAINER_EXTS for name in info.container.split(",")):
        raise SkipInput("unsupported-codec", f"{path}: container {info.container!r} cannot be "
                                             f"stored as is; {fix}")


def process_entry(entry, options, staging_dir):
    """Outcome of one entry: {"source", "samples": [...]} or {"source", "skip": {...}}.

    `entry` is a dict with source, path, key, label, label_name, and for a frame folder
    frames=True with start and total (None when the list gives none); `options` holds codec,
    short_side, gop, quality, frame_stride, max_seconds, and for frame folders fps,
    frame_template, first_frame.
    """
    item_path = Path(staging_dir) / "items" / f"{entry['key']}.json"
    cached = cached_outcome(item_path, entry["path"])
    if cached is not None:
        return cached
    try:
        stamp = _source_stamp(entry["path"])
    except OSError:
        stamp = None
    outcome = {"source": entry["source"], "source_stamp": stamp,
               "source_bytes": stamp["size"] if stamp else 0}
    try:
        if entry.get("frames"):
            outcome["samples"], outcome["source_bytes"] = _frame_samples(
                entry, options, Path(staging_dir) / "data")
        else:
            info = probe(entry["path"])
            outcome["samples"] = _samples(entry, info, options, Path(staging_dir) / "data")
    except SkipInput as skip:
        outcome["skip"] = {"source": entry["source"], "reason": skip.reason, "detail": skip.detail}
    write_json_atomic(item_path, outcome)
    return outcome


def _samples(entry, info, options, data_dir):
    codec = options["codec"]
    if codec == "copy":
        copy_check(info, entry["path"])
        return [{"key": entry["key"], "ext": info.ext, "data": os.path.abspath(entry["path"]),
                 "size": os.path.getsize(entry["path"]),
                 "meta": _meta(entry, info, 1, 0.0, file_checksum(entry["path"]))}]
    clips = transcode(entry["path"], codec, options["short_side"], options["gop"],
                      options["frame_stride"], options["max_seconds"], options["quality"])
    return _stage_clips(entry, clips, options, data_dir)


def _frame_samples(entry, options, data_dir):
    """(samples, bytes of the frame files) of a frame folder encoded at options["fps"]."""
    paths = frame_paths(entry["path"], options["frame_template"], options["first_frame"],
                        entry.get("start"), entry.get("total"))
    clips = transcode_frames(paths, options["fps"], options["codec"], options["short_side"],
                             options["gop"], options["frame_stride"], options["max_seconds"],
                             options["quality"])
    first = options["first_frame"] if entry.get("start") is None else entry["start"]
    extra = {"source_frames": len(paths), "first_frame": first}
    return (_stage_clips(entry, clips, options, data_dir, extra),
            sum(os.path.getsize(p) for p in paths))


def _stage_clips(entry, clips, options, data_dir, extra=None):
    samples = []
    for n, clip in enumerate(clips):
        key = f"{entry['key']}_c{n}" if options["max_seconds"] else entry["key"]
        data_path = data_dir / f"{key}.{clip.ext}"
        write_bytes_atomic(data_path, clip.data)
        clip_info = probe(str(data_path), decode=False)
        meta = _meta(entry, clip_info, options["frame_stride"], clip.clip_start,
                     video_checksum(clip.data)) | (extra or {})
        samples.append({"key": key, "ext": clip.ext, "data": str(data_path),
                        "size": len(clip.data), "meta": meta})
    return samples
