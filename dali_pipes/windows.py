"""Whole videos as sliding windows, streamed through DALI in bounded chunks (feature extraction).

    window_starts(n, window, step, frame_stride)   the published window rule
    resize_frames(frames, size, compat)            pure graph function: the preprocessing of one chunk
    chunk_pipeline(...)                            @pipeline_def: encoded video fed in → resized chunks out
    WindowStream                                   one pipeline, reused video after video → (start, window)

Why fn.experimental.inputs.video and not fn.decoders.video with start_frame windows: extraction needs
every frame of the video once, in order, and windows overlap (16 frames every 4 is 4× overlap).
inputs.video decodes the stream front to back in consecutive fixed-length sequences fed with
`feed_input`, so each frame is decoded exactly once and only one chunk of decoded frames exists at a
time, whatever the video's length. decoders.video with a start_frame per window would decode each frame
~window/step times and seek back to a key frame for every window; decoding the whole video in one
sample (its `frames=[...]` form) would hold all its frames in memory. The windows are cut on the host
side of the pipeline from a rolling buffer of at most one window span plus one chunk of resized frames.

inputs.video runs on "cpu" (FFmpeg: VP8, VP9, MJPEG) or "mixed" (NVDEC: also H.264, HEVC, AV1...).
Running the pipeline when the fed video is used up is an error that breaks the pipeline, so the number
of runs per video is planned from the shard's `num_frames` (counted when packing) and every chunk is
checked against that plan; on any surprise the pipeline is rebuilt before the next video.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

VIDEO_INPUT = "encoded"
COMPAT_MODES = ("none", "official")


class StreamError(Exception):
    """A video that the decoder could not read (or not as far as its metadata says)."""


def window_starts(num_frames: int, window: int, step: int, frame_stride: int = 1) -> range:
    """First stored frame of each window: range(0, n − (window − 1)·frame_stride, step).

    Window w holds frames start + i·frame_stride, i < window. For window 16, stride 1 this is the
    published extractor's range(0, n − 15, step); a video shorter than one window has none.
    """
    if window < 1 or step < 1 or frame_stride < 1:
        raise ValueError(f"window ({window}), step ({step}) and frame_stride ({frame_stride}) must be ≥ 1")
    return range(0, max(num_frames - (window - 1) * frame_stride, 0), step)


def resize_frames(frames, *, size: int, compat: str):
    """A chunk (F, H, W, 3) uint8 → (F, size, size, 3), the same resize on every frame.

    compat "none" (what the model trained on): short side to `size`, aspect kept, linear with
    antialiasing (as the training crops), centre crop, uint8.
    compat "official" (the published extractor): squash to size × size, linear without antialiasing
    (torch's bilinear, align_corners False), float32 in [0, 255] because the published extractor
    resizes float pixels and never rounds them back to bytes.
    """
    if compat == "official":
        return fn.resize(frames, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=False,
                         dtype=types.FLOAT)
    if compat != "none":
        raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
    short = fn.resize(frames, resize_shorter=size, interp_type=types.INTERP_LINEAR, antialias=True,
                      dtype=types.UINT8)
    return fn.crop(short, crop=[size, size], crop_pos_x=0.5, crop_pos_y=0.5)


@pipeline_def
def chunk_pipeline(*, chunk_frames: int, size: int, compat: str, decode_device: str):
    """Each run: the next batch_size chunks of `chunk_frames` frames of the fed video, resized.

    The last chunk of a video may be shorter and the last batch of a video may hold fewer chunks;
    a batch never mixes two videos.
    """
    frames = fn.experimental.inputs.video(name=VIDEO_INPUT, sequence_length=chunk_frames, device=decode_device,
                                          last_sequence_policy="partial")
    return resize_frames(frames, size=size, compat=compat)


def dali_reason(err: Exception) -> str:
    """The operator's own message out of a DALI pipeline error (which leads with a traceback of the graph)."""
    text = str(err)
    if "encountered:" in text:
        lines = [line.strip() for line in text.split("encountered:", 1)[1].splitlines() if line.strip()]
        if lines:
            return lines[0].split(" failed: ", 1)[-1][:300]
    return (text.strip().splitlines() or [type(err).__name__])[-1][:300]


def planned_chunks(num_frames: int, chunk_frames: int, chunks_per_run: int) -> list[list[int]]:
    """Chunk lengths per pipeline run for a video of num_frames, as inputs.video will return them."""
    full, rest = divmod(num_frames, chunk_frames)
    lengths = [chunk_frames] * full + ([rest] if rest else [])
    return [lengths[i:i + chunks_per_run] for i in range(0, len(lengths), chunks_per_run)]


class WindowStream:
    """Decode videos one after another and cut each into sliding windows (start, (T, S, S, 3) tensor).

    device "cpu": FFmpeg decode and CPU resize; "gpu": NVDEC decode (mixed) and GPU resize, windows on
    the GPU. At most `window span + chunk_frames · chunks_per_run` resized frames are held at once.
    """

    def __init__(self, *, size: int, compat: str = "none", device: str = "cpu", device_id: int | None = None,
                 chunk_frames: int = 16, chunks_per_run: int = 2, num_threads: int = 2):
        if compat not in COMPAT_MODES:
            raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
        self.size, self.compat, self.device = size, compat, device
        self.chunk_frames, self.chunks_per_run = chunk_frames, chunks_per_run
        self._kwargs = dict(batch_size=chunks_per_run, num_threads=num_threads,
                            device_id=device_id if device == "gpu" else None, prefetch_queue_depth=1)
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            self._pipe = chunk_pipeline(chunk_frames=self.chunk_frames, size=self.size, compat=self.compat,
                                        decode_device="mixed" if self.device == "gpu" else "cpu", **self._kwargs)
            self._pipe.build()
        return self._pipe

    def _discard_pipeline(self) -> None:
        """After an error or a chunk the plan did not expect, the operator's queue state is unknown."""
        self._pipe = None

    def chunks(self, encoded: bytes, num_frames: int) -> Iterator[torch.Tensor]:
        """The video's frames, resized, as consecutive (F, S, S, 3) tensors; StreamError on a short read."""
        plan = planned_chunks(num_frames, self.chunk_frames, self.chunks_per_run)
        if not plan:
            return
        pipe = self._pipeline()
        pipe.feed_input(VIDEO_INPUT, [np.frombuffer(encoded, dtype=np.uint8)])
        runs = 0
        try:
            yield from self._run_plan(pipe, plan, num_frames)
            runs = len(plan)
        finally:
            if runs != len(plan):  # stopped early: the rest of this video would come out of the next run
                self._discard_pipeline()

    def _run_plan(self, pipe, plan: list[list[int]], num_frames: int) -> Iterator[torch.Tensor]:
        decoded = 0
        for expected in plan:
            try:
                (out,) = pipe.run()
            except RuntimeError as err:
                reason = dali_reason(err)
                raise StreamError(f"decoder failed after {decoded} of {num_frames} frames: {reason}") from None
            got = [out[i].shape()[0] for i in range(len(out))]
            if got != expected:
                raise StreamError(f"the stream holds a different number of frames than num_frames={num_frames} "
                                  f"(chunk lengths {got}, expected {expected} after {decoded} frames); "
                                  f"repack the video")
            decoded += sum(got)
            for i in range(len(out)):
                yield torch.from_dlpack(out[i]).clone()       # a copy: DALI reuses its buffers next run

    def windows(self, encoded: bytes, num_frames: int, *, window: int, step: int,
                frame_stride: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, frames start + i·frame_stride for i < window) for every start of window_starts."""
        starts = window_starts(num_frames, window, step, frame_stride)
        if not len(starts):
            return
        span = (window - 1) * frame_stride + 1
        buffer, first, next_idx = None, 0, 0                   # buffer[0] is stored frame `first`
        for chunk in self.chunks(encoded, num_frames):
            buffer = chunk if buffer is None else torch.cat([buffer, chunk])
            while next_idx < len(starts) and starts[next_idx] + span <= first + len(buffer):
                at = starts[next_idx] - first
                yield starts[next_idx], buffer[at:at + span:frame_stride]
                next_idx += 1
            # Frames before the next window's start are not needed again (none after the last window,
            # whose remaining chunks are still decoded to drain the video from the pipeline).
            end = first + len(buffer)
            keep_from = min(starts[next_idx], end) if next_idx < len(starts) else end
            buffer, first = buffer[keep_from - first:], keep_from
        if next_idx != len(starts):  # unreachable when chunks() met its plan; kept as a guard
            raise StreamError(f"only {next_idx} of {len(starts)} windows could be cut")

    def close(self) -> None:
        self._pipe = None

