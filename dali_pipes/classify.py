"""Fine-tuning and test loaders for video classification (spec §7), on the engine's ClipLoader.

Both are recipes for dali_pipes.loader.ClipLoader (reader pipeline checkpointed, numpy draws per
batch seeded by the batch's number, stateless clip pipeline), so the fine-tuning loader resumes
mid-epoch exactly like the pre-training one.

Fine-tuning batch (finetune_loader), B videos per step, N = num_sample augmented views of each:

    video   uint8 (B·N, T, S, S, 3) on the device; clip b·N + j is view j of video b (one decode)
    label   int64 (B·N,) on the device
    keys    list of B·N sample keys, aligned with the clips

Test batch (test_loader), B videos, V = num_clips·num_crops views of each, clip-major then crop:

    video   uint8 (B·V, T, S, S, 3) on the device; clip b·V + v is view v of video b (one decode)
    view    int64 (B·V, 2) [clip, crop] of each clip, on the device
    label   int64 (B,) on the device, one per video
    keys    list of B sample keys
    valid   bool (B,) on the device: False for the reader's padding (a repeat of a video this rank
            already gave in this epoch), so that summed over ranks every video counts exactly once

The published test score is the softmax of each view averaged over the V views of a video:
probs.reshape(B, V, C).mean(1), counted where valid.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn

from shard_tools.flipmap import FlipMapError, flip_permutation, read_flip_map
from shard_tools.format import MANIFEST_NAME, read_manifest
from shard_tools.index import parse_index

from . import augment
from .loader import ClipLoader
from .mixture import is_mixture, mixture_loader
from .shards import DatasetError, ShardSet, open_shards
from .views import (
    SAMPLINGS,
    EraseConfig,
    RandAugmentConfig,
    colour_mixes,
    erase_boxes,
    erase_fill,
    rand_augment_draws,
    random_resized_boxes,
    resized_size,
    test_views,
    train_frames,
)


# ---- configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneConfig:
    """What the fine-tuning loader draws; the defaults are the published Kinetics recipe.

    Something-Something V2: sampling="tsn", flip_prob=0.0.
    """

    num_frames: int = 16                     # frames per clip
    stride: int = 4                          # dense sampling: spacing in source frames (window num_frames·stride)
    sampling: str = "dense"                  # "dense" (Kinetics) or "tsn" (one frame per segment, SSv2)
    img_size: int = 224                      # output side of the random-resized crop
    num_sample: int = 2                      # repeated augmentation: augmented views per decoded clip
    crop_scale: tuple[float, float] = (0.08, 1.0)       # random-resized crop: area range, of the frame
    crop_ratio: tuple[float, float] = (0.75, 1.3333)    # random-resized crop: aspect (w / h) range
    flip_prob: float = 0.5                   # horizontal flip probability (0 for SSv2)
    label_flip: tuple[int, ...] | None = None   # class of a mirrored clip of class c (None: a flip keeps labels)
    labels_optional: bool = False            # a video without a label gets -1 (distillation, which needs none)
    rand_augment: RandAugmentConfig | None = field(default_factory=RandAugmentConfig)  # None: off
    erase: EraseConfig | None = field(default_factory=EraseConfig)                      # None: off
    colour_permute_prob: float = 0.0         # a view's colour channels in a random order (not in the recipes)
    invert_prob: float = 0.0                 # a view inverted, 255 - x (not in the recipes)

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.num_frames < 2 or self.stride < 1 or self.img_size < 1 or self.num_sample < 1:
            raise ValueError(f"num_frames ≥ 2, stride, img_size and num_sample ≥ 1 needed; got {self}")
        for name in ("flip_prob", "colour_permute_prob", "invert_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1 and 0 < self.crop_ratio[0] <= self.crop_ratio[1]):
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1 and crop_ratio 0 < min <= max; got "
                             f"{self.crop_scale}, {self.crop_ratio}")

    @property
    def recolours(self) -> bool:
        """Whether views get a channel mix (augment.recolour)."""
        return bool(self.colour_permute_prob or self.invert_prob)


@dataclass(frozen=True)
class TestConfig:
    """The published test views: K400 5 clips × 3 crops (dense), SSv2 2 × 3 (tsn)."""

    __test__ = False  # not a pytest class

    num_frames: int = 16        # frames per view
    stride: int = 4             # dense sampling: spacing in source frames
    sampling: str = "dense"     # "dense" or "tsn"
    num_clips: int = 5          # temporal views
    num_crops: int = 3          # spatial views along the long side
    short_side: int = 224       # frames are resized to this short side, crops are short_side²

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if min(self.num_clips, self.num_crops, self.num_frames, self.stride, self.short_side) < 1:
            raise ValueError(f"every count and size in {self} must be at least 1")

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops


# ---- labels ------------------------------------------------------------------------------------------
def check_labels(shards: ShardSet, what: str) -> None:
    """Every sample of the set carries an integer label, else DatasetError naming the unlabeled keys.

    Reads each json member through the index (one small read per sample), before any pipeline runs.
    """
    unlabeled, total = [], 0
    for tar_path, index_path in zip(shards.tar_paths, shards.index_paths):
        with open(index_path, encoding="utf-8") as f:
            samples = parse_index(f.read())
        with open(tar_path, "rb") as tar:
            for members in samples:
                for ext, offset, size, name in members:
                    if ext == "json":
                        tar.seek(offset)
                        label = json.loads(tar.read(size)).get("label")
                        if not isinstance(label, int):
                            unlabeled.append(name.split(".", 1)[0])
                total += 1
    if unlabeled:
        shown = ", ".join(unlabeled[:10]) + (f" and {len(unlabeled) - 10} more" if len(unlabeled) > 10 else "")
        raise DatasetError(f"{shards.root}: {len(unlabeled)} of {total} samples have no label ({shown}); a {what} "
                           f"set needs a label on every video: pack it from class folders or a label file "
                           f"(vmae2-shard pack), or leave these videos out")


def _labels(metas, optional: bool = False) -> np.ndarray:
    labels = [m.get("label") for m in metas]
    if optional:
        return np.array([label if isinstance(label, int) else -1 for label in labels], dtype=np.int64)
    if any(not isinstance(label, int) for label in labels):
        bad = [m.get("source") for m, label in zip(metas, labels) if not isinstance(label, int)]
        raise ValueError(f"samples without a label: {bad}; repack with labels")
    return np.array(labels, dtype=np.int64)


def flip_labels(cfg: FinetuneConfig, shards: ShardSet, flip_map=None, announce=None) -> FinetuneConfig:
    """cfg with the label permutation a horizontal flip applies to this set (module doc of finetune_loader).

    flip_map: a flip-map file or pairs (overrides the manifest's `flip_pairs`). A direction-sensitive set
    without pairs comes back with flip_prob 0, and `announce` (e.g. print) gets a one-line notice.
    """
    if cfg.flip_prob == 0:
        return cfg
    manifest = read_manifest(shards.root)
    where = f"flip map {flip_map}" if isinstance(flip_map, (str, Path)) else f"{shards.root / MANIFEST_NAME} flip_pairs"
    try:
        pairs = read_flip_map(flip_map) if isinstance(flip_map, (str, Path)) else flip_map
        if pairs is not None or manifest.get("flip_pairs"):    # a given map, even an empty one, wins
            pairs = manifest["flip_pairs"] if pairs is None else pairs
            perm = flip_permutation(pairs, manifest.get("labels") or [], where=where)
            return replace(cfg, label_flip=tuple(perm))
    except FlipMapError as err:
        raise DatasetError(f"{err}; fix the pairs (one pair of class names per line)") from None
    if manifest.get("direction_sensitive"):
        if announce is not None:
            announce(f"{shards.root}: direction-sensitive labels and no flip map (pack --flip-map, or --set "
                     f"label_flip_map=FILE): horizontal flip is off")
        return replace(cfg, flip_prob=0.0)
    return cfg


def _sizes(metas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.array([m[k] for m in metas], dtype=np.int64) for k in ("num_frames", "width", "height"))


# ---- fine-tuning -------------------------------------------------------------------------------------
class FinetuneRecipe:
    """ClipLoader recipe: published fine-tuning augmentation, N views per decoded clip."""

    def __init__(self, cfg: FinetuneConfig, stored_stride: int):
        self.cfg, self.stored_stride = cfg, stored_stride
        self.input_names = ("frames", "roi_start", "roi_end", "label")
        if cfg.rand_augment is not None:
            self.input_names += ("ra_op", "ra_param")
        if cfg.erase is not None:
            self.input_names += ("erase_anchor", "erase_shape", "erase_fill")
        if cfg.recolours:
            self.input_names += ("colour_mix", "colour_bias")
        # RandAugment's select splits the batch by op: DALI's conditionals.
        self.pipeline_kwargs = {"enable_conditionals": cfg.rand_augment is not None}

    def sample(self, metas, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg, batch, views = self.cfg, len(metas), self.cfg.num_sample
        num_frames, width, height = _sizes(metas)
        frames = train_frames(rng, num_frames, num_frames=cfg.num_frames, stride=self.stored_stride,
                              sampling=cfg.sampling)
        x0, y0, w, h = random_resized_boxes(rng, np.repeat(width, views), np.repeat(height, views),
                                            scale=cfg.crop_scale, ratio=cfg.crop_ratio).T.astype(np.float32)
        flip = rng.random(batch * views) < cfg.flip_prob
        # A mirrored box (x end left of x start) makes fn.resize flip the crop.
        roi_start = np.stack([y0, np.where(flip, x0 + w, x0)], axis=1)
        roi_end = np.stack([y0 + h, np.where(flip, x0, x0 + w)], axis=1)
        label = np.repeat(_labels(metas, cfg.labels_optional), views)
        if cfg.label_flip is not None:       # a mirrored "left" clip is a "right" one; -1 (no label) stays
            label = np.where(flip & (label >= 0), np.asarray(cfg.label_flip, dtype=np.int64)[label], label)
        arrays = {"frames": frames.astype(np.int32), "label": label.reshape(batch, views),
                  "roi_start": roi_start.reshape(batch, views, 2), "roi_end": roi_end.reshape(batch, views, 2)}
        size = cfg.img_size
        if cfg.rand_augment is not None:
            draws = rand_augment_draws(rng, batch * views, cfg.rand_augment, size)
            arrays.update({f"ra_{name}": draws[name].reshape(batch, views, -1) for name in ("op", "param")})
        if cfg.erase is not None:
            boxes = erase_boxes(rng, batch * views, size, cfg.erase)
            arrays["erase_anchor"] = boxes[:, [1, 0]].astype(np.float32).reshape(batch, views, 2)
            arrays["erase_shape"] = boxes[:, [3, 2]].astype(np.float32).reshape(batch, views, 2)
            arrays["erase_fill"] = erase_fill(rng, boxes, size).reshape(batch, views, size, size, 3)
        if cfg.recolours:        # drawn last: the other draws stay as without it
            mix, bias = colour_mixes(rng, batch * views, cfg.colour_permute_prob, cfg.invert_prob)
            arrays["colour_mix"], arrays["colour_bias"] = mix.reshape(batch, views, 3, 3), bias.reshape(batch, views, 3)
        return {name: np.ascontiguousarray(array) for name, array in arrays.items()}  # DALI takes no strides

    def clip_graph(self, inputs, decode_device: str):
        cfg = self.cfg
        frames = augment.decode_frames(inputs["encoded"], inputs["frames"], device=decode_device)
        views = []
        for j in range(cfg.num_sample):
            view = augment.crop_resize(frames, inputs["roi_start"][j], inputs["roi_end"][j], size=cfg.img_size)
            if cfg.rand_augment is not None:
                view = augment.rand_augment(view, inputs["ra_op"][j], inputs["ra_param"][j],
                                            num_ops=cfg.rand_augment.num_ops)
            if cfg.erase is not None:
                fill = inputs["erase_fill"][j]
                view = augment.erase(view, inputs["erase_anchor"][j], inputs["erase_shape"][j],
                                     fill.gpu() if decode_device == "mixed" else fill)
            if cfg.recolours:
                view = augment.recolour(view, inputs["colour_mix"][j], inputs["colour_bias"][j])
            views.append(view)
        return fn.stack(*views), inputs["label"]

    def batch(self, outputs, keys) -> dict:
        video, label = outputs
        views = self.cfg.num_sample
        return {"video": video.reshape(-1, *video.shape[2:]),          # (B·N, T, S, S, 3)
                "label": label.reshape(-1),                             # (B·N,): each view's own label
                "keys": [k for k in keys for _ in range(views)]}


# ---- test --------------------------------------------------------------------------------------------
class TestRecipe:
    """ClipLoader recipe: every test view of a video from one decode (no randomness)."""

    __test__ = False  # not a pytest class
    input_names = ("frames", "roi_start", "roi_end", "label")
    pipeline_kwargs = {}

    def __init__(self, cfg: TestConfig, stored_stride: int):
        self.cfg, self.stored_stride = cfg, stored_stride

    def sample(self, metas, rng) -> dict[str, np.ndarray]:
        cfg = self.cfg
        frames, roi_start, roi_end = [], [], []
        for n, width, height in zip(*_sizes(metas)):
            views = test_views(int(n), int(width), int(height), num_frames=cfg.num_frames, stride=self.stored_stride,
                               num_clips=cfg.num_clips, num_crops=cfg.num_crops, short_side=cfg.short_side,
                               sampling=cfg.sampling)
            frames.append(np.concatenate([v["frames"] for v in views[::cfg.num_crops]]))   # clip-major
            res_w, res_h = resized_size(int(width), int(height), cfg.short_side)
            scale = np.array([height / res_h, width / res_w])   # [y, x]: resized → stored pixels
            boxes = np.array([v["box"] for v in views[:cfg.num_crops]], dtype=np.float64)
            roi_start.append(boxes[:, [1, 0]] * scale)
            roi_end.append((boxes[:, [1, 0]] + boxes[:, [3, 2]]) * scale)
        arrays = {"frames": np.stack(frames).astype(np.int32), "label": _labels(metas),
                  "roi_start": np.stack(roi_start).astype(np.float32), "roi_end": np.stack(roi_end).astype(np.float32)}
        return {name: np.ascontiguousarray(array) for name, array in arrays.items()}  # DALI takes no strides

    def clip_graph(self, inputs, decode_device: str):
        """(num_crops, num_clips·T, S, S, 3): resizing the frame then cropping is one resize of the box's ROI."""
        frames = augment.decode_frames(inputs["encoded"], inputs["frames"], device=decode_device)
        crops = [augment.crop_resize(frames, inputs["roi_start"][j], inputs["roi_end"][j], size=self.cfg.short_side)
                 for j in range(self.cfg.num_crops)]
        return fn.stack(*crops), inputs["label"]

    def batch(self, outputs, keys) -> dict:
        video, label = outputs                                   # (B, J, K·T, S, S, 3)
        cfg = self.cfg
        b, size = video.shape[0], cfg.short_side
        video = video.reshape(b, cfg.num_crops, cfg.num_clips, cfg.num_frames, size, size, 3)
        video = video.permute(0, 2, 1, 3, 4, 5, 6).reshape(b * cfg.num_views, cfg.num_frames, size, size, 3)
        clip, crop = np.divmod(np.arange(cfg.num_views), cfg.num_crops)
        view = torch.from_numpy(np.tile(np.stack([clip, crop], axis=1), (b, 1))).to(video.device)
        return {"video": video, "view": view, "label": label.reshape(-1), "keys": list(keys)}


# ---- loaders -----------------------------------------------------------------------------------------
class TestLoader:
    """One pass over the test set per iteration, each video's views together, padding marked invalid."""

    __test__ = False  # not a pytest class

    def __init__(self, loader: ClipLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        seen = set()
        for batch in self.loader:
            valid = []
            for key in batch["keys"]:
                valid.append(key not in seen)
                seen.add(key)
            batch["valid"] = torch.tensor(valid, device=batch["video"].device)
            yield batch

    def bad_samples(self) -> list[dict]:
        """Videos left out of the pass so far (dali_pipes.bad_samples): their rows repeat another video, so
        `valid` marks them False, or their batch was dropped."""
        return self.loader.bad_samples()

    def samples_read(self) -> int:
        return self.loader.samples_read()

    def close(self) -> None:
        self.loader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def finetune_loader(data, batch_size: int, cfg: FinetuneConfig | None = None, *, device=None, rank: int = 0,
                    world_size: int = 1, seed: int = 0, num_threads: int | None = None, shuffle: bool = True,
                    initial_fill: int = 256, prefetch: int = 2, label_map=None, flip_map=None) -> ClipLoader:
    """Fine-tuning batches (module doc) from a labeled vmae2-shard folder; state_dict() / load_state_dict()
    resume mid-epoch. batch_size counts videos decoded per step (B·num_sample clips). With
    cfg.labels_optional an unlabeled folder loads too, its labels -1 (distillation uses none).

    A mirrored clip gets the class its mirror image belongs to: `flip_map` (a flip-map file or [[a, b], ...],
    shard_tools.flipmap) or else the manifest's `flip_pairs`; a set marked direction-sensitive with no
    pairs is not flipped (a one-line notice says so).

    data may also be a mixture (a mixture file or a list of {path, weight, stride}; dali_pipes.mixture),
    e.g. K710 from K400, K600 and K700 with `label_map` the K710 label map.
    """
    cfg = cfg or FinetuneConfig()
    if is_mixture(data):
        def one(path, stride, source_seed):
            return finetune_loader(path, batch_size, replace(cfg, stride=stride or cfg.stride), device=device,
                                   rank=rank, world_size=world_size, seed=source_seed, num_threads=num_threads,
                                   shuffle=shuffle, initial_fill=initial_fill, prefetch=prefetch, flip_map=flip_map)
        return mixture_loader(data, one, seed=seed, rank=rank, label_map=label_map)
    shards = open_shards(data)
    if not cfg.labels_optional:
        check_labels(shards, "fine-tuning")
    cfg = flip_labels(cfg, shards, flip_map, announce=print if rank == 0 else None)
    recipe = FinetuneRecipe(cfg, shards.stored_stride(cfg.stride) if cfg.sampling == "dense" else 1)
    return ClipLoader(shards, batch_size, recipe, device=device, rank=rank, world_size=world_size, seed=seed,
                        num_threads=num_threads, shuffle=shuffle, initial_fill=initial_fill, prefetch=prefetch)


def test_loader(data, batch_size: int, cfg: TestConfig | None = None, *, device=None, rank: int = 0,
                world_size: int = 1, num_threads: int | None = None, prefetch: int = 2) -> TestLoader:
    """Test batches (module doc) from a labeled vmae2-shard folder: every video once per pass, in order."""
    cfg = cfg or TestConfig()
    shards = open_shards(data)
    check_labels(shards, "test")
    recipe = TestRecipe(cfg, shards.stored_stride(cfg.stride) if cfg.sampling == "dense" else 1)
    return TestLoader(ClipLoader(shards, batch_size, recipe, device=device, rank=rank, world_size=world_size,
                                   seed=0, num_threads=num_threads, shuffle=False, initial_fill=1,
                                   prefetch=prefetch))


test_loader.__test__ = False  # a library function, not a pytest test
