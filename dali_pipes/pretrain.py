"""The pre-training recipe of the engine and `pretrain_loader`, the loader vmae2 trains with.

Batch contract (what vmae2's pre-training forward takes, plus bookkeeping):

    video   uint8  (B·N, T, S, S, 3)      on the device; clip b·N + j is crop j of sample b
    masks   {"visible_idx": (B·N, N_vis), "query_idx": (B·N, N_query), "loss_idx": (B·N, N_loss)}
            int64, sorted, from dali_pipes.masking.dual_masks, on the device
    keys    list of B·N sample keys, aligned with the clips (each key repeated N times)
    label   int64 (B·N,) on the device, −1 for unlabeled samples

B = batch_size (videos decoded per step), N = sampling.num_sample (repeated augmentation),
T = sampling.num_frames, S = sampling.img_size. Sharding, prefetching and resume: loader.py.
"""
from __future__ import annotations

from collections import deque
from dataclasses import replace

import numpy as np
import torch

from . import graph
from .loader import ClipLoader
from .masking import MASK_KEYS
from .mixture import is_mixture, mixture_loader
from .sampling import SamplingConfig, draw_pretrain_batch
from .shards import open_shards


class PretrainRecipe:
    """Multi-scale crops of one decode per video, with fresh dual masks per crop (spec §3, §7)."""

    input_names = ("start", "roi_start", "roi_end", "visible_idx", "query_idx", "loss_idx", "label")

    def __init__(self, cfg: SamplingConfig, stored_stride: int):
        self.cfg, self.stored_stride = cfg, stored_stride
        # Mask arrays of batches the clip pipeline is done with (~1.7 MB per ViT-B batch of 32 × 4):
        # reusing them spares the page faults of fresh memory, most of the sampler's time.
        self._spare_masks = deque()

    def sample(self, metas: list[dict], rng: np.random.Generator) -> dict[str, np.ndarray]:
        spare = self._spare_masks.popleft() if self._spare_masks else None
        if spare is not None and len(spare["visible_idx"]) != len(metas):
            spare = None
        return draw_pretrain_batch(metas, rng, self.cfg, self.stored_stride, masks_out=spare)

    def release(self, arrays: dict[str, np.ndarray]) -> None:
        """Called by the loader once the clip pipeline has consumed (copied) a batch's arrays."""
        self._spare_masks.append({k: arrays[k] for k in MASK_KEYS})

    def clip_graph(self, inputs: dict, decode_device: str) -> tuple:
        frames = graph.decode_clip(inputs["encoded"], inputs["start"], num_frames=self.cfg.num_frames,
                                   stored_stride=self.stored_stride, device=decode_device)
        video = graph.multiscale_crops(frames, inputs["roi_start"], inputs["roi_end"],
                                       num_sample=self.cfg.num_sample, img_size=self.cfg.img_size)
        return (video, inputs["visible_idx"], inputs["query_idx"], inputs["loss_idx"], inputs["label"])

    def batch(self, outputs: tuple[torch.Tensor, ...], keys: list[str]) -> dict:
        video, visible, query, loss, label = outputs
        n = self.cfg.num_sample
        return {
            "video": video.reshape(-1, *video.shape[2:]),                      # (B·N, T, S, S, 3)
            "masks": {"visible_idx": visible.reshape(-1, visible.shape[-1]),   # (B·N, N_vis)
                      "query_idx": query.reshape(-1, query.shape[-1]),         # (B·N, N_query)
                      "loss_idx": loss.reshape(-1, loss.shape[-1])},           # (B·N, N_loss)
            "keys": [key for key in keys for _ in range(n)],
            "label": label.reshape(-1).repeat_interleave(n),                   # (B·N,)
        }


def pretrain_loader(data, batch_size: int, sampling: SamplingConfig, *, device=None, rank: int = 0,
                    world_size: int = 1, seed: int = 0, num_threads: int | None = None, shuffle: bool = True,
                    initial_fill: int = 256, prefetch: int = 2, label_map=None) -> ClipLoader:
    """Batches of VideoMAE V2 pre-training from a vmae2-shard folder (or its manifest.json), or from a
    mixture of several (a mixture file or a list of {path, weight, stride}: dali_pipes.mixture).

    batch_size: videos decoded per batch (the batch holds batch_size · sampling.num_sample clips).
    sampling: what is drawn per video; its stride is in source frames, mapped here to the stored
        stream of the shard set (its frame_stride).
    device: None (CUDA when torch sees one, else CPU), "cpu", "cuda[:k]" or k.
    rank, world_size: this process's share of every epoch; seed: reader shuffle and random draws.
    num_threads: DALI threads of the clip pipeline (default all cores); shuffle, initial_fill: the
    reader's shuffle buffer; prefetch: batches the clip pipeline runs ahead. label_map: a mixture's
    one label space (a label map file), when its datasets are labeled differently.
    """
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a dali_pipes.sampling.SamplingConfig, got {type(sampling).__name__}")
    if is_mixture(data):      # several datasets, each at its own stride (dali_pipes.mixture)
        def one(path, stride, source_seed):
            return pretrain_loader(path, batch_size, replace(sampling, stride=stride or sampling.stride),
                                   device=device, rank=rank, world_size=world_size, seed=source_seed,
                                   num_threads=num_threads, shuffle=shuffle, initial_fill=initial_fill,
                                   prefetch=prefetch)
        return mixture_loader(data, one, seed=seed, rank=rank, label_map=label_map)
    shards = open_shards(data)
    recipe = PretrainRecipe(sampling, shards.stored_stride(sampling.stride))
    return ClipLoader(shards, batch_size, recipe, device=device, rank=rank, world_size=world_size, seed=seed,
                      num_threads=num_threads, shuffle=shuffle, initial_fill=initial_fill, prefetch=prefetch)
