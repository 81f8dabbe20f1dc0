"""Minimal fine-tuning: enough to measure what pre-training learned (not the full spec §7 recipe).

A VideoClassifier from a pre-training checkpoint (encoder weights; the decoder and the encoder's
final norm are dropped) or from scratch; cross-entropy with label smoothing; AdamW with layer-wise
lr decay; warmup + cosine; top-1 on a validation set, averaging softmax over a few views per video.
No mixup/cutmix, RandAugment or random erasing yet, one process only. Clips come from the
pre-training loader of dali_pipes (its multi-scale crops; its masks are ignored) with num_sample=1.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, distributed, optim, weights
from .weights import load_classifier
from .model import VideoClassifier
from .train_config import FinetuneConfig, finetune_config, parse_set_args, save_config


def dataset_labels(data) -> list[str]:
    from dali_pipes.manifest import open_shards
    from shard_tools.format import read_manifest

    labels = read_manifest(open_shards(data).root)["labels"]
    if not labels:
        raise ValueError(f"{data}: the dataset has no labels (manifest 'labels' is empty); fine-tuning needs "
                         f"a labeled set (vmae2-shard pack with class folders, or vmae2-shard synth)")
    return labels


def clip_loader(cfg: FinetuneConfig, data, batch_size: int, num_views: int, shuffle: bool, device):
    from dali_pipes import pretrain_loader

    m = cfg.model
    return pretrain_loader(data, batch_size, num_sample=num_views, num_frames=m.num_frames, img_size=m.img_size,
                           device=device, seed=cfg.seed, patch_size=m.patch_size,
                           encoder_mask_ratio=m.encoder_mask_ratio, decoder_mask_ratio=m.decoder_mask_ratio,
                           stride=cfg.frame_stride, shuffle=shuffle, num_threads=2)


@torch.no_grad()
def evaluate(model, loader, autocast, num_views: int) -> dict:
    """Top-1 over the unique videos of one epoch (the loader pads ranks by repeating samples)."""
    model.eval()
    seen, correct = set(), 0
    for batch in loader:
        with autocast:
            probs = model(batch["video"]).float().softmax(dim=-1)
        probs = probs.reshape(-1, num_views, probs.shape[-1]).mean(dim=1)       # average over views
        labels = batch["label"].reshape(-1, num_views)[:, 0]
        for key, p, y in zip(batch["keys"][::num_views], probs, labels):
            if key not in seen:
                seen.add(key)
                correct += int(p.argmax().item() == y.item())
    model.train()
    return {"top1": 100.0 * correct / max(len(seen), 1), "num_videos": len(seen)}


def finetune(cfg: FinetuneConfig) -> dict:
    env = distributed.init(cfg.device)
    if env.world_size > 1:
        raise RuntimeError("vmae2-train finetune runs in one process for now; start it without torchrun")
    for name in ("data", "val_data"):
        if not Path(getattr(cfg, name)).exists():
            raise FileNotFoundError(f"{name}={getattr(cfg, name)!r}: no such shard folder or manifest.json")
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    labels = dataset_labels(cfg.data)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and env.device.type == "cuda")
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    torch.manual_seed(cfg.seed)
    model = VideoClassifier(cfg.model, len(labels), drop_path=cfg.drop_path, head_dropout=cfg.head_dropout)
    init_report = "from scratch"
    if cfg.init:
        state, _ = weights.read_model_state(cfg.init)
        init_report = str(load_classifier(model, state, name=cfg.init))
    model.to(env.device)
    peak_lr = cfg.base_lr * cfg.batch_clips / 256
    min_lr = cfg.min_lr_base * cfg.batch_clips / 256
    groups = optim.layer_decay_param_groups(model, cfg.weight_decay, cfg.layer_decay)
    optimizer = optim.build_optimizer(groups, kind="adamw", lr=peak_lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      eps=1e-8, device=env.device)
    train_loader = clip_loader(cfg, cfg.data, cfg.batch_clips, 1, True, env.device)
    from tqdm import tqdm

    metrics = open(run_dir / "metrics.jsonl", "w")
    bar = tqdm(total=cfg.total_steps, unit="step", disable=not cfg.progress, dynamic_ncols=True)
    start, loss_sum, data = time.perf_counter(), torch.zeros((), device=env.device), _forever(train_loader)
    model.train()
    for step in range(cfg.total_steps):
        lr = optim.lr_at(step, peak_lr=peak_lr, min_lr=min_lr, warmup_steps=cfg.warmup_steps,
                         total_steps=cfg.total_steps)
        optim.set_lr(optimizer, lr)
        batch = next(data)
        if (batch["label"] < 0).any():
            raise ValueError(f"{cfg.data}: unlabeled samples {sorted(set(batch['keys']))[:3]} in a fine-tuning set")
        with autocast:
            logits = model(batch["video"])
        loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=cfg.label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.total_steps:
            row = {"step": step + 1, "loss": (loss_sum / cfg.log_every).item() if (step + 1) % cfg.log_every == 0
                   else loss.item(), "lr": lr, "elapsed_s": time.perf_counter() - start}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
            loss_sum.zero_()
    bar.close()
    metrics.close()
    train_loader.close()
    train_s = time.perf_counter() - start

    val_loader = clip_loader(cfg, cfg.val_data, cfg.batch_clips, cfg.num_eval_clips, False, env.device)
    result = evaluate(model, val_loader, autocast, cfg.num_eval_clips)
    val_loader.close()
    result.update({"init": cfg.init or None, "init_report": init_report, "train_s": train_s,
                   "steps": cfg.total_steps, "num_classes": len(labels)})
    torch.save(model.state_dict(), run_dir / "classifier_final.pt")
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _forever(loader):
    while True:
        yield from loader


def run_finetune(preset: str, data: str, val_data: str, out: str, init: str = "", steps: int | None = None,
                 sets=()) -> dict:
    """What `vmae2-train finetune` does: preset + overrides → config → finetune."""
    overrides = {"data": data, "val_data": val_data, "out_dir": out, "init": init or "", **parse_set_args(sets)}
    if steps is not None:
        overrides["total_steps"] = steps
    if init:
        # Take the architecture of the pre-training run unless overridden.
        _, config = weights.read_model_state(init)
        if config is not None:
            for key, value in config["model"].items():
                overrides.setdefault(f"model.{key}", value)
    return finetune(finetune_config(preset, overrides))
