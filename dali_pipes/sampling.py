"""Per-sample random choices of VideoMAE pre-training (spec §7), in numpy.

One implementation for both loaders: the DALI pipeline calls `sample_params` inside the graph
(fn.python_function), and the reference loader (bench/baselines) calls the same functions in its
worker processes. Everything is seeded by a numpy Generator, so a sample's clip start, crops and
masks are a pure function of its seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from dali_pipes.masking import dual_masks, token_grid

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)  # of the short side (GroupMultiScaleCrop)


def clip_start(rng: np.random.Generator, num_stored_frames: int, num_frames: int, stride: int) -> int:
    """First frame of a clip: uniform over every start whose clip fits, else 0 (clip gets padded)."""
    span = (num_frames - 1) * stride + 1
    return int(rng.integers(0, max(num_stored_frames - span, 0) + 1))


def frame_indices(start: int, num_stored_frames: int, num_frames: int, stride: int) -> np.ndarray:
    """Stored frames a clip holds: start + i·stride, and the video's last frame past its end.

    This is what fn.decoders.video(pad_mode="edge") returns. The published VideoMAE loader also
    repeats a frame rather than padding black, but repeats the last one on the stride grid
    (start + k·stride), which differs from this by less than one stride.
    """
    return np.minimum(start + stride * np.arange(num_frames), max(num_stored_frames - 1, 0))


def fix_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """The 13 fixed (x, y) crop offsets of GroupMultiScaleCrop.fill_fix_offset(more_fix_crop=True)."""
    w_step, h_step = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2),           # corners and centre
            (0, 2), (4, 2), (2, 4), (2, 0),                   # centre-left/right, lower/upper centre
            (1, 1), (3, 1), (1, 3), (3, 3)]                   # the four quarter points
    return [(i * w_step, j * h_step) for i, j in grid]


def crop_size_pairs(image_w: int, image_h: int, img_size: int, scales=MULTISCALE_SCALES,
                    max_distort: int = 1) -> list[tuple[int, int]]:
    """Allowed (crop_w, crop_h): scales of the short side, at most max_distort scale steps apart."""
    base = min(image_w, image_h)
    # Sizes within 3 px of the output size snap to it, as in the reference.
    sizes = [img_size if abs(int(base * s) - img_size) < 3 else int(base * s) for s in scales]
    return [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]


def multiscale_crop(rng: np.random.Generator, image_w: int, image_h: int, img_size: int,
                    scales=MULTISCALE_SCALES) -> tuple[int, int, int, int]:
    """One GroupMultiScaleCrop draw: (x0, y0, crop_w, crop_h) in source pixels."""
    pairs = crop_size_pairs(image_w, image_h, img_size, scales)
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    offsets = fix_offsets(image_w, image_h, crop_w, crop_h)
    x0, y0 = offsets[rng.integers(len(offsets))]
    return x0, y0, crop_w, crop_h


@dataclass(frozen=True)
class SamplingConfig:
    """What a loader draws per sample; the same for the DALI pipeline and the reference loader."""

    num_frames: int = 16            # frames per clip
    stored_stride: int = 4          # temporal stride in the *stored* stream (train stride / frame_stride)
    img_size: int = 224             # output side after the multi-scale crop
    num_sample: int = 4             # repeated augmentation: crops (and masks) per decoded clip
    patch_size: int = 16            # spatial patch size of the model
    encoder_mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.5

    @property
    def grid(self) -> tuple[int, int, int]:
        return token_grid(self.num_frames, self.img_size, self.patch_size)


def sample_params(meta: dict, rng: np.random.Generator, cfg: SamplingConfig) -> dict[str, np.ndarray]:
    """Clip start, num_sample crop boxes and num_sample dual masks for one video.

    Returns start (int), boxes (N, 4) int [x0, y0, w, h], and visible_idx / query_idx / loss_idx
    (N, count) int64 from dali_pipes.masking.dual_masks.
    """
    start = clip_start(rng, int(meta["num_frames"]), cfg.num_frames, cfg.stored_stride)
    boxes = np.array([multiscale_crop(rng, int(meta["width"]), int(meta["height"]), cfg.img_size)
                      for _ in range(cfg.num_sample)], dtype=np.int64)
    masks = dual_masks(rng, cfg.num_sample, cfg.grid, cfg.encoder_mask_ratio, cfg.decoder_mask_ratio)
    return {"start": start, "boxes": boxes, **masks}


def parse_meta(json_bytes) -> dict:
    """A sample's JSON member (FORMAT.md) as a dict, with the fields the sampler needs checked."""
    text = bytes(json_bytes).decode("utf-8")
    meta = json.loads(text)
    missing = [k for k in ("num_frames", "width", "height") if not isinstance(meta.get(k), int)]
    if missing:
        raise ValueError(f"sample metadata lacks integer {missing} (source {meta.get('source')!r}); "
                         f"repack the dataset with vmae2-shard")
    return meta


class GraphSampler:
    """The fn.python_function body of the sampling pipeline: (json bytes, seed words) → parameters.

    Outputs per sample: start (int32), roi_start (N, 2) and roi_end (N, 2) float32 in [y, x] order
    (fn.resize's ROI follows the tensor's H, W order), visible_idx, query_idx, loss_idx (N, count)
    int64, label (int64, -1 when unlabeled).
    """

    num_outputs = 7

    def __init__(self, cfg: SamplingConfig):
        self.cfg = cfg

    def __call__(self, json_bytes: np.ndarray, seed_words: np.ndarray):
        meta = parse_meta(json_bytes.tobytes())
        rng = np.random.default_rng(np.abs(seed_words.astype(np.int64)))
        p = sample_params(meta, rng, self.cfg)
        x0, y0, w, h = (p["boxes"][:, k].astype(np.float32) for k in range(4))
        roi_start = np.stack([y0, x0], axis=1)
        roi_end = np.stack([y0 + h, x0 + w], axis=1)
        label = meta.get("label")
        return (np.array(p["start"], np.int32), roi_start, roi_end, p["visible_idx"], p["query_idx"],
                p["loss_idx"], np.array(-1 if label is None else int(label), np.int64))
