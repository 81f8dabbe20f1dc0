"""`pack(src, out, ...)`: turn a video collection into WebDataset shards + DALI indexes + manifest.

Stages, each resumable:

1. Parse SRC, resolve labels, drop duplicates (same file twice) -- cheap, redone every run.
2. Per-video stage in a process pool, or as Ray tasks with `ray=` (`stage.process_entry`):
   probe, then copy or transcode; a frame folder is read and encoded. Each finished entry is
   saved under OUT/.staging/items/, so a rerun skips it. Results come back to this process.
3. Plan: samples sorted by key, shuffled with `random.Random(seed)`, cut into shards in that
   order whenever the next sample would push a shard past `shard_size` bytes. The plan is a pure
   function of (inputs, arguments, seed), known only after stage 2 because transcoded sizes are.
4. Write shards (in the process pool too; with Ray, in this process). A shard is kept from an
   earlier run when its done-marker in OUT/.staging/shards/ lists the same keys and the tar
   and index on disk hash to the recorded digests; otherwise it is rewritten. Tars and indexes
   are deterministic (shard.py), so a resumed run is byte-identical to an uninterrupted one.
5. skipped.jsonl, then manifest.json (the mark of a complete dataset), then OUT/.staging is
   removed. Running the same command on a complete OUT does nothing.

`--codec copy` stores a stream as is when the data engine can decode it: H.264/HEVC (8-bit
4:2:0; NVDEC only), MPEG-4, AV1, VP8, VP9, MJPEG, in MP4/MOV/MKV/WebM/AVI. Anything else is
skipped with reason `unsupported-codec` and a detail naming the fix (`--codec vp9`), rather than
silently transcoded: a copy run never re-encodes. Copied streams keep their GOP structure; the
json records `keyframe_interval`. Only VP8/VP9/MJPEG decode on DALI's CPU backend.

Frame folders (a listed path that is a folder) have no stream to copy: they need a codec, and
are encoded at `fps` (default 30; SSv2's published frames are 12 fps) with the same settings as a
transcode. Their json adds `source_frames` (frames read) and `first_frame` (index of the first).

Arguments that change the output are recorded in OUT/.staging/args.json at the start and in the
manifest; running with different ones on the same OUT is an error naming the differences.
"""

import contextlib
import glob
import importlib.util
import json
import os
import random
import re
import shutil
import time
from collections import Counter
from pathlib import Path

from shard_tools import shard, stage
from shard_tools.files import write_json_atomic
from shard_tools.flipmap import FlipMapError, flip_permutation, read_flip_map
from shard_tools.format import MANIFEST_NAME, SKIPPED_NAME, STAGING_DIR, TOOL_VERSION
from shard_tools.frames import DEFAULT_FIRST_FRAME, DEFAULT_FRAME_TEMPLATE, DEFAULT_FRAMES_FPS, check_template
from shard_tools.manifest import build_manifest, write_manifest, write_skipped
from shard_tools.pool import RAY_MISSING, PoolError, run_pool, worker_pool
from shard_tools.sources import (
    FOLDER_VIDEO_EXTS,
    LIST_FORMATS,
    SourceError,
    make_key,
    parse_sources,
    read_label_map,
    resolve_labels,
)
from shard_tools.transcode import ENCODERS, check_encoder

DEFAULT_SHARD_SIZE = 1_000_000_000


class PackError(Exception):
    """Bad arguments, an OUT from another run, or (with strict) any skipped input."""


def pack(src, out, *, codec="copy", short_side=None, gop=16, quality=None, frame_stride=1,
         max_seconds=None, seed=0, shard_size=DEFAULT_SHARD_SIZE, prefix="train", root=None,
         labels=None, path_column="path", label_column="label", list_format="auto",
         fps=DEFAULT_FRAMES_FPS, frame_template=DEFAULT_FRAME_TEMPLATE,
         first_frame=DEFAULT_FIRST_FRAME, workers=1, ray=None, strict=False, progress=True,
         provenance=None, flip_map=None, direction_sensitive=False):
    """Pack SRC into OUT and return a summary dict (see `_summary`).

    labels: None (built from the inputs), a list of class names, or a label-map file path.
    fps, frame_template, first_frame: how frame folders are read and timed.
    ray: None (process pool of `workers`), or a Ray address ("auto", "ray://host:port", or
    "local" to start one with `workers` CPUs) to run the per-video stage as Ray tasks.
    provenance: extra facts recorded with the arguments (e.g. synth's parameters); a rerun
    must give the same. workers, ray, strict and progress do not change the output.
    flip_map: the class pairs a horizontal flip swaps (shard_tools.flipmap: a file, or [[a, b], ...]);
    direction_sensitive: the labels depend on left and right (implied by a flip map), so a loader
    without a map must not flip. Both go into the manifest (FORMAT.md).
    """
    start = time.perf_counter()
    args = _check_args(src=str(src), root=root, labels=labels, path_column=path_column,
                       label_column=label_column, list_format=list_format, codec=codec,
                       short_side=short_side, gop=gop, quality=quality, frame_stride=frame_stride,
                       max_seconds=max_seconds, fps=fps, frame_template=frame_template,
                       first_frame=first_frame, seed=seed, shard_size=shard_size, prefix=prefix,
                       provenance=provenance, flip_map=flip_map, direction_sensitive=direction_sensitive)
    if ray is not None and importlib.util.find_spec("ray") is None:
        raise PackError(f"--ray {ray}: {RAY_MISSING}")
    out = Path(out)
    done = _prepare_out(out, args)
    if done is not None:
        summary = _summary(out, done, start, resumed_shards=len(done["shards"]), input_bytes=0,
                           num_videos=0)
        return summary | {"already_complete": True}
    staging = out / STAGING_DIR
    for sub in ("items", "data", "shards"):
        (staging / sub).mkdir(parents=True, exist_ok=True)

    entries, skips, labels = _entries(args)
    with _pool(workers, ray) as pool:
        options = {k: args[k] for k in ("codec", "short_side", "gop", "quality", "frame_stride",
                                        "max_seconds", "fps", "frame_template", "first_frame")}
        outcomes = run_pool(stage.process_entry, [(e, options, str(staging)) for e in entries],
                             pool, progress, "probe/transcode", unit="video",
                             bytes_of=lambda o: o.get("source_bytes", 0))
        samples = []
        for outcome in outcomes:
            if "skip" in outcome:
                skips.append(outcome["skip"])
            else:
                samples.extend(outcome["samples"])
        write_skipped(out / SKIPPED_NAME, skips)
        if strict and skips:
            reasons = Counter(s["reason"] for s in skips)
            raise PackError(f"--strict: {len(skips)} inputs skipped ({dict(reasons)}); see "
                            f"{out / SKIPPED_NAME}")
        if not samples:
            raise PackError(f"no packable video in {src} ({len(skips)} skipped, see "
                            f"{out / SKIPPED_NAME})")

        plan = plan_shards(samples, seed, shard_size)
        names = [f"{prefix}-{i:06d}" for i in range(len(plan))]
        todo = [i for i, name in enumerate(names)
                if not _shard_is_done(out, staging, name, plan[i])]
        _remove_temporaries(out, prefix, keep=set(names))
        # On Ray the one process that plans also writes every shard (reading the staged streams
        # from shared storage); on this machine the process pool writes them in parallel.
        run_pool(_write_planned_shard, [(str(out), str(staging), names[i], plan[i]) for i in todo],
                 None if ray is not None else pool, progress, "write shards", unit="shard",
                 bytes_of=lambda r: r["bytes"])
    shards = []
    for name, shard_samples in zip(names, plan, strict=True):
        marker = json.loads((staging / "shards" / f"{name}.json").read_text(encoding="utf-8"))
        shards.append({"tar": f"{name}.tar", "index": f"{name}.idx",
                       "num_samples": len(shard_samples), "bytes": marker["bytes"],
                       "sha256": marker["sha256"]})
    manifest = build_manifest(args, shards, samples, labels)
    write_manifest(out / MANIFEST_NAME, manifest)
    shutil.rmtree(staging)
    return _summary(out, manifest, start, resumed_shards=len(names) - len(todo),
                    input_bytes=sum(o.get("source_bytes", 0) for o in outcomes),
                    num_videos=len(entries), skips=skips)


@contextlib.contextmanager
def _pool(workers, ray):
    try:
        with worker_pool(workers, ray) as pool:
            yield pool
    except PoolError as err:
        raise PackError(str(err)) from err


def _check_args(**args):
    codec = args["codec"]
    if codec != "copy":
        check_encoder(codec)
    elif args["frame_stride"] != 1 or args["max_seconds"]:
        raise PackError("--frame-stride and --max-seconds re-encode the video; --codec copy keeps "
                        f"the stream as is. Add --codec vp9 (or one of {', '.join(ENCODERS)})")
    for name, low in (("gop", 1), ("frame_stride", 1), ("shard_size", 1), ("first_frame", 0)):
        if args[name] < low:
            raise PackError(f"--{name.replace('_', '-')} must be at least {low}, got {args[name]}")
    if not args["fps"] > 0:
        raise PackError(f"--fps must be positive, got {args['fps']}")
    args["fps"] = float(args["fps"])  # 12 and 12.0 are one run, in the manifest and on resume
    if args["list_format"] not in ("auto", *LIST_FORMATS):
        raise PackError(f"--list-format {args['list_format']!r} is not one of auto, "
                        f"{', '.join(LIST_FORMATS)}")
    try:
        check_template(args["frame_template"])
    except ValueError as err:
        raise PackError(str(err)) from err
    if args["max_seconds"] is not None and args["max_seconds"] <= 0:
        raise PackError(f"--max-seconds must be positive, got {args['max_seconds']}")
    if args["short_side"] is not None and args["short_side"] < 2:
        raise PackError(f"--short-side must be at least 2, got {args['short_side']}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args["prefix"]):
        raise PackError(f"--prefix {args['prefix']!r} may hold only letters, digits, _ and -")
    labels = args["labels"]
    if isinstance(labels, (str, os.PathLike)):
        if not Path(labels).is_file():
            raise PackError(f"--labels {labels}: no such file (one class name per line)")
        try:
            args["labels_resolved"] = read_label_map(labels)
        except SourceError as err:
            raise PackError(str(err)) from err
        args["labels"] = str(labels)
    else:
        args["labels_resolved"] = list(labels) if labels is not None else None
        args["labels"] = args["labels_resolved"]
    if args["flip_map"] is not None:
        flip_map = args["flip_map"]
        try:
            pairs = read_flip_map(flip_map) if isinstance(flip_map, (str, os.PathLike)) else \
                [[str(a), str(b)] for a, b in flip_map]
            if args["labels_resolved"] is not None:
                flip_permutation(pairs, args["labels_resolved"], where=f"--flip-map {flip_map}")
        except FlipMapError as err:
            raise PackError(str(err)) from err
        args["flip_map"] = pairs
        args["direction_sensitive"] = True
    args["direction_sensitive"] = bool(args["direction_sensitive"])
    args["tool_version"] = TOOL_VERSION
    return args


def _prepare_out(out, args):
    """Check OUT belongs to this run; return the manifest when OUT is already complete."""
    manifest_path, args_path = out / MANIFEST_NAME, out / STAGING_DIR / "args.json"
    recorded = None
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        recorded = manifest.get("args")
    elif args_path.is_file():
        recorded = json.loads(args_path.read_text(encoding="utf-8"))
    elif out.is_dir() and any(p.name != STAGING_DIR for p in out.iterdir()):
        raise PackError(f"OUT {out} is not empty and holds no vmae2-shard run; pick an empty "
                        f"or new folder")
    if recorded is not None and recorded != args:
        diff = sorted(k for k in set(recorded) | set(args) if recorded.get(k) != args.get(k))
        raise PackError(
            f"OUT {out} was written by a run with different arguments ({', '.join(diff)}: "
            + "; ".join(f"{k} was {recorded.get(k)!r}, now {args.get(k)!r}" for k in diff)
            + "); rerun with the same arguments to resume, or choose a new OUT")
    if manifest_path.is_file():
        return manifest
    if not Path(args["src"]).exists():
        raise PackError(f"SRC {args['src']} does not exist; give a folder of videos, a list file "
                        f"(`path label` per line) or a CSV with a header")
    (out / STAGING_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(args_path, args)
    return None


def _entries(args):
    """Entries to process (dicts), the skips found before probing (duplicates), and the label
    map. A label the given map lacks is an error: packed label indices must match the heads
    trained with that map."""
    try:
        entries = parse_sources(args["src"], args["root"], args["path_column"],
                                args["label_column"], args["list_format"])
    except SourceError as err:
        raise PackError(str(err)) from err
    labels, unknown = resolve_labels(entries, args["labels_resolved"])
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise PackError(f"{len(unknown)} labels in {args['src']} are not in the label map "
                        f"{args['labels']} ({len(labels)} classes): {shown}; add them to the map "
                        f"(integers must be below {len(labels)}), fix the list, or drop --labels "
                        f"to build the map from the data")
    if args["flip_map"]:
        try:
            flip_permutation(args["flip_map"], labels, where=f"--flip-map ({args['src']})")
        except FlipMapError as err:
            raise PackError(str(err)) from err
    skips, first_by_path, first_by_key, kept = [], {}, {}, []
    frame_folders = []
    for entry in entries:
        real, key = os.path.realpath(entry.path), make_key(entry.source)
        first = first_by_path.get(real) or first_by_key.get(key)
        if first is not None:
            skips.append({"source": entry.source, "reason": "duplicate",
                          "detail": f"{entry.path} is the same input as {first!r}, packed once"})
            continue
        first_by_path[real], first_by_key[key] = entry.source, entry.source
        item = {"source": entry.source, "path": entry.path, "key": key, "label": entry.label,
                "label_name": entry.label_name}
        if is_frame_folder(entry.path):
            item |= {"frames": True, "start": entry.start, "total": entry.total}
            frame_folders.append(entry.source)
        kept.append(item)
    if frame_folders and args["codec"] == "copy":
        raise PackError(f"{args['src']} lists {len(frame_folders)} frame folders (e.g. "
                        f"{frame_folders[0]!r}) and --codec copy stores videos as they are; "
                        f"frames must be encoded: add --codec vp9 (decodes on CPU and GPU) or "
                        f"--codec h264 (GPU only), and --fps for their frame rate")
    return kept, skips, labels


def is_frame_folder(path):
    """A folder is a frame folder unless its name has a video extension (then it is a bad video
    path, skipped as unreadable)."""
    return os.path.isdir(path) and Path(path).suffix.lower() not in FOLDER_VIDEO_EXTS


def plan_shards(samples, seed, shard_size):
    """Global shuffle (sorted keys, then `Random(seed)`) cut into shards of <= shard_size bytes."""
    order = sorted(samples, key=lambda s: s["key"])
    random.Random(seed).shuffle(order)
    plan, current, current_bytes = [], [], 0
    for sample in order:
        size = (shard.member_bytes(sample["size"])
                + shard.member_bytes(len(shard.sample_json(sample["meta"]))))
        if current and current_bytes + size > shard_size:
            plan.append(current)
            current, current_bytes = [], 0
        current.append(sample)
        current_bytes += size
    if current:
        plan.append(current)
    return plan


def _shard_is_done(out, staging, name, samples):
    marker_path = staging / "shards" / f"{name}.json"
    tar_path, idx_path = out / f"{name}.tar", out / f"{name}.idx"
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker.get("keys") != [s["key"] for s in samples]:
        return False
    if not tar_path.is_file() or tar_path.stat().st_size != marker["bytes"]:
        return False
    return (shard.file_sha256(tar_path) == marker["sha256"]
            and idx_path.is_file() and shard.file_sha256(idx_path) == marker["index_sha256"])


def _write_planned_shard(out, staging, name, samples):
    out = Path(out)
    result = shard.write_shard([(s["key"], s["ext"], s["data"], s["meta"]) for s in samples],
                               out / f"{name}.tar", out / f"{name}.idx")
    result["keys"] = [s["key"] for s in samples]
    write_json_atomic(Path(staging) / "shards" / f"{name}.json", result)
    return result


def _remove_temporaries(out, prefix, keep):
    """Drop torn `*.tmp` files and shards of this prefix that the plan does not name."""
    for path in glob.glob(str(out / "*.tmp")):
        os.remove(path)
    for path in glob.glob(str(out / f"{prefix}-*.tar")) + glob.glob(str(out / f"{prefix}-*.idx")):
        if Path(path).stem not in keep:
            os.remove(path)


def _summary(out, manifest, start, resumed_shards, input_bytes, num_videos, skips=None):
    """Counts of the finished dataset; rates count the videos processed in this call."""
    if skips is None:
        skipped_path = Path(out) / SKIPPED_NAME
        lines = skipped_path.read_text(encoding="utf-8").splitlines()
        skips = ([json.loads(line) for line in lines]
                 if skipped_path.is_file() else [])
    seconds = time.perf_counter() - start
    return {
        "out": str(out),
        "already_complete": False,
        "num_samples": manifest["num_samples"],
        "num_videos_processed": num_videos,
        "num_shards": len(manifest["shards"]),
        "total_bytes": manifest["total_bytes"],
        "num_skipped": len(skips),
        "skipped": dict(sorted(Counter(s["reason"] for s in skips).items())),
        "codecs": manifest["codecs"],
        "num_labels": len(manifest["labels"]),
        "shards_reused": resumed_shards,
        "seconds": seconds,
        "videos_per_s": num_videos / seconds if seconds else 0.0,
        "input_mb_per_s": input_bytes / 1e6 / seconds if seconds else 0.0,
    }


def format_summary(summary):
    """One line for the end of `vmae2-shard pack`."""
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()) or "none"
    if summary["already_complete"]:
        return (f"{summary['out']} is already complete with these arguments: "
                f"{summary['num_samples']} samples in {summary['num_shards']} shards; "
                f"skipped {summary['num_skipped']} ({skipped})")
    return (f"packed {summary['num_samples']} samples into {summary['num_shards']} shards "
            f"({summary['total_bytes'] / 1e6:.1f} MB, {summary['shards_reused']} kept from an "
            f"earlier run) in {summary['seconds']:.1f} s: {summary['videos_per_s']:.1f} videos/s, "
            f"{summary['input_mb_per_s']:.1f} MB/s in; skipped {summary['num_skipped']} "
            f"({skipped}); codecs {summary['codecs']} -> {summary['out']}")
