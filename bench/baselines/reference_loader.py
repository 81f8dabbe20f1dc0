"""The published recipe's loader, as users run it today: the baseline of every loader benchmark.

A torch DataLoader whose worker processes each decode one video with decord (PyAV where decord is
not installed), cut num_sample multi-scale crops with PIL bilinear resizing, draw the dual masks on
the CPU and collate. It reads the same vmae2-shard tars (through their index files) and draws its
random choices with the very same functions as the DALI pipeline (dali_pipes.sampling,
dali_pipes.masking), so the two differ only in how they decode and crop. Batches have the same fields
as dali_pipes.pretrain_loader's; the video is moved to the device in the main process.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dali_pipes.sampling import SamplingConfig, draw_pretrain_batch, frame_indices, parse_meta
from dali_pipes.shards import open_shards
from shard_tools.index import parse_index

try:
    import decord
except ImportError:  # PyAV (FFmpeg) is the fallback decoder
    decord = None


def decoder_name() -> str | None:
    """The decoder the reference loader will use: "decord", "pyav", or None where neither is installed."""
    if decord is not None:
        return "decord"
    try:
        import av  # noqa: F401
    except ImportError:
        return None
    return "pyav"


def decode_frames(encoded: bytes, indices: np.ndarray) -> np.ndarray:
    """(len(indices), H, W, 3) uint8 frames of an encoded video: decord get_batch, or PyAV."""
    if decord is not None:
        reader = decord.VideoReader(io.BytesIO(encoded), num_threads=1)
        return reader.get_batch(list(indices)).asnumpy()
    import av

    wanted, last = set(int(i) for i in indices), int(indices.max())
    frames = {}
    with av.open(io.BytesIO(encoded)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"  # one worker, one core: the published setting
        for n, frame in enumerate(container.decode(stream)):
            if n in wanted:
                frames[n] = frame.to_ndarray(format="rgb24")
            if n >= last:
                break
    last_seen = max(frames)  # a stored frame count that overstates the stream: repeat the last
    return np.stack([frames[min(int(i), last_seen)] for i in indices])


def multiscale_crop_resize(frames: np.ndarray, box, img_size: int) -> np.ndarray:
    """The same box on every frame, resized to img_size² with PIL bilinear (GroupMultiScaleCrop)."""
    x0, y0, w, h = (int(v) for v in box)
    return np.stack([np.asarray(Image.fromarray(f[y0:y0 + h, x0:x0 + w]).resize((img_size, img_size),
                                                                               Image.BILINEAR))
                     for f in frames])


class ShardVideos(Dataset):
    """Samples of a vmae2-shard dataset, read by byte range through the tars' index files."""

    def __init__(self, data, cfg: SamplingConfig, seed: int = 0):
        shards = open_shards(data)
        self.cfg, self.seed, self.epoch = cfg, seed, 0
        self.stored_stride = shards.stored_stride(cfg.stride)
        self.items = []  # (tar path, video offset, video size, json offset, json size, key)
        for tar, idx in zip(shards.tar_paths, shards.index_paths):
            with open(idx, encoding="utf-8") as f:
                samples = parse_index(f.read())
            for sample in samples:
                members = {ext: (offset, size, name) for ext, offset, size, name in sample}
                meta = members.pop("json")
                video = next(iter(members.values()))
                self.items.append((tar, video[0], video[1], meta[0], meta[1], meta[2].split(".", 1)[0]))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        tar, v_off, v_size, j_off, j_size, key = self.items[i]
        with open(tar, "rb") as f:
            f.seek(v_off)
            encoded = f.read(v_size)
            f.seek(j_off)
            meta = parse_meta(f.read(j_size))
        rng = np.random.default_rng([self.seed, self.epoch, i])
        p = {k: v[0] for k, v in draw_pretrain_batch([meta], rng, self.cfg, self.stored_stride).items()}
        idx = frame_indices(int(p["start"]), meta["num_frames"], self.cfg.num_frames, self.stored_stride)
        frames = decode_frames(encoded, idx)
        video = np.stack([multiscale_crop_resize(frames, box, self.cfg.img_size) for box in p["boxes"]])
        return {"video": torch.from_numpy(video), "key": key, "label": int(p["label"]),
                **{k: torch.from_numpy(p[k]) for k in ("visible_idx", "query_idx", "loss_idx")}}


def _collate(samples):
    n = samples[0]["video"].shape[0]
    video = torch.stack([s["video"] for s in samples])                    # (B, N, T, S, S, 3)
    return {"video": video.reshape(-1, *video.shape[2:]),
            "masks": {k: torch.cat([s[k] for s in samples]) for k in ("visible_idx", "query_idx", "loss_idx")},
            "keys": [s["key"] for s in samples for _ in range(n)],
            "label": torch.tensor([s["label"] for s in samples]).repeat_interleave(n)}


class ReferenceLoader:
    """Iterable of batches (one epoch per iteration), same fields as dali_pipes.pretrain_loader."""

    def __init__(self, data, batch_size, sampling: SamplingConfig, *, device="cpu", rank=0, world_size=1, seed=0,
                 num_workers=2):
        self.dataset = ShardVideos(data, sampling, seed)
        # The stock piece: a seeded permutation per epoch, padded by repetition to equal rank lengths.
        self.sampler = DistributedSampler(self.dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.device = torch.device(device)
        self.loader = DataLoader(self.dataset, batch_size, sampler=self.sampler, num_workers=num_workers,
                                 collate_fn=_collate, drop_last=False, pin_memory=self.device.type == "cuda",
                                 persistent_workers=num_workers > 0)
        self.epoch = 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.dataset.epoch = self.epoch
        for batch in self.loader:
            batch["video"] = batch["video"].to(self.device, non_blocking=True)
            batch["masks"] = {k: v.to(self.device, non_blocking=True) for k, v in batch["masks"].items()}
            batch["label"] = batch["label"].to(self.device, non_blocking=True)
            yield batch
        self.epoch += 1
