"""Read samples back from a packed dataset through its index (no tar scan): used by verify,
info and tests, and handy for a loader's reference decoder."""

import json

from shard_tools.format import VIDEO_EXTS
from shard_tools.index import parse_index


def read_member(tar_file, offset, size):
    tar_file.seek(offset)
    data = tar_file.read(size)
    if len(data) != size:
        raise ValueError(f"member at offset {offset} is cut short ({len(data)} of {size} bytes)")
    return data


def iter_samples(tar_path, idx_path=None, with_video=True, index_text=None):
    """Yield (key, ext, video_bytes or None, meta dict) per sample listed in the index
    (the .idx file at idx_path, or index_text)."""
    if index_text is None:
        with open(idx_path, encoding="utf-8") as f:
            index_text = f.read()
    samples = parse_index(index_text)
    with open(tar_path, "rb") as tar_file:
        for components in samples:
            by_ext = {ext: (offset, size, name) for ext, offset, size, name in components}
            video_exts = [ext for ext in by_ext if ext in VIDEO_EXTS]
            if len(video_exts) != 1 or "json" not in by_ext:
                raise ValueError(f"{tar_path}: sample {components[0][3]!r} has members "
                                 f"{sorted(by_ext)}, expected one video ({'/'.join(VIDEO_EXTS)}) "
                                 f"and json")
            ext = video_exts[0]
            key = by_ext[ext][2].rsplit(".", 1)[0]
            meta = json.loads(read_member(tar_file, *by_ext["json"][:2]).decode("utf-8"))
            video = read_member(tar_file, *by_ext[ext][:2]) if with_video else None
            yield key, ext, video, meta
