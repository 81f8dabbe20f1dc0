"""The random choices of VideoMAE pre-training (spec §7), drawn for a whole batch at once in numpy.

One implementation for both loaders: the DALI engine calls `draw_pretrain_batch` once per batch on
its producer thread (loader.py), and the reference loader (bench/baselines) calls it for batches of
one video. Everything is drawn from a numpy Generator, so a batch's clip starts, crops and masks are
a pure function of the generator's seed. Every draw is array arithmetic over the batch (no
per-sample Python loop apart from reading each sample's JSON).

The scalar functions (`clip_start`, `crop_size_pairs`, `fix_offsets`, `multiscale_crop`) state the
published rule one draw at a time; the tests check the batch draws against them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from dali_pipes.masking import dual_masks, mask_counts, token_grid

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)  # of the short side (GroupMultiScaleCrop)
# GroupMultiScaleCrop.fill_fix_offset(more_fix_crop=True): (i, j) in quarters of the free width/height.
FIX_OFFSET_GRID = np.array([(0, 0), (4, 0), (0, 4), (4, 4), (2, 2),           # corners and centre
                            (0, 2), (4, 2), (2, 4), (2, 0),                   # centre-left/right, lower/upper centre
                            (1, 1), (3, 1), (1, 3), (3, 3)])                  # the four quarter points


@dataclass(frozen=True)
class SamplingConfig:
    """What a pre-training loader draws per video; checked when made, so bad values fail here."""

    num_frames: int = 16            # frames per clip
    stride: int = 4                 # temporal stride in SOURCE frames (the loader maps it to the stored stream)
    img_size: int = 224             # output side after the multi-scale crop
    num_sample: int = 4             # repeated augmentation: crops (and masks) per decoded clip
    patch_size: int = 16            # spatial patch size of the model
    encoder_mask_ratio: float = 0.9     # tube masking: share of spatial positions removed in every slice
    decoder_mask_ratio: float = 0.5     # running-cell masking: share of tokens not decoded (0, .25, .5, .75)

    def __post_init__(self):
        for name in ("num_frames", "stride", "img_size", "num_sample", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SamplingConfig.{name} must be a positive integer, got {value!r}")
        if not 0 <= self.encoder_mask_ratio < 1:
            raise ValueError(f"SamplingConfig.encoder_mask_ratio must be in [0, 1), got {self.encoder_mask_ratio}")
        mask_counts(self.grid, self.encoder_mask_ratio, self.decoder_mask_ratio)  # raises with the fix

    @property
    def grid(self) -> tuple[int, int, int]:
        """The (T, H, W) cube-token grid of a clip."""
        return token_grid(self.num_frames, self.img_size, self.patch_size)

    @property
    def mask_counts(self) -> dict[str, int]:
        """Tokens per clip in visible_idx, query_idx and loss_idx."""
        return mask_counts(self.grid, self.encoder_mask_ratio, self.decoder_mask_ratio)


def clip_start(rng: np.random.Generator, num_stored_frames: int, num_frames: int, stride: int) -> int:
    """First frame of a clip: uniform over [0, n − T·s] (the clip spans T·s frames, the last s − 1
    unused, as the published loader's 64-frame window for 16 frames at stride 4), else 0 (padded)."""
    return int(rng.integers(0, max(num_stored_frames - num_frames * stride, 0) + 1))


def clip_starts(rng: np.random.Generator, num_stored_frames, num_frames: int, stride: int) -> np.ndarray:
    """`clip_start` for a batch of videos at once: (B,) int64."""
    free = np.maximum(np.asarray(num_stored_frames, np.int64) - num_frames * stride, 0)
    return rng.integers(0, free + 1)


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
    return [(int(i) * w_step, int(j) * h_step) for i, j in FIX_OFFSET_GRID]


def _crop_sides(short_side, img_size: int, scales) -> np.ndarray:
    """(..., len(scales)) candidate crop sides: scales of the short side; within 3 px of img_size snap to it."""
    sides = (np.asarray(short_side, np.int64)[..., None] * np.asarray(scales, np.float64)).astype(np.int64)
    return np.where(np.abs(sides - img_size) < 3, img_size, sides)


def _size_pairs(num_scales: int, max_distort: int) -> tuple[np.ndarray, np.ndarray]:
    """(height scale index, width scale index) of the allowed pairs, in crop_size_pairs' order."""
    i, j = np.meshgrid(np.arange(num_scales), np.arange(num_scales), indexing="ij")
    allowed = np.abs(i - j) <= max_distort
    return i[allowed], j[allowed]


def crop_size_pairs(image_w: int, image_h: int, img_size: int, scales=MULTISCALE_SCALES,
                    max_distort: int = 1) -> list[tuple[int, int]]:
    """Allowed (crop_w, crop_h): scales of the short side, at most max_distort scale steps apart."""
    sides = _crop_sides(min(image_w, image_h), img_size, scales)
    h_index, w_index = _size_pairs(len(scales), max_distort)
    return [(int(sides[j]), int(sides[i])) for i, j in zip(h_index, w_index)]


def multiscale_crop(rng: np.random.Generator, image_w: int, image_h: int, img_size: int,
                    scales=MULTISCALE_SCALES) -> tuple[int, int, int, int]:
    """One GroupMultiScaleCrop draw: (x0, y0, crop_w, crop_h) in source pixels."""
    pairs = crop_size_pairs(image_w, image_h, img_size, scales)
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    offsets = fix_offsets(image_w, image_h, crop_w, crop_h)
    x0, y0 = offsets[rng.integers(len(offsets))]
    return x0, y0, crop_w, crop_h


def multiscale_crops(rng: np.random.Generator, widths, heights, img_size: int, num_sample: int,
                     scales=MULTISCALE_SCALES, max_distort: int = 1) -> np.ndarray:
    """num_sample GroupMultiScaleCrop draws per video for a batch: (B, N, 4) int64 [x0, y0, w, h].

    Same rule as `multiscale_crop` (a size pair uniform over the allowed pairs, then one of the 13
    offsets uniformly), drawn for all B·N crops with two integer arrays.
    """
    widths, heights = np.asarray(widths, np.int64), np.asarray(heights, np.int64)
    sides = _crop_sides(np.minimum(widths, heights), img_size, scales)           # (B, S)
    h_index, w_index = _size_pairs(len(scales), max_distort)                     # (P,), (P,)
    pair = rng.integers(len(h_index), size=(len(widths), num_sample))            # (B, N)
    crop_w = np.take_along_axis(sides, w_index[pair], axis=1)
    crop_h = np.take_along_axis(sides, h_index[pair], axis=1)
    offset = FIX_OFFSET_GRID[rng.integers(len(FIX_OFFSET_GRID), size=pair.shape)]  # (B, N, 2)
    x0 = offset[..., 0] * ((widths[:, None] - crop_w) // 4)
    y0 = offset[..., 1] * ((heights[:, None] - crop_h) // 4)
    return np.stack([x0, y0, crop_w, crop_h], axis=-1)


META_FIELDS = ("num_frames", "width", "height")  # integers every sample's JSON member must hold


def parse_meta(json_bytes) -> dict:
    """A sample's JSON member (FORMAT.md) as a dict, with the fields the sampler needs checked."""
    meta = json.loads(bytes(json_bytes).decode("utf-8"))
    missing = [k for k in META_FIELDS if not isinstance(meta.get(k), int)]
    if missing:
        raise ValueError(f"sample metadata lacks integer {missing} (source {meta.get('source')!r}); "
                         f"repack the dataset with vmae2-shard")
    return meta


def parse_metas(members: list[bytes], sources: list[str]) -> list[dict]:
    """The JSON members of a batch, parsed in one json.loads (a third of the time of one call each)
    and checked like parse_meta; an error names the sample's source."""
    try:
        metas = json.loads(b"[" + b",".join(members) + b"]")
    except ValueError:
        metas = [None] * len(members)
    for i, meta in enumerate(metas):
        if not isinstance(meta, dict) or any(not isinstance(meta.get(k), int) for k in META_FIELDS):
            try:
                metas[i] = parse_meta(members[i])
            except ValueError as err:
                raise ValueError(f"{sources[i]}: {err}") from err
    return metas


def labels_of(metas: list[dict]) -> np.ndarray:
    """(B,) int64 labels, −1 for unlabeled samples."""
    return np.array([-1 if m.get("label") is None else int(m["label"]) for m in metas], np.int64)


def draw_pretrain_batch(metas: list[dict], rng: np.random.Generator, cfg: SamplingConfig,
                        stored_stride: int, masks_out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Everything random about a pre-training batch of B videos, N = cfg.num_sample crops each.

    Returns numpy arrays, batch first:
        start        (B,) int32            first stored frame of each clip
        boxes        (B, N, 4) int64       crop boxes [x0, y0, w, h] in source pixels
        roi_start    (B, N, 2) float32     [y0, x0] (fn.resize's ROI follows the tensor's H, W order)
        roi_end      (B, N, 2) float32     [y0 + h, x0 + w]
        visible_idx, query_idx, loss_idx   (B, N, count) int64, dali_pipes.masking.dual_masks
        label        (B,) int64            −1 when unlabeled
    Draw order: starts, crop sizes, crop offsets, then the B·N masks (one generator stream).
    masks_out: optional (B, N, count) int64 arrays the masks are written into (recycled memory).
    """
    num_videos, n = len(metas), cfg.num_sample
    start = clip_starts(rng, [m["num_frames"] for m in metas], cfg.num_frames, stored_stride)
    boxes = multiscale_crops(rng, [m["width"] for m in metas], [m["height"] for m in metas], cfg.img_size, n)
    x0, y0, w, h = np.moveaxis(boxes.astype(np.float32), -1, 0)
    if masks_out is None:
        masks_out = {k: np.empty((num_videos, n, c), np.int64) for k, c in cfg.mask_counts.items()}
    masks = {k: v.reshape(num_videos * n, -1) for k, v in masks_out.items()}  # views: written in place
    dual_masks(rng, num_videos * n, cfg.grid, cfg.encoder_mask_ratio, cfg.decoder_mask_ratio, out=masks)
    return {"start": start.astype(np.int32), "boxes": boxes,
            "roi_start": np.stack([y0, x0], axis=-1), "roi_end": np.stack([y0 + h, x0 + w], axis=-1),
            **masks_out,
            "label": labels_of(metas)}
