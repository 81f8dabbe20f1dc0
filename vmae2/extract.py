"""Feature extraction for downstream work (temporal action detection): one row per sliding window.

    vmae2-train extract --weights W --data D --out DIR

Every video of a vmae2-shard dataset, whole, as windows of `window` stored frames (at `frame_stride`)
starting every `step` frames: starts range(0, n − (window − 1)·frame_stride, step), the published rule
(spec §7). Frames come from dali_pipes.windows (DALI, streamed in bounded chunks); windows of many videos
are batched into one forward of VideoClassifier's encoder. Output, in DIR:

    <key>.npy              (num_windows, D) float32: mean-pooled tokens after fc_norm (--pool mean),
                           or (num_windows, N, D): the last block's tokens, before any norm (--pool none)
    index.jsonl            one line per video with rows: key, source, num_frames, fps, starts, rows, file
    skipped.jsonl          one line per video with no rows: key, source, reason, detail; reasons too_short,
                           checksum (its bytes differ from the CRC-32 its json records) and undecodable
    extract_config.json    the options that shaped the features; a rerun into DIR must use the same
    entries/<key>.json     per-video record, written after its .npy: what a rerun skips and rank 0 merges

Preprocessing ("--compat none", the default) is what the model was trained with: short side to
`size`, aspect kept, centre crop, ImageNet mean/std (the model's own normalize_video). "--compat
official" reproduces the published extractor: squash to size × size (bilinear, no antialiasing) and
pixels / 255 fed to the encoder *without* mean/std, a known defect its released features carry.

Under torchrun rank r takes videos r::world; rank 0 writes index.jsonl and skipped.jsonl once every rank
is done. Every file is written whole (temp name + rename), so a killed run leaves no torn .npy and a
rerun continues with the videos it has no entry for.
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shard_tools.files import write_bytes_atomic, write_json_atomic, write_text_atomic
from shard_tools.format import VIDEO_EXTS, checksum_mismatch
from shard_tools.index import parse_index, split_name

from . import distributed
from .config import ModelConfig, model_config
from .model import VideoClassifier, normalize_video, run_blocks
from .weights import architecture, load_weights, matching_preset, read_source

CONFIG_NAME = "extract_config.json"
INDEX_NAME = "index.jsonl"
SKIPPED_NAME = "skipped.jsonl"
ENTRIES_DIR = "entries"
POOL_MODES = ("mean", "none")
# Options that change the features: a rerun into the same folder must repeat them.
FEATURE_OPTIONS = ("weights", "data", "model", "window", "step", "frame_stride", "size", "compat", "pool")


def open_dataset(data):
    """The checked shard set (dali_pipes' opener, which names the file and the fix on a bad dataset)."""
    from dali_pipes.shards import open_shards

    return open_shards(data)


@dataclass(frozen=True)
class Video:
    """One sample of the dataset: where its encoded video lies in which tar, and its json metadata."""

    key: str
    tar: str
    offset: int
    size: int
    meta: dict

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def list_videos(shards) -> list[Video]:
    """Every sample in manifest order, located through the index files (no tar scan)."""
    videos = []
    for tar, idx in zip(shards.tar_paths, shards.index_paths, strict=True):
        with open(tar, "rb") as f:
            for members in parse_index(Path(idx).read_text(encoding="utf-8")):
                video = next(m for m in members if m[0] in VIDEO_EXTS)
                _, json_offset, json_size, _ = next(m for m in members if m[0] == "json")
                f.seek(json_offset)
                meta = json.loads(f.read(json_size))
                videos.append(Video(split_name(video[3])[0], tar, video[1], video[2], meta))
    return videos


def load_model(weights, preset: str | None, window: int | None, size: int | None) -> tuple[VideoClassifier, str]:
    """A VideoClassifier with the weights at `weights` (fine-tuned, or a pre-training run's encoder).

    The architecture is --preset, else the config saved with the weights, else the preset whose sizes
    the state dict has. Window and size set the model's num_frames and img_size (the position table is
    fixed, not learned, so any grid loads).
    """
    source = read_source(weights)            # read once: the architecture and the tensors come from it
    state, config = source.state, source.config
    if preset is None and config is not None and isinstance(config.get("model"), dict):
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        cfg = ModelConfig(**{k: v for k, v in config["model"].items() if k in names})
    else:
        preset = preset or matching_preset(architecture(state))
        if preset is None:
            raise ValueError(f"{weights}: no config with the weights and no preset has their sizes "
                             f"({architecture(state)}); pass --preset")
        cfg = model_config(preset)
    cfg = dataclasses.replace(cfg, num_frames=window or cfg.num_frames, img_size=size or cfg.img_size,
                              grad_checkpointing=False)
    if cfg.img_size % cfg.patch_size or cfg.num_frames % cfg.tubelet_size:
        raise ValueError(f"--size {cfg.img_size} must be a multiple of the patch size {cfg.patch_size} and "
                         f"--window {cfg.num_frames} of the tubelet size {cfg.tubelet_size}")
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 1
    model = VideoClassifier(cfg, num_classes, drop_path=0.0)
    report = load_weights(model, source)
    return model.eval(), str(report)


@torch.no_grad()
def window_features(model: VideoClassifier, frames: torch.Tensor, compat: str = "none",
                    pool: str = "mean") -> torch.Tensor:
    """Features of a batch of windows (B, T, S, S, 3) (uint8, or float in [0, 255]).

    pool "mean": (B, D), exactly VideoClassifier.forward_features; "none": (B, N, D) tokens.
    compat "official": the encoder gets pixels / 255 without mean/std, as the published extractor.
    """
    if compat == "official":
        x = frames.permute(0, 4, 1, 2, 3).float().div(255.0)            # (B, 3, T, S, S), no mean/std
    else:
        _, x = normalize_video(frames)                                 # (B, 3, T, S, S), ImageNet mean/std
    x = model.patch_embed(x) + model.pos_embed                          # (B, N, D)
    x = run_blocks(model.blocks, x, grad_checkpointing=False)
    return model.fc_norm(x.mean(dim=1)) if pool == "mean" else x        # (B, D) or (B, N, D)


@dataclass
class _Pending:
    """A video whose windows are (partly) in flight: rows come back batch by batch, in order."""

    video: Video
    starts: list[int]
    rows: list[torch.Tensor] = field(default_factory=list)   # (D,) or (N, D) each, on the model's device
    decoded: bool = False


def _entry_path(out: Path, key: str) -> Path:
    return out / ENTRIES_DIR / f"{key}.json"


def _write_features(out: Path, pending: _Pending) -> None:
    video = pending.video
    buf = io.BytesIO()
    rows = torch.stack(pending.rows).float().cpu().numpy()
    np.save(buf, rows)
    write_bytes_atomic(out / f"{video.key}.npy", buf.getvalue())
    write_json_atomic(_entry_path(out, video.key), {
        "key": video.key, "source": video.meta.get("source"), "num_frames": int(video.meta["num_frames"]),
        "fps": video.meta.get("fps"), "starts": pending.starts, "rows": len(rows), "file": f"{video.key}.npy"},
        indent=None)


def _write_skip(out: Path, video: Video, reason: str, detail: str) -> None:
    write_json_atomic(_entry_path(out, video.key), {"key": video.key, "source": video.meta.get("source"),
                                                    "reason": reason, "detail": detail}, indent=None)


def _check_config(out: Path, options: dict, is_main: bool) -> None:
    """The first run records its options; a rerun with other feature options would mix two kinds of rows."""
    path = out / CONFIG_NAME
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in FEATURE_OPTIONS if saved.get(k) != options.get(k)]
        if diff:
            pairs = ", ".join(_difference(k, saved.get(k), options.get(k)) for k in diff)
            raise ValueError(f"{path}: this folder holds features made with other options ({pairs}); pass the "
                             f"same options to continue it, or another --out")
    elif is_main:
        write_json_atomic(path, options)


def _difference(key: str, there, now) -> str:
    if isinstance(there, dict) and isinstance(now, dict):
        return ", ".join(f"{key}.{k}: {there.get(k)!r} there, {now.get(k)!r} now"
                         for k in sorted(set(there) | set(now)) if there.get(k) != now.get(k))
    return f"{key}: {there!r} there, {now!r} now"


def merge_index(out: Path, videos: list[Video]) -> tuple[int, int]:
    """index.jsonl and skipped.jsonl from the per-video entries, in dataset order; (rows videos, skipped)."""
    done, skipped, missing = [], [], []
    for video in videos:
        path = _entry_path(out, video.key)
        if not path.is_file():
            missing.append(video.key)
            continue
        entry = json.loads(path.read_text(encoding="utf-8"))
        (skipped if "reason" in entry else done).append(json.dumps(entry, sort_keys=True))
    if missing:
        raise RuntimeError(f"{out}: no features and no skip record for {len(missing)} videos ({missing[:3]}...); "
                           f"rerun the same command to finish them")
    write_text_atomic(out / INDEX_NAME, "".join(line + "\n" for line in done))
    write_text_atomic(out / SKIPPED_NAME, "".join(line + "\n" for line in skipped))
    return len(done), len(skipped)


def extract(weights, data, out, *, preset: str | None = None, window: int | None = None, step: int = 4,
            frame_stride: int = 1, size: int | None = None, compat: str = "none", pool: str = "mean",
            batch: int = 16, device: str = "auto", progress: bool = True) -> dict:
    """Features of every video of `data` into `out` (see the module doc); returns a summary."""
    from tqdm import tqdm

    from dali_pipes.windows import COMPAT_MODES, StreamError, WindowStream, window_starts

    if compat not in COMPAT_MODES:
        raise ValueError(f"--compat must be one of {', '.join(COMPAT_MODES)}, got {compat!r}")
    if pool not in POOL_MODES:
        raise ValueError(f"--pool must be one of {', '.join(POOL_MODES)}, got {pool!r}")
    if min(step, frame_stride, batch) < 1 or (window is not None and window < 2):
        raise ValueError(f"step ({step}), frame_stride ({frame_stride}), batch ({batch}) must be ≥ 1 and "
                         f"window ({window}) ≥ 2")
    env = distributed.init(device)
    shards = open_dataset(data)
    model, load_report = load_model(weights, preset, window, size)
    model.to(env.device)
    cfg = model.cfg
    out = Path(out)
    (out / ENTRIES_DIR).mkdir(parents=True, exist_ok=True)
    weights_id = str(weights) if str(weights).startswith("hf://") else str(Path(weights).resolve())
    options = {"weights": weights_id, "data": str(Path(shards.root).resolve()), "preset": preset,
               "window": cfg.num_frames, "step": step, "frame_stride": frame_stride, "size": cfg.img_size,
               "compat": compat, "pool": pool, "feature_dim": cfg.embed_dim,
               "dataset_frame_stride": shards.frame_stride, "model": dataclasses.asdict(cfg)}
    _check_config(out, options, env.is_main)

    videos = list_videos(shards)
    mine = videos[env.rank::env.world_size]
    todo = [v for v in mine if not _entry_path(out, v.key).is_file()]
    stream = WindowStream(size=cfg.img_size, compat=compat, device="gpu" if env.device.type == "cuda" else "cpu",
                          device_id=env.device.index)
    window_len, span = cfg.num_frames, (cfg.num_frames - 1) * frame_stride + 1
    batch_frames: list[torch.Tensor] = []
    batch_owners: list[_Pending] = []
    open_videos: list[_Pending] = []
    counts = {"written": 0, "skipped": 0, "windows": 0, "cut": 0}

    def run_batch():
        if batch_frames:
            feats = window_features(model, torch.stack(batch_frames).to(env.device), compat, pool)
            # Pooled rows stay on the device until their video is written, so the host decodes the next
            # windows while the GPU computes; token grids are large and come to the host now.
            feats = feats.cpu() if pool == "none" else feats
            for owner, row in zip(batch_owners, feats, strict=True):
                owner.rows.append(row)
            counts["windows"] += len(batch_frames)
            batch_frames.clear()
            batch_owners.clear()
        for pending in [p for p in open_videos if p.decoded and len(p.rows) == len(p.starts)]:
            _write_features(out, pending)
            open_videos.remove(pending)
            counts["written"] += 1

    start_time = time.perf_counter()
    bar = tqdm(total=len(todo), unit="video", disable=not (progress and env.is_main), dynamic_ncols=True)
    for video in todo:
        num_frames = int(video.meta["num_frames"])
        starts = list(window_starts(num_frames, window_len, step, frame_stride))
        encoded = video.read() if starts else b""
        # FFmpeg decodes through most damage without an error: only the checksum tells changed bytes
        changed = checksum_mismatch(encoded, video.meta) if starts else None
        if not starts:
            _write_skip(out, video, "too_short", f"{num_frames} frames; one window spans {span} "
                                                 f"({window_len} frames at stride {frame_stride})")
            counts["skipped"] += 1
        elif changed:
            _write_skip(out, video, "checksum", f"{changed}: {video.tar} was changed after packing; "
                                                f"`vmae2-shard verify {shards.root} --full` lists its bad videos")
            counts["skipped"] += 1
        else:
            pending = _Pending(video, starts)
            open_videos.append(pending)
            try:
                for _, frames in stream.windows(encoded, num_frames, window=window_len, step=step,
                                                frame_stride=frame_stride):
                    batch_frames.append(frames)
                    batch_owners.append(pending)
                    counts["cut"] += 1
                    if len(batch_frames) == batch:
                        run_batch()
                pending.decoded = True
            except StreamError as err:
                kept = [i for i, owner in enumerate(batch_owners) if owner is not pending]
                batch_frames[:] = [batch_frames[i] for i in kept]
                batch_owners[:] = [batch_owners[i] for i in kept]
                open_videos.remove(pending)
                _write_skip(out, video, "undecodable", str(err))
                counts["skipped"] += 1
        if not batch_frames:
            run_batch()  # writes the videos whose last rows came back
        bar.update(1)
        elapsed = time.perf_counter() - start_time
        bar.set_postfix(windows_per_s=f"{counts['cut'] / max(elapsed, 1e-9):.1f}")
    run_batch()
    bar.close()
    stream.close()
    elapsed = time.perf_counter() - start_time

    distributed.barrier()
    summary = {"out": str(out), "videos": len(videos), "this_rank": len(mine), "already_done": len(mine) - len(todo),
               "written": counts["written"], "skipped": counts["skipped"], "windows": counts["windows"],
               "seconds": round(elapsed, 3), "windows_per_s": round(counts["windows"] / max(elapsed, 1e-9), 2),
               "rank": env.rank, "world_size": env.world_size, "weights": load_report}
    if env.is_main:
        summary["index_videos"], summary["index_skipped"] = merge_index(out, videos)
    distributed.barrier()
    distributed.shutdown()
    return summary
