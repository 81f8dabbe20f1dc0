"""Encode frames (of a video, or of a frame folder) into one stored stream the engine decodes
fast and exactly.

Every encoder runs single-threaded with fixed settings and FFmpeg's bitexact flags, so the same
input gives the same bytes on every run (needed for byte-identical resumes). Streams are 8-bit
4:2:0, key frames exactly every `gop` frames (closed GOP) and no B-frames (spec §9).
`--frame-stride K` keeps every K-th source frame; `--max-seconds` cuts the source into clips of
that length (a last, shorter clip is kept when it is at least half as long).
"""

import io
from dataclasses import dataclass
from fractions import Fraction

import av

from shard_tools.frames import read_frame
from shard_tools.probe import SkipInput, open_video, stream_fps


@dataclass(frozen=True)
class Encoder:
    ffmpeg_name: str   # PyAV/FFmpeg encoder
    container: str     # muxer
    ext: str           # stored extension (FORMAT.md)
    pix_fmt: str


ENCODERS = {
    "vp9": Encoder("libvpx-vp9", "webm", "webm", "yuv420p"),
    "h264": Encoder("libx264", "mp4", "mp4", "yuv420p"),
    "hevc": Encoder("libx265", "mp4", "mp4", "yuv420p"),
    "mjpeg": Encoder("mjpeg", "avi", "avi", "yuvj420p"),
}


class TranscodeError(Exception):
    """An encoder is missing from this PyAV build, or an option is out of range."""


def check_encoder(codec):
    """Raise TranscodeError naming the alternatives when `codec` cannot be encoded here."""
    if codec not in ENCODERS:
        raise TranscodeError(f"--codec {codec!r} is not one of copy, {', '.join(ENCODERS)}")
    name = ENCODERS[codec].ffmpeg_name
    if name not in av.codecs_available:
        usable = [c for c, e in ENCODERS.items() if e.ffmpeg_name in av.codecs_available]
        raise TranscodeError(
            f"--codec {codec} needs the FFmpeg encoder {name!r}, which this PyAV build lacks; "
            f"use one of: {', '.join(usable) or 'none'} (or install a PyAV wheel built with {name})"
        )


def encoder_options(codec, gop, quality):
    """Fixed, single-threaded settings; `quality` is CRF (vp9/h264/hevc) or q:v (mjpeg)."""
    if codec == "vp9":
        return {"threads": "1", "row-mt": "0", "deadline": "realtime", "cpu-used": "8",
                "lag-in-frames": "0", "auto-alt-ref": "0", "crf": str(quality), "b": "0",
                "g": str(gop), "keyint_min": str(gop)}
    if codec == "h264":
        return {"threads": "1", "preset": "veryfast", "crf": str(quality),
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0"}
    if codec == "hevc":
        return {"preset": "ultrafast", "crf": str(quality),
                "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0"
                               f":pools=none:frame-threads=1:log-level=error"}
    return {"threads": "1", "qmin": str(quality), "qmax": str(quality)}


DEFAULT_QUALITY = {"vp9": 32, "h264": 23, "hevc": 28, "mjpeg": 4}


def target_size(width, height, short_side):
    """Output size with the short side scaled to `short_side` (None: keep), both sides even."""
    if short_side:
        scale = short_side / min(width, height)
        width, height = round(width * scale), round(height * scale)
    return max(2, width - width % 2), max(2, height - height % 2)


class StreamWriter:
    """Encode VideoFrames (or HxWx3 uint8 RGB arrays) into an in-memory container."""

    def __init__(self, codec, fps, width, height, gop, quality=None):
        check_encoder(codec)
        self.encoder = ENCODERS[codec]
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, "w", format=self.encoder.container,
                                 options={"fflags": "+bitexact"})
        quality = DEFAULT_QUALITY[codec] if quality is None else quality
        rate = Fraction(fps).limit_denominator(1001 * 1000)
        self.time_base = 1 / rate
        self.stream = self.container.add_stream(
            self.encoder.ffmpeg_name, rate=rate,
            options=encoder_options(codec, gop, quality))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = self.encoder.pix_fmt
        ctx = self.stream.codec_context
        ctx.gop_size = gop
        ctx.max_b_frames = 0
        ctx.flags |= av.codec.context.Flags.bitexact
        self.num_frames = 0

    def write(self, frame):
        if not isinstance(frame, av.VideoFrame):
            frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        frame = frame.reformat(self.stream.width, self.stream.height, self.encoder.pix_fmt,
                               interpolation="AREA")
        frame.pts, frame.time_base = self.num_frames, self.time_base
        self.num_frames += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self):
        """Flush and return the encoded container bytes."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.buffer.getvalue()


@dataclass
class Clip:
    data: bytes
    ext: str
    clip_start: float  # seconds into the source


def encode_clips(frames, fps, size, codec, gop=16, frame_stride=1, max_seconds=None,
                 quality=None):
    """Encode an iterable of frames (VideoFrames or RGB arrays) at `fps` into `size` (width,
    height) as one clip, or one per `max_seconds` window; returns (clips, frames read)."""
    width, height = size
    clip_len = max(1, round(max_seconds * fps)) if max_seconds else None
    clips, writer, clip_index, frame_index = [], None, -1, 0
    for frame in frames:
        index_in_clip = frame_index % clip_len if clip_len else frame_index
        if index_in_clip == 0:
            if writer is not None:
                clips.append(Clip(writer.close(), writer.encoder.ext,
                                  float(clip_index * clip_len / fps)))
            clip_index += 1
            writer = StreamWriter(codec, fps / frame_stride, width, height, gop, quality)
        if index_in_clip % frame_stride == 0:
            writer.write(frame)
        frame_index += 1
    if writer is None:
        return [], 0
    tail_len = frame_index - clip_index * clip_len if clip_len else frame_index
    if not clips or not clip_len or tail_len * 2 >= clip_len:
        clips.append(Clip(writer.close(), writer.encoder.ext,
                          float(clip_index * clip_len / fps) if clip_len else 0.0))
    else:
        writer.close()
    return clips, frame_index


def transcode(path, codec, short_side=None, gop=16, frame_stride=1, max_seconds=None,
              quality=None):
    """Decode `path` and re-encode it as one clip, or one clip per `max_seconds` window."""
    container, stream = open_video(path)
    try:
        size = target_size(stream.codec_context.width, stream.codec_context.height, short_side)
        decoded = 0

        def frames():
            nonlocal decoded
            try:
                for frame in container.decode(stream):
                    yield frame
                    decoded += 1
            except av.error.FFmpegError as err:
                raise SkipInput("truncated", f"{path}: decoding failed at frame {decoded} "
                                             f"({err})") from err

        clips, _ = encode_clips(frames(), stream_fps(stream), size, codec, gop, frame_stride,
                                max_seconds, quality)
        if not clips:
            raise SkipInput("truncated", f"{path}: no decodable frame")
        return clips
    finally:
        container.close()


def transcode_frames(paths, fps, codec, short_side=None, gop=16, frame_stride=1,
                     max_seconds=None, quality=None):
    """Encode the frame files `paths` (in order) as one stream at `fps`, cut like `transcode`."""
    first = read_frame(paths[0])
    source_size = (first.shape[1], first.shape[0])

    def frames():
        yield first
        for path in paths[1:]:
            yield read_frame(path, source_size)

    clips, _ = encode_clips(frames(), Fraction(fps).limit_denominator(1001 * 1000),
                            target_size(*source_size, short_side), codec, gop, frame_stride,
                            max_seconds, quality)
    return clips
