"""`info(out)`: what a packed dataset holds -- counts, duration and resolution histograms,
codec mix, fps, key-frame intervals and samples per label -- read from the json members via the
indexes (video bytes are not read). `mixture_info(path)`: the datasets of a mixture file with
their sample counts, normalised weights and strides (read from the manifests)."""

from collections import Counter
from pathlib import Path

from shard_tools.format import read_manifest, stored_stride
from shard_tools.mixture import read_mixture
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


def mixture_info(path):
    """Per-dataset counts, shares and strides of the mixture file at `path`."""
    sources = []
    for source in read_mixture(path):
        manifest = read_manifest(source["path"])
        stride = source["stride"]
        sources.append({
            "path": source["path"], "num_samples": manifest["num_samples"],
            "num_shards": len(manifest["shards"]), "total_bytes": manifest["total_bytes"],
            "num_labels": len(manifest["labels"]), "weight": source["weight"],
            "share": source["share"], "stride": stride, "frame_stride": manifest["frame_stride"],
            # Stride in the stored stream; an error (naming the fix) if the dataset was thinned
            # with a frame_stride that does not divide the training stride.
            "stored_stride": (stored_stride(stride, manifest["frame_stride"])
                              if stride is not None else None),
        })
    return {"mixture": str(path), "num_samples": sum(s["num_samples"] for s in sources),
            "sources": sources}


def format_mixture_info(summary):
    """Human-readable table of a `mixture_info` dict."""
    rows = [("dataset", "samples", "shards", "GB", "weight", "share", "stride", "stored stride")]
    for s in summary["sources"]:
        rows.append((s["path"], str(s["num_samples"]), str(s["num_shards"]),
                     f"{s['total_bytes'] / 1e9:.3f}", f"{s['weight']:g}", f"{s['share']:.3f}",
                     "run default" if s["stride"] is None else str(s["stride"]),
                     "-" if s["stored_stride"] is None else str(s["stored_stride"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{len(summary['sources'])} datasets, {summary['num_samples']} samples in all "
             f"({summary['mixture']})"]
    lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
              for row in rows]
    return "\n".join(lines)
