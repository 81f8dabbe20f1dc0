"""`info(out)`: what a packed dataset holds -- counts, duration and resolution histograms,
codec mix, fps, key-frame intervals and samples per label -- read from the json members via the
indexes (video bytes are not read)."""

from collections import Counter
from pathlib import Path

from shard_tools.format import read_manifest
from shard_tools.samples import iter_samples

DURATION_BINS_S = (1, 2, 5, 10, 30, 60, 300)


def duration_bin(seconds):
    low = 0
    for high in DURATION_BINS_S:
        if seconds < high:
            return f"{low}-{high}s"
        low = high
    return f">={low}s"


def info(out):
    """Summary dict of the dataset in OUT."""
    out = Path(out)
    manifest = read_manifest(out)
    durations, resolutions, codecs, labels, fps, gops = (Counter() for _ in range(6))
    total_seconds, num_samples = 0.0, 0
    for entry in manifest["shards"]:
        for _, _, _, meta in iter_samples(out / entry["tar"], out / entry["index"],
                                          with_video=False):
            num_samples += 1
            total_seconds += meta["duration"]
            durations[duration_bin(meta["duration"])] += 1
            resolutions[f"{meta['width']}x{meta['height']}"] += 1
            codecs[meta["codec"]] += 1
            labels[meta["label_name"] if meta["label"] is not None else None] += 1
            fps[round(meta["fps"], 3)] += 1
            gops[meta["keyframe_interval"]] += 1
    return {
        "num_samples": num_samples, "num_shards": len(manifest["shards"]),
        "total_bytes": manifest["total_bytes"], "total_hours": total_seconds / 3600,
        "duration_histogram": dict(sorted(durations.items(), key=lambda kv: _bin_low(kv[0]))),
        "resolution_histogram": dict(resolutions.most_common()),
        "codecs": dict(codecs.most_common()),
        "fps": dict(sorted(fps.items())),
        "keyframe_intervals": dict(sorted(gops.items())),
        "labels": {str(name): labels.get(name, 0) for name in manifest["labels"]}
                  | ({"(unlabeled)": labels[None]} if labels.get(None) else {}),
        "frame_stride": manifest["frame_stride"], "max_seconds": manifest["max_seconds"],
    }


def _bin_low(label):
    return float(label.lstrip(">=").split("-")[0].rstrip("s"))


def format_info(summary):
    """Human-readable text of an `info` dict."""
    lines = [f"{summary['num_samples']} samples in {summary['num_shards']} shards, "
             f"{summary['total_bytes'] / 1e9:.3f} GB, {summary['total_hours']:.2f} h of video; "
             f"frame_stride {summary['frame_stride']}, max_seconds {summary['max_seconds']}"]
    for title, key in (("duration", "duration_histogram"), ("resolution", "resolution_histogram"),
                       ("codec", "codecs"), ("fps", "fps"),
                       ("key-frame interval", "keyframe_intervals"), ("label", "labels")):
        lines.append(f"{title}:")
        width = max((len(str(k)) for k in summary[key]), default=0)
        lines.extend(f"  {str(k):<{width}}  {v}" for k, v in summary[key].items())
    return "\n".join(lines)
