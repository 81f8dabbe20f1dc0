"""Probe one input with PyAV: is it a video we can pack, and what are its stream facts?

`probe` demuxes and decodes the whole video stream once: that counts frames exactly, finds the
largest key-frame interval, and is the only reliable way to catch a truncated or corrupt file
(FFmpeg often opens a cut file fine and fails only at the damaged packet). Problems raise
`SkipInput(reason, detail)` with one of the reasons in `SKIP_REASONS`.
"""

import os
from dataclasses import dataclass
from fractions import Fraction

import av

from shard_tools.format import CONTAINER_EXTS

SKIP_REASONS = ("missing", "zero-byte", "unreadable", "truncated", "non-video", "audio-only",
                "unsupported-codec", "duplicate", "missing-frames", "unreadable-frames")

# Demuxers FFmpeg guesses for plain text or images; such inputs are not videos.
NON_VIDEO_FORMATS = {"tty", "image2", "png_pipe", "jpeg_pipe", "txt", "ass", "srt", "webvtt",
                     "mpjpeg", "gif"}


class SkipInput(Exception):
    """An input that must be skipped; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason, detail):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class VideoInfo:
    container: str          # FFmpeg demuxer name, e.g. "matroska,webm"
    ext: str                # extension to store the bytes under (FORMAT.md)
    codec: str              # FFmpeg codec name
    pix_fmt: str
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float         # seconds, num_frames / fps
    keyframe_interval: int  # largest distance in frames between key frames (or to the end)
    has_b_frames: bool


def container_ext(format_name, path):
    """Extension for a demuxer name like 'mov,mp4,m4a,3gp,3g2,mj2' (prefer the file's own)."""
    names = format_name.split(",")
    own = os.path.splitext(path)[1].lower().lstrip(".")
    if own in names and own in CONTAINER_EXTS:
        return CONTAINER_EXTS[own]
    for name in names:
        if name in CONTAINER_EXTS:
            return CONTAINER_EXTS[name]
    return "mkv"


def keyframe_interval(key_positions, num_frames):
    """Largest gap between key frames, counting the stretch from the last key frame to the end."""
    bounds = sorted(key_positions) + [num_frames]
    return max((b - a for a, b in zip(bounds, bounds[1:], strict=False)), default=num_frames)


def check_file(path):
    """Reasons a path cannot even be opened: missing, zero-byte, unreadable."""
    if not os.path.exists(path):
        raise SkipInput("missing", f"{path} does not exist")
    if not os.path.isfile(path):
        raise SkipInput("unreadable", f"{path} is not a regular file")
    if os.path.getsize(path) == 0:
        raise SkipInput("zero-byte", f"{path} is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise SkipInput("unreadable", f"{path}: {err}") from err


def open_video(path):
    """Open a container and return (container, video stream), or raise SkipInput."""
    check_file(path)
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.InvalidDataError as err:
        # A container whose header FFmpeg recognised but whose index is cut off is truncated.
        if _looks_like_video_header(path):
            raise SkipInput("truncated", f"{path}: {err}") from err
        raise SkipInput("non-video", f"{path}: FFmpeg cannot read it as media ({err})") from err
    except (av.error.FFmpegError, OSError) as err:
        raise SkipInput("unreadable", f"{path}: {err}") from err
    if container.format.name in NON_VIDEO_FORMATS or (
            container.streams.video and container.streams.video[0].codec_context.name in
            ("ansi", "bintext", "idf", "xbin", "tty")):
        container.close()
        raise SkipInput("non-video", f"{path}: FFmpeg reads it as {container.format.name!r}, "
                                     f"not a video container")
    if not container.streams.video:
        has_audio = bool(container.streams.audio)
        container.close()
        if has_audio:
            raise SkipInput("audio-only", f"{path}: audio streams only, no video stream")
        raise SkipInput("non-video", f"{path}: no video stream")
    return container, container.streams.video[0]


def _looks_like_video_header(path):
    with open(path, "rb") as f:
        head = f.read(16)
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide")  # ISO BMFF (mp4/mov)
            or head[:4] == b"\x1a\x45\xdf\xa3"                          # EBML (mkv/webm)
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI "))


def stream_fps(stream):
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)


def probe(path, decode=True):
    """Facts of the first video stream of `path`; raises SkipInput for anything unpackable.

    decode=True decodes every frame (exact count, catches truncation); decode=False only demuxes
    (used on our own freshly encoded output, which is known to be whole).
    """
    container, stream = open_video(path)
    try:
        codec = stream.codec_context.name
        fps = stream_fps(stream)
        key_positions, num_frames, decoded, data_end = [], 0, 0, 0.0
        try:
            for packet in container.demux():  # every stream: a cut file ends them all early
                if packet.size == 0:
                    continue
                data_end = max(data_end, _packet_end(packet))
                if packet.stream.index != stream.index:
                    continue
                if packet.is_keyframe:
                    key_positions.append(num_frames)
                num_frames += 1
                if decode:
                    decoded += len(packet.decode())
            if decode:
                decoded += len(stream.codec_context.decode(None))
        except av.error.FFmpegError as err:
            raise SkipInput("truncated", f"{path}: decoding stopped after {num_frames} frames "
                                         f"({err})") from err
        if num_frames == 0 or (decode and decoded == 0):
            raise SkipInput("truncated", f"{path}: the video stream holds no decodable frame")
        _check_declared_length(path, container, stream, num_frames, fps, data_end)
        width, height = stream.codec_context.width, stream.codec_context.height
        frames = decoded if decode else num_frames
        return VideoInfo(
            container=container.format.name, ext=container_ext(container.format.name, path),
            codec=codec, pix_fmt=stream.codec_context.pix_fmt or "", width=width, height=height,
            fps=float(fps), num_frames=frames, duration=float(frames / fps),
            keyframe_interval=keyframe_interval(key_positions, frames),
            has_b_frames=bool(stream.codec_context.has_b_frames),
        )
    finally:
        container.close()


def _packet_end(packet):
    """End time in seconds of a packet (0 when it carries no timestamp)."""
    start = packet.pts if packet.pts is not None else packet.dts
    if start is None or packet.time_base is None:
        return 0.0
    return float((start + (packet.duration or 0)) * packet.time_base)


def _check_declared_length(path, container, stream, num_frames, fps, data_end):
    """A container that declares more than it holds is cut off.

    Two checks: the video stream's declared frame count (MP4, AVI) against the frames present,
    and the container's duration (the longest of its streams) against the end of the last packet
    of any stream -- so a good video beside a longer audio track is not mistaken for a cut one.
    """
    declared = stream.frames
    if declared and num_frames < declared - max(2, declared // 50):
        raise SkipInput("truncated", f"{path}: the container declares {declared} frames "
                                     f"but only {num_frames} are present")
    if container.duration and data_end:
        duration = container.duration / av.time_base
        if data_end < duration - max(2 / float(fps), duration / 50):
            raise SkipInput("truncated", f"{path}: the container declares {duration:.2f} s but "
                                         f"its data ends at {data_end:.2f} s")
