"""Self-describing test clips, the shards that hold them, and checks of the clips themselves.

Every frame of a test clip encodes its own frame number and pixel coordinates in its colours:

    R = 20 + 7·frame          flat over the whole frame (survives any crop and resize)
    G = 20 + 2.5·x            a ramp along the width  (x in source pixels)
    B = 20 + 3·y              a ramp along the height (y in source pixels)

so a decoded, cropped and resized clip tells which stored frames it holds (from R) and which source
box it shows (a straight-line fit of G over output columns and B over output rows). The ramps are
smooth, so 4:2:0 chroma subsampling and the codecs barely move them.

Other test files import the helpers from here (pytest puts tests/ on sys.path).

"""
from __future__ import annotations

import json
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

HEIGHT, WIDTH = 64, 80
MAX_FRAMES = 33  # R = 20 + 7·32 = 244 is the largest frame code that fits in a byte
R0, R_STEP = 20.0, 7.0
G0, G_STEP = 20.0, 2.5
B0, B_STEP = 20.0, 3.0


def clip_frames(num_frames: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(F, H, W, 3) uint8 frames whose colours encode frame number and pixel coordinates."""
    if num_frames > MAX_FRAMES:
        raise ValueError(f"test clips hold at most {MAX_FRAMES} frames, asked for {num_frames}")
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for f in range(num_frames):
        frames[f, ..., 0] = np.round(R0 + R_STEP * f)
        frames[f, ..., 1] = np.round(G0 + G_STEP * x)
        frames[f, ..., 2] = np.round(B0 + B_STEP * y)
    return frames


def encode_clip(path: Path, frames: np.ndarray, codec: str = "vp9", fps: int = 25) -> None:
    """Write frames as .webm (VP9, no alt-ref frames, short GOP) or .avi (MJPEG)."""
    with av.open(str(path), "w") as container:
        if codec == "vp9":
            stream = container.add_stream("libvpx-vp9", rate=fps)
            stream.pix_fmt = "yuv420p"
            # Hidden alt-ref frames would make packets outnumber frames; a short GOP keeps seeks cheap.
            stream.options = {"crf": "4", "b:v": "0", "auto-alt-ref": "0", "lag-in-frames": "0",
                              "deadline": "good", "cpu-used": "8"}
        elif codec == "mjpeg":
            stream = container.add_stream("mjpeg", rate=fps)
            stream.pix_fmt = "yuvj420p"
            stream.options = {"q:v": "2"}
        else:
            raise ValueError(f"test clips are VP9 or MJPEG (what DALI's CPU decoder reads), not {codec}")
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.codec_context.gop_size = 8
        stream.codec_context.time_base = Fraction(1, fps)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def pyav_frames(path_or_bytes) -> np.ndarray:
    """All frames of a clip decoded by PyAV (FFmpeg) as (F, H, W, 3) uint8 RGB."""
    import io

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    with av.open(src) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def make_shards(out: Path, lengths: list[int], codec: str = "vp9", shard_size: int = 40_000) -> dict[str, dict]:
    """A tiny dataset packed by shard_tools.pack (--codec copy) from self-describing clips.

    Clip i has lengths[i] frames. Returns {sample key: its json metadata} read back from the shards.
    """
    from shard_tools.pack import pack

    src = out.parent / f"{out.name}-src"
    ext = {"vp9": "webm", "mjpeg": "avi"}[codec]
    for i, n in enumerate(lengths):
        folder = src / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        encode_clip(folder / f"clip{i:03d}.{ext}", clip_frames(n), codec)
    pack(src, out, codec="copy", shard_size=shard_size, progress=False)
    return shard_metadata(out)


def shard_metadata(out: Path) -> dict[str, dict]:
    """{key: json metadata} of every sample of a packed dataset."""
    metas = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    metas[member.name.split(".", 1)[0]] = json.loads(tar.extractfile(member).read())
    return metas


def frame_numbers(clip: np.ndarray) -> np.ndarray:
    """Stored frame number of each frame of a (F, H, W, 3) clip, read from its flat red channel."""
    red = np.median(clip[..., 0].reshape(len(clip), -1).astype(np.float64), axis=1)
    return np.round((red - R0) / R_STEP).astype(int)


def crop_box(clip: np.ndarray) -> tuple[float, float, float, float]:
    """Source box (x0, y0, width, height) that a resized crop shows, from its G and B ramps.

    Output pixel j of n samples source coordinate x0 + (j + 0.5)·w/n − 0.5, so a straight-line fit of
    the decoded ramp over j gives w (slope) and x0 (intercept). Border columns are left out: resize
    filters clamp there.
    """
    frame = clip.astype(np.float64).mean(axis=0)
    out_h, out_w = frame.shape[:2]
    cols = np.arange(1, out_w - 1)
    rows = np.arange(1, out_h - 1)
    gx = (frame[1:-1, 1:-1, 1].mean(axis=0) - G0) / G_STEP
    by = (frame[1:-1, 1:-1, 2].mean(axis=1) - B0) / B_STEP
    slope_x, icpt_x = np.polyfit(cols + 0.5, gx, 1)
    slope_y, icpt_y = np.polyfit(rows + 0.5, by, 1)
    return icpt_x + 0.5, icpt_y + 0.5, slope_x * out_w, slope_y * out_h


@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_clip_codes_survive_encoding(tmp_path, codec):
    """The encoding is readable after compression: exact frame numbers, coordinates to a pixel."""
    frames = clip_frames(20)
    path = tmp_path / ("c.webm" if codec == "vp9" else "c.avi")
    encode_clip(path, frames, codec)
    decoded = pyav_frames(path)
    assert decoded.shape == frames.shape
    assert (frame_numbers(decoded) == np.arange(20)).all()
    x0, y0, w, h = crop_box(decoded)
    assert abs(x0) < 1 and abs(y0) < 1 and abs(w - WIDTH) < 1 and abs(h - HEIGHT) < 1


def test_packed_shards_keep_the_clips(tmp_path):
    """shard_tools.pack --codec copy stores the clips unchanged, with the frame count the loader uses."""
    metas = make_shards(tmp_path / "ds", [9, 30, 17, 12, 20], shard_size=20_000)
    assert sorted(m["num_frames"] for m in metas.values()) == [9, 12, 17, 20, 30]
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["num_samples"] == 5 and len(manifest["shards"]) >= 2
