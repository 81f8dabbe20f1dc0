"""The pre-training loader: epochs of ready batches on the device, with exact mid-epoch resume.

Batch contract (what vmae2's pre-training forward takes, plus bookkeeping):

    video   uint8  (B·N, T, S, S, 3)      on the device; clip b·N + j is crop j of sample b
    masks   {"visible_idx": (B·N, N_vis), "query_idx": (B·N, N_query), "loss_idx": (B·N, N_loss)}
            int64, sorted, from dali_pipes.masking.dual_masks, on the device
    keys    list of B·N sample keys, aligned with the clips (each key repeated N times)
    label   int64 (B·N,) on the device, −1 for unlabeled samples

B = batch_size (videos decoded per step), N = num_sample (repeated augmentation).

Sharding across ranks: DALI's reader gives rank r the r-th contiguous range of samples (the ranges
rotate by one each epoch) and pads every range to ceil(num_samples / world_size) by repeating its
last sample, then to whole batches; so every rank runs len(loader) = ceil(ceil(num_samples /
world_size) / batch_size) batches per epoch, all samples are seen every epoch, and at most
world_size·batch_size duplicates fill the gaps. Nothing is dropped.

Resume: all randomness and the read position live in the sampling pipeline, which DALI checkpoints;
the clip pipeline is stateless. state_dict() holds the sampling pipeline's checkpoint taken right
after the last batch handed out, so a loader restored from it continues with exactly the batches the
uninterrupted one would have given.
"""
from __future__ import annotations

import math
import os
from collections import deque

import numpy as np
import torch

from .manifest import open_shards
from .pipeline import CLIP_INPUTS, clip_pipeline, sampling_pipeline
from .sampling import SamplingConfig


def _resolve_device(device) -> tuple[str, int | None, torch.device]:
    """(DALI backend "gpu"/"cpu", CUDA device id, torch device) for None / "cpu" / "cuda[:k]" / k."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    if device.type == "cpu":
        return "cpu", None, device
    if device.type != "cuda":
        raise ValueError(f"device must be None, 'cpu' or a CUDA device, got {device}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={device} asked for, but torch sees no CUDA GPU; pass device='cpu' "
                           f"(VP8/VP9/MJPEG shards only) or run on a GPU machine")
    index = torch.cuda.current_device() if device.index is None else device.index
    return "gpu", index, torch.device("cuda", index)


def _key(source_info: str) -> tuple[str, str]:
    """(sample key, shard path) from the reader's source info "shard.tar:offset:key.json"."""
    shard, _, member = source_info.rsplit(":", 2)
    return member.split(".", 1)[0], shard


class PretrainLoader:
    """Iterable over one epoch at a time (len = batches per epoch); see the module doc for the batch."""

    def __init__(self, data, batch_size: int, *, num_sample: int = 4, num_frames: int = 16,
                 img_size: int = 224, device=None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 stride: int = 4, patch_size: int = 16, encoder_mask_ratio: float = 0.9,
                 decoder_mask_ratio: float = 0.5, num_threads: int | None = None, shuffle: bool = True,
                 initial_fill: int = 256, prefetch: int = 2):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.shards = open_shards(data)
        self.cfg = SamplingConfig(num_frames=num_frames, stored_stride=self.shards.stored_stride(stride),
                                  img_size=img_size, num_sample=num_sample, patch_size=patch_size,
                                  encoder_mask_ratio=encoder_mask_ratio, decoder_mask_ratio=decoder_mask_ratio)
        self.cfg.grid  # rejects sizes that do not tile into cubes, before any pipeline is built
        self.backend, self.device_id, self.device = _resolve_device(device)
        cpu_only = self.backend == "cpu" and set(self.shards.codecs) - {"vp8", "vp9", "mjpeg"}
        if cpu_only:
            raise ValueError(f"{self.shards.root}: codecs {sorted(self.shards.codecs)} need the GPU decoder; "
                             f"DALI's CPU decoder reads only VP8, VP9 and MJPEG: repack with --codec vp9 or "
                             f"use a GPU")
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_threads = num_threads or max(1, (os.cpu_count() or 2))
        self.shuffle, self.initial_fill, self.prefetch = shuffle, initial_fill, prefetch
        self.batches_per_epoch = math.ceil(math.ceil(self.shards.num_samples / world_size) / batch_size)
        self._sampler = self._clips = None
        self._build(checkpoint=None, batches_done=0)

    # ---- pipelines -------------------------------------------------------------------------------
    def _build(self, checkpoint, batches_done: int) -> None:
        self.close()
        self._batches_done = batches_done      # batches handed out, over all epochs
        self._last_checkpoint = checkpoint     # sampling-pipeline state right after that batch
        self._pending = deque()                # host-side facts of batches fed but not yet returned
        self._sampler = sampling_pipeline(
            self.shards, self.cfg, self.rank, self.world_size, shuffle=self.shuffle,
            initial_fill=self.initial_fill, reader_seed=self.seed,
            batch_size=self.batch_size, num_threads=1, device_id=None,
            seed=self.seed * 7919 + self.rank + 1, prefetch_queue_depth=2, exec_dynamic=True,
            checkpoint=checkpoint)
        self._sampler.build()
        self._clips = clip_pipeline(
            self.cfg, self.backend, self._next_parameters,
            batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
            seed=self.seed, prefetch_queue_depth=self.prefetch, exec_dynamic=True)
        self._clips.build()

    def _next_parameters(self):
        """External-source callback of the clip pipeline: one batch from the sampling pipeline."""
        try:
            outputs = self._sampler.run()
        except Exception as err:  # the reader or the sampler (its message names the source or file)
            raise RuntimeError(f"reading samples from {self.shards.root} failed: {err}") from err
        named = dict(zip((*CLIP_INPUTS, "meta"), outputs))
        sources = [named["meta"][i].source_info() for i in range(len(named["meta"]))]
        self._pending.append({"sources": sources, "encoded": named["encoded"],
                              "checkpoint": self._sampler.checkpoint()})
        return tuple(named[name] for name in CLIP_INPUTS)

    def close(self) -> None:
        """Stop both pipelines and free their buffers (also on garbage collection)."""
        for pipe in (self._clips, self._sampler):
            if pipe is not None:
                pipe._shutdown()
        self._sampler = self._clips = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- iteration -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def epoch(self) -> int:
        """Epoch of the next batch (0-based)."""
        return self._batches_done // self.batches_per_epoch

    def __iter__(self):
        """The rest of the current epoch (a whole epoch unless resumed mid-epoch)."""
        if self._clips is None:
            raise RuntimeError("this loader was closed; build a new one")
        remaining = self.batches_per_epoch - self._batches_done % self.batches_per_epoch
        for _ in range(remaining):
            yield self._next_batch()

    def _next_batch(self) -> dict:
        try:
            outputs = self._clips.run()
        except RuntimeError as err:
            raise self._decode_error(err) from err
        facts = self._pending.popleft()
        n = self.cfg.num_sample
        video, visible, query, loss, label = (self._to_torch(out) for out in outputs)
        keys = [_key(s)[0] for s in facts["sources"] for _ in range(n)]
        batch = {
            "video": video.reshape(-1, *video.shape[2:]),                      # (B·N, T, S, S, 3)
            "masks": {"visible_idx": visible.reshape(-1, visible.shape[-1]),   # (B·N, N_vis)
                      "query_idx": query.reshape(-1, query.shape[-1]),         # (B·N, N_query)
                      "loss_idx": loss.reshape(-1, loss.shape[-1])},           # (B·N, N_loss)
            "keys": keys,
            "label": label.reshape(-1).repeat_interleave(n),                   # (B·N,)
        }
        self._batches_done += 1
        self._last_checkpoint = facts["checkpoint"]
        return batch

    def _to_torch(self, tensor_list) -> torch.Tensor:
        # DLPack shares DALI's buffer (no copy); with exec_dynamic DALI never reuses a returned buffer.
        return torch.from_dlpack(tensor_list.as_tensor())

    def _decode_error(self, err: Exception) -> Exception:
        """A decode failure, reported by the keys of the samples that fail PyAV's decoder too."""
        if not self._pending:
            return err
        facts = self._pending[0]
        bad = []
        for i, source in enumerate(facts["sources"]):
            key, shard = _key(source)
            if not _decodable(np.asarray(facts["encoded"][i]).tobytes()):
                bad.append(f"{key} (in {shard})")
        named = bad or [f"{_key(s)[0]} (in {_key(s)[1]})" for s in facts["sources"]]
        what = "corrupt samples" if bad else "decoding failed in a batch holding"
        return RuntimeError(f"{what}: {', '.join(named)}; remove them from the source and repack "
                            f"(vmae2-shard skips undecodable inputs). DALI said: {str(err).splitlines()[0]}")

    # ---- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue right after the last batch handed out."""
        return {"checkpoint": self._last_checkpoint, "batches_done": self._batches_done,
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "batch_size": self.batch_size, "num_samples": self.shards.num_samples}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (from state_dict() of a loader built with the same arguments)."""
        for name in ("seed", "rank", "world_size", "batch_size", "num_samples"):
            mine = self.shards.num_samples if name == "num_samples" else getattr(self, name)
            if state[name] != mine:
                raise ValueError(f"loader state was saved with {name}={state[name]} but this loader has "
                                 f"{name}={mine}; build the loader with the arguments of the saved run")
        self._build(checkpoint=state["checkpoint"], batches_done=state["batches_done"])


def _decodable(encoded: bytes) -> bool:
    import io

    import av

    try:
        with av.open(io.BytesIO(encoded)) as container:
            for _ in container.decode(video=0):
                pass
        return True
    except Exception:
        return False


def pretrain_loader(data, batch_size: int, *, num_sample: int = 4, num_frames: int = 16, img_size: int = 224,
                    device=None, rank: int = 0, world_size: int = 1, seed: int = 0, **options) -> PretrainLoader:
    """Batches of VideoMAE V2 pre-training from a vmae2-shard folder (or its manifest.json).

    options: stride (4, in source frames), patch_size (16), encoder_mask_ratio (0.9),
    decoder_mask_ratio (0.5), num_threads (all cores), shuffle (True), initial_fill (256, the
    reader's shuffle buffer), prefetch (2, batches the clip pipeline runs ahead).
    """
    return PretrainLoader(data, batch_size, num_sample=num_sample, num_frames=num_frames, img_size=img_size,
                          device=device, rank=rank, world_size=world_size, seed=seed, **options)
