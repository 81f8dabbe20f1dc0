"""manifest.json and skipped.jsonl (FORMAT.md), both written atomically (shard_tools.files)."""

import json
from collections import Counter

from shard_tools.files import write_json_atomic, write_text_atomic
from shard_tools.format import FORMAT_NAME, FORMAT_VERSION, TOOL_VERSION


def build_manifest(args, shards, samples, labels):
    """The manifest dict: `shards` as [{"tar", "index", "num_samples", "bytes"}] in order."""
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "tool_version": TOOL_VERSION,
        "args": args,
        "num_samples": sum(s["num_samples"] for s in shards),
        "total_bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
        "codecs": dict(sorted(Counter(s["meta"]["codec"] for s in samples).items())),
        "labels": labels,
        "frame_stride": args["frame_stride"],
        "max_seconds": args["max_seconds"],
        "video_exts": sorted({s["ext"] for s in samples}),
        "flip_pairs": args.get("flip_map") or [],
        "direction_sensitive": bool(args.get("direction_sensitive")),
    }


def write_manifest(path, manifest):
    write_json_atomic(path, manifest)


def write_skipped(path, skips):
    """One JSON object per line, sorted by source then reason, so reruns write identical bytes."""
    ordered = sorted(skips, key=lambda s: (s["source"], s["reason"]))
    write_text_atomic(path, "".join(json.dumps(skip, sort_keys=True, ensure_ascii=False) + "\n"
                                    for skip in ordered))
