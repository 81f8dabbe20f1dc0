"""How hard is the glyph label with few labels: a small CNN and tiny's ViT trained with labels, from scratch.

    python -m bench.experiments.ceiling --style varied --labelled 200
    python -m bench.experiments.ceiling --style plain --labelled 200 --labelled 2000

Before asking whether pre-training helps few-label fine-tuning, ask what labels alone reach: clips of
the glyph generator (shard_tools.glyphs) rendered in memory at a small CPU size, N labelled clips (seed
101, balanced), scored on held-out clips (seed 303), both models trained with AdamW on the glyph label:

    cnn   three 3x3 conv layers with max pooling on the clip's middle frame, standardised per clip: the
          easy baseline (translation built in)
    vit   tiny's classifier (depth 4, width 192) at this size, patch 6, the factorised position table, the
          whole clip through the model's own input normalisation

A set where the CNN stays near chance with N labels is too hard to show a pre-training effect with N
labels. Nothing here reads shards or runs the training loop: it measures the data, not the engine.
"""
from __future__ import annotations

import json
import math
import time

import click
import numpy as np
import torch
import torch.nn.functional as F

from bench.experiments.probe import standard_error
from shard_tools.glyphs import GLYPHS, STYLES, render_glyph_scene

TRAIN_SEED, HELD_OUT_SEED = 101, 303


def render(seed: int, count: int, size: int, frames: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (count, frames, size, size, 3) clips and their glyph labels, clips 0..count-1 of `seed`."""
    videos = np.empty((count, frames, size, size, 3), np.uint8)
    labels = np.empty(count, np.int64)
    for i in range(count):
        clip = render_glyph_scene(seed, i, num_frames=frames, width=size, height=size, style=style)
        videos[i], labels[i] = clip["frames"], clip["labels"]["glyph"]
    return videos, labels


class FrameCNN(torch.nn.Module):
    """Conv(32)-pool-conv(64)-pool-conv(64)-global max pool-linear on the middle frame, standardised per clip."""

    def __init__(self, num_classes: int):
        super().__init__()
        layers, width = [], 3
        for out in (32, 64, 64):
            layers += [torch.nn.Conv2d(width, out, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            width = out
        layers[-1] = torch.nn.AdaptiveMaxPool2d(1)
        self.features = torch.nn.Sequential(*layers, torch.nn.Flatten())
        self.head = torch.nn.Linear(width, num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = video[:, video.shape[1] // 2].permute(0, 3, 1, 2).float()   # (B, 3, H, W)
        x = (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1e-3)
        return self.head(self.features(x))


def build(model: str, size: int, frames: int) -> torch.nn.Module:
    if model == "cnn":
        return FrameCNN(len(GLYPHS))
    from vmae2 import build_classifier

    return build_classifier("tiny", len(GLYPHS), drop_path=0.0, img_size=size, patch_size=6, num_frames=frames,
                            pos_embed="3d")


@torch.no_grad()
def top1(net: torch.nn.Module, videos: np.ndarray, labels: np.ndarray, batch: int = 50) -> float:
    net.eval()
    pred = np.concatenate([net(torch.from_numpy(videos[i:i + batch])).argmax(1).numpy()
                           for i in range(0, len(videos), batch)])
    net.train()
    return 100 * float((pred == labels).mean())


def train_supervised(model: str, train: tuple, held_out: tuple, steps: int, lr: float, batch: int = 32,
                     seed: int = 0) -> dict:
    """Train `model` from scratch on the labelled clips; train and held-out top-1 (%) at the end."""
    size, frames = train[0].shape[2], train[0].shape[1]
    torch.manual_seed(seed)
    net = build(model, size, frames)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * max(0, s - warmup) / max(1, steps - warmup)))))
    rng = np.random.default_rng(seed)
    videos, labels = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(labels), batch))
        loss = F.cross_entropy(net(videos[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    held = top1(net, *held_out)
    return {"model": model, "labelled": len(labels), "steps": steps, "final_loss": loss.item(),
            "train_top1": top1(net, *train), "held_out_top1": held,
            "held_out_se": standard_error(held, len(held_out[1])),
            "wall_s": time.perf_counter() - start}


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--style", type=click.Choice(STYLES), default="varied", show_default=True,
              help="How the generator draws the digits (shard_tools.glyphs).")
@click.option("--labelled", multiple=True, type=int, default=(200,), show_default=True,
              help="Labelled training clips (repeatable: one run per count).")
@click.option("--held-out", default=400, show_default=True, help="Held-out clips.")
@click.option("--model", "models", multiple=True, type=click.Choice(("cnn", "vit")), default=("cnn", "vit"),
              show_default=True, help="Models to train (repeatable).")
@click.option("--steps", default=600, show_default=True, help="Optimizer steps of batch 32.")
@click.option("--lr", default=1e-3, show_default=True, help="Peak AdamW lr (warmup 10 %, then cosine).")
@click.option("--size", default=48, show_default=True, help="Frame side in pixels (a multiple of 6).")
@click.option("--frames", default=8, show_default=True, help="Frames per clip (even).")
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the rows to this JSON file.")
def main(style, labelled, held_out, models, steps, lr, size, frames, threads, out):
    torch.set_num_threads(threads)
    test = render(HELD_OUT_SEED, held_out, size, frames, style)
    rows = []
    for count in labelled:
        train = render(TRAIN_SEED, count, size, frames, style)
        for model in models:
            row = {"style": style, **train_supervised(model, train, test, steps, lr)}
            rows.append(row)
            click.echo(f"style {style}, {model}, {count} labelled, {steps} steps: train {row['train_top1']:.1f} %, "
                       f"held-out {row['held_out_top1']:.1f} ± {row['held_out_se']:.1f} % (chance "
                       f"{100 / len(GLYPHS):.0f} %), {row['wall_s']:.0f} s")
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
