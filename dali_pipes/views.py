"""Which frames and which box each fine-tuning and test view shows (spec §7), in numpy.

Test views are a pure function of a video's size (`test_views`); train-time draws are vectorised
over a batch and seeded by one numpy Generator (`sample_batch`), so the DALI sampling pipeline and a
test can call the same code. All frame numbers index the *stored* stream; the loader turns a stride
in source frames into a stored stride (shard_tools.format.stored_stride).

The rules are those of the published VideoMAE V2 fine-tuning code (dataset/datasets.py):
dense clips from `VideoClsDataset` (Kinetics, UCF101, HMDB51), segment ("tsn") sampling from
`RawFrameClsDataset` (Something-Something V2), the random-resized crop from its `spatial_sampling`,
RandAugment from its timm-style `rand_augment_transform`, random erasing from its `RandomErasing`
in cube mode. Where a draw cannot be reproduced bit for bit (Python's `random` vs numpy), the
distribution is the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLINGS = ("dense", "tsn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS} (dense: Kinetics-style clips at a stride, "
                         f"tsn: one frame per segment, as for SSv2), got {sampling!r}")


# ---- test views ------------------------------------------------------------------------------------
def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) after resizing the short side to short_side; the long side truncates, as the published Resize."""
    if width < height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def dense_test_frames(num_stored_frames: int, num_frames: int, stride: int) -> np.ndarray:
    """Every stride-th frame, the last one repeated up to num_frames (VideoClsDataset test `load_video`)."""
    frames = list(range(0, num_stored_frames, stride))
    frames += frames[-1:] * (num_frames - len(frames))
    return np.array(frames, dtype=np.int64)


def test_views(num_stored_frames: int, width: int, height: int, *, num_frames: int = 16, stride: int = 4,
               num_clips: int = 5, num_crops: int = 3, short_side: int = 224,
               sampling: str = "dense") -> list[dict]:
    """The published test views of one video, clip-major then crop.

    Each view is {"clip": k, "crop": j, "frames": (num_frames,) int64 stored-frame indices, "box":
    (x0, y0, w, h)}, the box in the frame resized to short side `short_side` (see resized_size); crops
    slide along the long side. dense: clip k starts at int(k·step) in the list of every stride-th frame,
    step = max((len − num_frames) / (num_clips − 1), 0). tsn: clip k takes frame int(tick·(x + k /
    num_clips)) of segment x, tick = num_stored_frames / num_frames.

    One clip or one crop: the published code divides by num_clips − 1 and num_crops − 1 (it fails for
    1); here one clip or one crop is the centre one.
    """
    _check_sampling(sampling)
    if num_stored_frames < 1 or width < 1 or height < 1:
        raise ValueError(f"a video of {num_stored_frames} frames of {width}x{height} has no test views; "
                         f"check the sample's metadata (num_frames, width, height)")
    if num_clips < 1 or num_crops < 1:
        raise ValueError(f"num_clips ({num_clips}) and num_crops ({num_crops}) must be at least 1")
    if sampling == "dense":
        listed = dense_test_frames(num_stored_frames, num_frames, stride)
        spare = len(listed) - num_frames
        starts = ([int(k * max(spare / (num_clips - 1), 0)) for k in range(num_clips)] if num_clips > 1
                  else [spare // 2])
        clips = [listed[s:s + num_frames] for s in starts]
    else:
        tick = num_stored_frames / num_frames
        clips = [np.array([int(k * tick / num_clips + tick * x) for x in range(num_frames)], dtype=np.int64)
                 for k in range(num_clips)]
    res_w, res_h = resized_size(width, height, short_side)
    spare = max(res_w, res_h) - short_side
    offsets = ([int(j * spare / (num_crops - 1)) for j in range(num_crops)] if num_crops > 1 else [spare // 2])
    # Square and portrait frames slide along the height (the published `shape[1] >= shape[2]`).
    boxes = ([(0, o, res_w, short_side) for o in offsets] if res_h >= res_w
             else [(o, 0, short_side, res_h) for o in offsets])
    return [{"clip": k, "crop": j, "frames": clips[k].copy(), "box": boxes[j]}
            for k in range(num_clips) for j in range(num_crops)]


test_views.__test__ = False  # a library function: pytest must not collect it where it is imported


# ---- train-time temporal sampling (one batch at a time) -------------------------------------------
def dense_train_frames(rng: np.random.Generator, num_stored_frames, num_frames: int, stride: int) -> np.ndarray:
    """(B, num_frames) int64: VideoClsDataset train `load_video` with one segment, for a batch.

    A video longer than the window (num_frames·stride frames) gets num_frames indices evenly spread
    (linspace) over the window [end − span, end), end uniform in [span, n); a shorter one gets
    n // stride indices spread over [0, n] and n repeated, all clipped to n − 1.
    """
    n = np.asarray(num_stored_frames, dtype=np.int64).reshape(-1)
    span = num_frames * stride
    i = np.arange(num_frames, dtype=np.float64)
    # Long videos: np.linspace(start, end, num_frames) = start + i·(span / (num_frames − 1)), last = end.
    end = rng.integers(span, np.maximum(n, span + 1))
    start = end - span
    step = span / (num_frames - 1) if num_frames > 1 else 0.0
    long = start[:, None] + i * step
    long[:, -1] = end
    long = np.clip(long, start[:, None], (end - 1)[:, None])
    # Short videos: np.linspace(0, n, count) = i·(n / (count − 1)), last = n ([0] for count 1), then n.
    count = (n // stride)[:, None]
    short = np.where(i < count, i * (n[:, None] / np.maximum(count - 1, 1)), n[:, None])
    short = np.where((i == count - 1) & (count > 1), n[:, None], short)
    short = np.clip(short, 0, (n - 1)[:, None])
    return np.where((n > span)[:, None], long, short).astype(np.int64)


def tsn_train_frames(rng: np.random.Generator, num_stored_frames, num_frames: int) -> np.ndarray:
    """(B, num_frames) int64: one random frame per segment (RawFrameClsDataset train `load_frame`).

    Segment x of a video of n ≥ num_frames frames covers [x·d, (x + 1)·d), d = n // num_frames; a
    shorter video gives 0 repeated, then every frame once.
    """
    n = np.asarray(num_stored_frames, dtype=np.int64).reshape(-1)
    x = np.arange(num_frames)
    duration = n // num_frames
    drawn = x * duration[:, None] + rng.integers(0, np.maximum(duration, 1)[:, None], size=(len(n), num_frames))
    short = np.maximum(x - (num_frames - n[:, None]), 0)
    return np.where((duration > 0)[:, None], drawn, short).astype(np.int64)


def train_frames(rng, num_stored_frames, *, num_frames: int, stride: int, sampling: str) -> np.ndarray:
    _check_sampling(sampling)
    if sampling == "dense":
        return dense_train_frames(rng, num_stored_frames, num_frames, stride)
    return tsn_train_frames(rng, num_stored_frames, num_frames)


# ---- train-time spatial draws (one batch of views at a time) ---------------------------------------
def random_resized_boxes(rng: np.random.Generator, width, height, *, scale=(0.08, 1.0),
                         ratio=(0.75, 1.3333), attempts: int = 10) -> np.ndarray:
    """(V, 4) int64 [x0, y0, w, h]: the published `random_resized_crop` box of each view's frame.

    Area uniform in scale·(w·h), log aspect uniform in log(ratio), sides rounded; the first of
    `attempts` draws that fits wins, offsets uniform; if none fits, the largest centred box whose
    aspect is clamped into ratio. (0.75, 1.3333) is the published range, not exactly 3/4–4/3.
    """
    width = np.asarray(width, dtype=np.int64).reshape(-1)
    height = np.asarray(height, dtype=np.int64).reshape(-1)
    views = len(width)
    area = (width * height)[:, None] * rng.uniform(*scale, size=(views, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(views, attempts)))
    crop_w = np.round(np.sqrt(area * aspect)).astype(np.int64)
    crop_h = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (crop_w > 0) & (crop_w <= width[:, None]) & (crop_h > 0) & (crop_h <= height[:, None])
    first = fits.argmax(axis=1)
    found = fits.any(axis=1)
    rows = np.arange(views)
    w, h = crop_w[rows, first], crop_h[rows, first]
    y0 = rng.integers(0, np.maximum(height - h, 0) + 1)
    x0 = rng.integers(0, np.maximum(width - w, 0) + 1)
    # Fallback: the whole frame, its aspect clamped into ratio, centred.
    in_ratio = width / height
    fall_w = np.where(in_ratio > ratio[1], np.round(height * ratio[1]).astype(np.int64), width)
    fall_h = np.where(in_ratio < ratio[0], np.round(width / ratio[0]).astype(np.int64), height)
    w, h = np.where(found, w, fall_w), np.where(found, h, fall_h)
    x0 = np.where(found, x0, (width - w) // 2)
    y0 = np.where(found, y0, (height - h) // 2)
    return np.stack([x0, y0, w, h], axis=1)


# RandAugment "rand-m7-n4-mstd0.5-inc1": timm's increasing-magnitude op set, in this order (the DALI
# graph in augment.py follows it); IDENTITY stands for an op skipped by its probability 0.5.
RAND_OPS = ("auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "color",
            "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
IDENTITY = len(RAND_OPS)
MAX_LEVEL = 10.0          # timm's magnitude scale: level 10 is each op's strongest setting
TRANSLATE_FRACTION = 0.45  # timm's translate_pct: TranslateXRel/YRel shift at level 10, of the side


@dataclass(frozen=True)
class RandAugmentConfig:
    """timm's RandAugment parameters, as in the string "rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}"."""

    num_ops: int = 4              # n: ops applied in sequence, drawn with replacement
    magnitude: float = 7.0        # m: level out of MAX_LEVEL
    magnitude_std: float = 0.5    # mstd: each op's level ~ N(m, mstd) clipped to [0, MAX_LEVEL]
    op_prob: float = 0.5          # each drawn op is applied with this probability (timm's default)


def rand_augment_params(op: np.ndarray, level: np.ndarray, negate: np.ndarray, size: int) -> np.ndarray:
    """float32 parameter of each op at each level, by timm's increasing-level rules (rand_augment.py).

    rotate: degrees ±30·l; posterize: bit mask keeping 4 − int(4·l) bits; solarize: threshold
    256 − int(256·l); solarize_add: int(110·l) added below 128; color, contrast, brightness,
    sharpness: factor 1 ± 0.9·l; shear: ±0.3·l; translate: ±0.45·l of the side, in pixels
    (l = level / MAX_LEVEL). `negate` flips the sign where timm negates at random.
    """
    frac = level / MAX_LEVEL
    sign = np.where(negate, -1.0, 1.0)
    bits = 4 - np.floor(frac * 4)
    by_op = {
        "rotate": sign * 30 * frac,
        "posterize": 255 - (2.0 ** (8 - bits) - 1),
        "solarize": 256 - np.floor(frac * 256),
        "solarize_add": np.floor(frac * 110),
        "shear_x": sign * 0.3 * frac, "shear_y": sign * 0.3 * frac,
        "translate_x": sign * TRANSLATE_FRACTION * frac * size, "translate_y": sign * TRANSLATE_FRACTION * frac * size,
        **{name: 1 + sign * 0.9 * frac for name in ("color", "contrast", "brightness", "sharpness")},
    }
    params = np.zeros(op.shape)
    for index, name in enumerate(RAND_OPS):
        if name in by_op:
            params = np.where(op == index, by_op[name], params)
    return params.astype(np.float32)


def rand_augment_draws(rng: np.random.Generator, views: int, cfg: RandAugmentConfig, size: int) -> dict:
    """One RandAugment draw per view (the whole clip shares it): op and parameter of each layer.

    op (V, n) int32 indexes RAND_OPS (IDENTITY where the op's coin says skip); param (V, n) float32
    is its parameter (rand_augment_params) at a level ~ N(magnitude, magnitude_std) clipped to
    [0, MAX_LEVEL], negated with probability 0.5 where timm negates.
    """
    shape = (views, cfg.num_ops)
    op = rng.integers(0, len(RAND_OPS), size=shape)
    op = np.where(rng.random(shape) < cfg.op_prob, op, IDENTITY)
    level = np.clip(rng.normal(cfg.magnitude, cfg.magnitude_std, size=shape), 0, MAX_LEVEL)
    negate = rng.random(shape) > 0.5
    return {"op": op.astype(np.int32), "param": rand_augment_params(op, level, negate, size)}


@dataclass(frozen=True)
class EraseConfig:
    """The published RandomErasing(reprob=0.25, mode="pixel", max_count=1) in cube mode."""

    prob: float = 0.25
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3
    attempts: int = 100


def erase_boxes(rng: np.random.Generator, views: int, size: int, cfg: EraseConfig) -> np.ndarray:
    """(V, 4) int64 [x0, y0, w, h] of the box erased on every frame of a view; w = h = 0: no erasing.

    Area uniform in [min_area, max_area]·size², log aspect uniform in ±log(min_aspect), sides rounded;
    the first of `attempts` draws strictly inside the frame wins (none: no erasing).
    """
    area = rng.uniform(cfg.min_area, cfg.max_area, size=(views, cfg.attempts)) * size * size
    log_aspect = math.log(cfg.min_aspect)
    aspect = np.exp(rng.uniform(log_aspect, -log_aspect, size=(views, cfg.attempts)))
    h = np.round(np.sqrt(area * aspect)).astype(np.int64)
    w = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (w < size) & (h < size)
    first, found = fits.argmax(axis=1), fits.any(axis=1)
    rows = np.arange(views)
    h, w = h[rows, first], w[rows, first]
    y0 = rng.integers(0, size - h + 1)
    x0 = rng.integers(0, size - w + 1)
    erase = found & (rng.random(views) < cfg.prob)
    return np.where(erase[:, None], np.stack([x0, y0, w, h], axis=1), 0)


def erase_fill(rng: np.random.Generator, boxes: np.ndarray, size: int) -> np.ndarray:
    """(V, S, S, 3) uint8: per-pixel N(0, 1) noise of the normalised image inside each box, 0 outside.

    The published "pixel" mode draws noise in the normalised space; as uint8 it is mean + std·z,
    so |z| beyond about 2.1 is clipped at 0 or 255 (about 3 % of the noise values). The published
    code draws fresh noise for every frame; here one noise image covers the box on all frames.
    """
    fill = np.zeros((len(boxes), size, size, 3), np.uint8)
    mean = np.array(IMAGENET_MEAN, np.float32) * 255
    std = np.array(IMAGENET_STD, np.float32) * 255
    for v, (x0, y0, w, h) in enumerate(boxes):
        if w and h:
            noise = mean + std * rng.standard_normal((h, w, 3), dtype=np.float32)
            fill[v, y0:y0 + h, x0:x0 + w] = np.clip(np.rint(noise), 0, 255)
    return fill


def colour_mixes(rng: np.random.Generator, n: int, permute_prob: float, invert_prob: float):
    """Per view, a (3, 3) float32 channel mix and a (3,) bias for augment.recolour: with probability
    `permute_prob` the channels in a random order (else as they are), then with probability `invert_prob`
    inverted (255 - x). Draws nothing from `rng` for a probability of 0."""
    perms = np.tile(np.arange(3), (n, 1))
    if permute_prob > 0:
        shuffled = rng.random(n) < permute_prob
        perms[shuffled] = [rng.permutation(3) for _ in range(int(shuffled.sum()))]
    inverted = rng.random(n) < invert_prob if invert_prob > 0 else np.zeros(n, bool)
    mix = np.eye(3, dtype=np.float32)[perms] * np.where(inverted, -1, 1).astype(np.float32)[:, None, None]
    bias = np.where(inverted, 255, 0).astype(np.float32)[:, None].repeat(3, axis=1)
    return mix, bias
