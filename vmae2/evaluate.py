"""The test protocol (spec §7): softmax per view, averaged over a video's clips × crops; top-1, top-5,
mean per-class accuracy; every video counted once over all ranks.

`vmae2-train eval` evaluates a classifier from anywhere vmae2.weights reads (our run or checkpoint, a
published fine-tuned .pth, safetensors, Hugging Face) and writes DIR/result.json and DIR/predictions.jsonl.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from shard_tools.files import write_json_atomic, write_text_atomic

from . import distributed
from .config import FinetuneConfig


@torch.no_grad()
def video_probabilities(model, loader, autocast) -> dict[str, tuple[int, np.ndarray]]:
    """{key: (label, softmax averaged over the video's views)} for the videos this rank's loader yields.

    Test batches (dali_pipes.classify.test_loader) hold B videos × V views, clip-major; `valid` marks
    the reader's padding (a repeat of a video this rank already gave), which is not counted.
    """
    was_training = model.training
    model.eval()
    videos = {}
    for batch in loader:
        with autocast:
            probs = model(batch["video"]).float().softmax(dim=-1)
        num_videos = len(batch["keys"])
        probs = probs.reshape(num_videos, -1, probs.shape[-1]).mean(dim=1).cpu().numpy()   # (B, C)
        valid = batch["valid"].tolist() if "valid" in batch else [True] * num_videos
        for key, label, p, ok in zip(batch["keys"], batch["label"].tolist(), probs, valid):
            if ok:
                videos.setdefault(key, (int(label), p))
    model.train(was_training)
    return videos


def gather_videos(local: dict) -> dict:
    """All ranks' per-video results merged by key (a video that two ranks saw counts once)."""
    merged = {}
    for part in distributed.all_gather_objects(local):
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged


def metrics(videos: dict[str, tuple[int, np.ndarray]]) -> dict:
    """top-1, top-5 and mean per-class accuracy (%) over videos {key: (label, probabilities)}."""
    if not videos:
        raise ValueError("no videos were evaluated")
    labels = np.array([label for label, _ in videos.values()])
    probs = np.stack([p for _, p in videos.values()])
    order = np.argsort(-probs, axis=1)
    top1 = order[:, 0] == labels
    top5 = (order[:, :5] == labels[:, None]).any(axis=1)
    per_class = [top1[labels == c].mean() for c in np.unique(labels)]
    return {"top1": 100.0 * top1.mean(), "top5": 100.0 * top5.mean(),
            "mean_class_accuracy": 100.0 * float(np.mean(per_class)), "num_videos": len(videos)}


def predictions_text(videos: dict[str, tuple[int, np.ndarray]]) -> str:
    lines = []
    for key in sorted(videos):
        label, probs = videos[key]
        top = np.argsort(-probs)[:5]
        lines.append(json.dumps({"key": key, "label": label, "top5": top.tolist(),
                                 "top5_prob": [round(float(probs[c]), 6) for c in top]}))
    return "\n".join(lines) + "\n"


def eval_config(cfg: FinetuneConfig, views: tuple[int, int]):
    """The test views of a run (dali_pipes.classify.TestConfig): clips × crops at the model's size."""
    from dali_pipes import classify

    m = cfg.model
    return classify.TestConfig(num_frames=m.num_frames, stride=cfg.frame_stride, sampling=cfg.sampling,
                               num_clips=views[0], num_crops=views[1], short_side=m.img_size)


def evaluate_views(model, cfg, data: str, views: tuple[int, int], env, out_dir=None) -> dict:
    """Evaluate `model` on the labeled shards `data` with clips × crops test views; all ranks call this."""
    from dali_pipes.bad_samples import merge_records
    from dali_pipes.classify import test_loader

    num_clips, num_crops = views
    loader = test_loader(data, cfg.batch_videos_per_gpu, eval_config(cfg, views), device=env.device,
                         rank=env.rank, world_size=env.world_size, num_threads=cfg.loader_threads)
    try:
        videos = gather_videos(video_probabilities(model, loader, distributed.autocast(cfg.precision, env.device)))
        # videos whose checksum or decode failed are left out of the scores (dali_pipes.bad_samples)
        bad = merge_records(distributed.all_gather_objects(loader.bad_samples()))
    finally:
        if hasattr(loader, "close"):
            loader.close()
    skipped = sorted(({k: r[k] for k in ("key", "shard", "reason")} for r in bad), key=lambda r: r["key"])
    result = {**metrics(videos), "views": f"{num_clips}x{num_crops}", "num_skipped": len(skipped),
              "skipped": skipped}
    if out_dir is not None and env.is_main:
        write_text_atomic(Path(out_dir) / "predictions.jsonl", predictions_text(videos))
    return result


def run_eval(weights: str, data: str, out: str, *, preset: str | None = None, views: str = "5x3",
             head_rows: str | None = None, sets=(), device: str = "auto") -> dict:
    """`vmae2-train eval`: a classifier from `weights` on the labeled shards `data` → OUT/result.json."""
    from .config import finetune_config
    from .datasets import dataset_num_classes
    from .model import VideoClassifier
    from .overrides import ConfigError, parse_set_args
    from .weights import load_weights, read_source

    try:
        num_clips, num_crops = (int(v) for v in views.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--views {views!r}: expected CLIPSxCROPS, e.g. 5x3") from None
    source = read_source(weights)            # read once: the run config and the tensors come from it
    run_config = source.config
    overrides = {"device": device, **parse_set_args(sets)}
    if run_config and "model" in run_config:
        preset = preset or run_config.get("preset")
        overrides.update({f"model.{k}": v for k, v in run_config["model"].items()})
        # a run of ours: its temporal sampling is what its test views must use too
        overrides.update({k: run_config[k] for k in ("frame_stride", "sampling") if k in run_config})
        overrides.update(parse_set_args(sets))
    cfg = finetune_config(preset or "vit_b", None, overrides)
    env = distributed.init(cfg.device)
    try:
        model = VideoClassifier(cfg.model, dataset_num_classes(data), drop_path=0.0)
        report = load_weights(model, source, head_rows=head_rows)
        model.to(env.device)
        if env.is_main:
            Path(out).mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        result = evaluate_views(model, cfg, data, (num_clips, num_crops), env, out_dir=out)
        result.update({"weights": str(weights), "data": str(data), "preset": cfg.preset, "load": str(report)})
        if env.is_main:
            write_json_atomic(Path(out) / "result.json", result, indent=2, sort_keys=False)
        return result
    finally:
        distributed.shutdown()
