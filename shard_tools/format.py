"""Constants of the shard format (FORMAT.md) and small readers a loader can import.

Everything the DALI data engine needs to know about a packed dataset lives here or in the
manifest: the video extensions a sample may carry, the codecs the engine decodes, and
`read_manifest`, which loads and checks `manifest.json`.
"""

import json
import zlib
from pathlib import Path

FORMAT_NAME = "vmae2-shards"
FORMAT_VERSION = 1
TOOL_VERSION = "0.1.0"
MANIFEST_NAME = "manifest.json"
SKIPPED_NAME = "skipped.jsonl"
STAGING_DIR = ".staging"

# Extensions a sample's video member may carry (the container's usual extension).
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")

# Codecs the data engine decodes (spec §9): the CPU backend only VP8, VP9 and MJPEG; the mixed
# (NVDEC) backend also H.264, HEVC, MPEG-4 and AV1.
CPU_DECODABLE_CODECS = ("vp8", "vp9", "mjpeg")
ENGINE_CODECS = ("h264", "hevc", "mpeg4", "av1", "vp8", "vp9", "mjpeg")

# FFmpeg container (demuxer) name -> the extension we store under.
CONTAINER_EXTS = {
    "mp4": "mp4", "mov": "mov", "m4a": "mp4", "3gp": "mp4", "3g2": "mp4", "mj2": "mp4",
    "matroska": "mkv", "webm": "webm", "avi": "avi",
}


# The sample json's CRC-32 of its video member (8 hex digits). The tar's sha256 in the manifest
# needs the whole shard read; this lets a loader check each video it reads, on its own.
VIDEO_CHECKSUM_KEY = "video_crc32"


class FormatError(Exception):
    """A packed dataset folder does not follow FORMAT.md."""


def read_manifest(out):
    """Load OUT/manifest.json, check its format tag, and return it as a dict."""
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        raise FormatError(f"{path}: no manifest; is {out} a folder written by `vmae2-shard pack`?")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FormatError(
            f"{path}: format_version {manifest.get('format_version')} but this tool reads "
            f"{FORMAT_VERSION}; repack with this version of vmae2-shard"
        )
    return manifest


def stored_stride(train_stride, frame_stride):
    """Stride in the stored stream for training at `train_stride` source frames (FORMAT.md)."""
    if train_stride % frame_stride:
        raise ValueError(
            f"training stride {train_stride} is not a multiple of the dataset's frame_stride "
            f"{frame_stride}; use a multiple of {frame_stride} or repack with --frame-stride 1"
        )
    return train_stride // frame_stride


def video_checksum(data):
    """CRC-32 of a video's bytes (bytes or any buffer, e.g. a numpy array) as 8 hex digits."""
    return f"{zlib.crc32(data):08x}"


def file_checksum(path, block=1 << 22):
    """video_checksum of a whole file, read in blocks (a copied video may be large)."""
    crc = 0
    with open(path, "rb") as f:
        while data := f.read(block):
            crc = zlib.crc32(data, crc)
    return f"{crc:08x}"


def checksum_mismatch(data, meta):
    """Why `data` is not the video packed with `meta`, or None when it is (or meta records no checksum:
    shards packed before the checksum was recorded are not checked)."""
    expected = meta.get(VIDEO_CHECKSUM_KEY)
    if expected is None:
        return None
    actual = video_checksum(data)
    if actual == expected:
        return None
    return f"its {len(data)} video bytes have CRC-32 {actual}, its json records {expected}"
