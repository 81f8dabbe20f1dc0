"""How much pre-training does `tiny` need on the synthetic set? A learning-curve probe for Table 1.

    python -m bench.budget pretrain --out /tmp/budget --steps 12000 [--decoder-mask-ratio 0.5]
    python -m bench.budget finetune --out /tmp/budget [--init /tmp/budget/pretrain-12000.pt] --steps 600

bench/table1.py runs the real pipeline (shards → DALI → trainer); on two CPU cores that affords a
few hundred steps per run. This probe keeps the model, loss, masks, parameter groups and lr
schedule of vmae2 but feeds clips rendered in memory by shard_tools.synth.render_clip (random
16-frame window at stride 2 and a random 112² crop; no codec, no multi-scale crop), so one core
runs about four times as many steps, and the question "does the loss leave 1.0 given more steps,
and does that help fine-tuning?" can be answered at all. Results are appended as JSON lines to
OUT/results.jsonl; `report` gathers them into bench/reports/cpu/budget.{json,md}.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay

from dali_pipes.masking import dual_masks
from shard_tools.synth import CLASSES, SHAPES, clip_shape, render_clip
from vmae2 import optim
from vmae2.config import PRESETS
from vmae2.model import IMAGENET_MEAN, IMAGENET_STD, VideoClassifier, VideoMAEv2
from vmae2.weights import load_classifier

REPORT_DIR = Path(__file__).parent / "reports" / "cpu"
SOURCE_FRAMES, SOURCE_WIDTH, SOURCE_HEIGHT, STRIDE = 64, 160, 128, 2
NOTES_MARK = "<!-- written by hand below: `report` keeps it -->"


def render_set(seed: int, num_videos: int, label: str = "motion") -> tuple[np.ndarray, np.ndarray]:
    """(labels (V,), frames uint8 (V, 64, 128, 160, 3)) of synthetic clips 0..V-1 of `seed`.

    label "motion" is the set's class (CLASSES); "shape" is the shape kind (SHAPES), which one frame shows.
    """
    pairs = [render_clip(seed, i, SOURCE_FRAMES, SOURCE_WIDTH, SOURCE_HEIGHT) for i in range(num_videos)]
    if label == "shape":
        labels = [clip_shape(seed, i, SOURCE_WIDTH, SOURCE_HEIGHT) for i in range(num_videos)]
    else:
        labels = [motion for motion, _ in pairs]
    return np.array(labels), np.stack([frames for _, frames in pairs])


def sample_clips(frames: np.ndarray, videos: np.ndarray, rng: np.random.Generator, num_frames: int,
                 size: int) -> torch.Tensor:
    """A random num_frames window at STRIDE and a random size² crop of each listed video."""
    span = num_frames * STRIDE
    clips = []
    for v in videos:
        t = rng.integers(0, SOURCE_FRAMES - span + 1)
        y, x = rng.integers(0, SOURCE_HEIGHT - size + 1), rng.integers(0, SOURCE_WIDTH - size + 1)
        clips.append(frames[v, t:t + span:STRIDE, y:y + size, x:x + size])
    return torch.from_numpy(np.stack(clips))                         # (B, T, H, W, 3) uint8


class SmallConvNet(torch.nn.Module):
    """A 4-stage 3D CNN (0.49 M parameters) for `finetune --arch cnn`.

    A baseline with convolutional priors: it asks whether a label can be learned from this many
    labeled clips at all, apart from the data hunger of a ViT trained from scratch.
    """

    def __init__(self, num_classes: int):
        super().__init__()

        def stage(inputs, outputs, kernel, stride):
            padding = tuple(k // 2 for k in kernel)
            return [torch.nn.Conv3d(inputs, outputs, kernel, stride, padding, bias=False),
                    torch.nn.BatchNorm3d(outputs), torch.nn.ReLU()]

        self.features = torch.nn.Sequential(*stage(3, 24, (1, 5, 5), (1, 2, 2)), *stage(24, 48, (3, 3, 3), 2),
                                            *stage(48, 96, (3, 3, 3), 2), *stage(96, 128, (3, 3, 3), 2),
                                            torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(128, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) * 255)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: uint8 (B, T, H, W, 3), as VideoClassifier takes them."""
        x = (clips.permute(0, 4, 1, 2, 3).float() - self.mean) / self.std
        return self.head(self.features(x))


def append_result(out: Path, row: dict) -> None:
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


@click.group()
def main():
    """Learning-curve probe of `tiny` on the synthetic set (see the module docstring)."""
    torch.set_flush_denormal(True)   # as vmae2.distributed.init does on CPU: subnormals are slow on x86


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for curves and weights.")
@click.option("--steps", default=12000, show_default=True, help="Optimizer steps (cosine schedule over all).")
@click.option("--videos", default=128, show_default=True, help="Unlabeled videos (synthetic seed 0).")
@click.option("--decoder-mask-ratio", default=0.5, show_default=True, help="0 = encoder masking only.")
@click.option("--save-every", default=2000, show_default=True, help="Steps between saved weights.")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads.")
def pretrain(out, steps, videos, decoder_mask_ratio, save_every, threads):
    """Pre-train tiny with the trainer's recipe (2 videos x 4 crops per step, peak lr 1.5e-3)."""
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = PRESETS["tiny"]
    _, frames = render_set(0, videos)
    torch.manual_seed(0)
    model = VideoMAEv2(cfg)
    optimizer = torch.optim.AdamW(optim.pretrain_param_groups(model, 0.05), lr=1.5e-3, betas=(0.9, 0.95),
                                  fused=True)
    rng, window, start = np.random.default_rng(0), [], time.perf_counter()
    curve = out / f"curve-dec{decoder_mask_ratio}.jsonl"
    curve.unlink(missing_ok=True)
    for step in range(steps):
        optim.set_lr(optimizer, optim.lr_at(step, peak_lr=1.5e-3, min_lr=1e-5, warmup_steps=steps // 20,
                                            total_steps=steps))
        videos_of_step = rng.integers(0, videos, 2).repeat(4)       # repeated augmentation, num_sample 4
        masks = dual_masks(rng, len(videos_of_step), cfg.grid, cfg.encoder_mask_ratio, decoder_mask_ratio)
        loss, _ = model(sample_clips(frames, videos_of_step, rng, cfg.num_frames, cfg.img_size), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            row = {"step": step + 1, "loss": float(np.mean(window)), "elapsed_s": time.perf_counter() - start}
            with open(curve, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(row, flush=True)
            window = []
        if (step + 1) % save_every == 0 or step + 1 == steps:
            torch.save(model.state_dict(), out / f"pretrain-dec{decoder_mask_ratio}-{step + 1}.pt")
    append_result(out, {"kind": "pretrain", "steps": steps, "videos": videos,
                        "decoder_mask_ratio": decoder_mask_ratio, "curve": str(curve),
                        "wall_s": time.perf_counter() - start, "threads": threads})


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder of the pretrain run.")
@click.option("--init", default="", help="Pre-trained weights (.pt from `pretrain`); empty = from scratch.")
@click.option("--steps", default=600, show_default=True, help="Fine-tuning steps of 8 clips.")
@click.option("--videos", default=64, show_default=True, help="Labeled training videos (seed 1).")
@click.option("--val-videos", default=256, show_default=True, help="Validation videos (seed 2).")
@click.option("--label", type=click.Choice(["motion", "shape"]), default="motion", show_default=True,
              help="What to classify: the set's motion class (8) or, as a check of the classifier, the shape kind (4).")
@click.option("--lr", default=1e-3, show_default=True, help="Peak lr (8 clips per step), layer decay 0.75 below it.")
@click.option("--arch", type=click.Choice(["vit", "cnn"]), default="vit", show_default=True,
              help="vit: tiny's VideoClassifier; cnn: SmallConvNet, a from-scratch baseline (no --init).")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads.")
def finetune(out, init, steps, videos, val_videos, label, lr, arch, threads):
    """Fine-tune tiny (layer decay 0.75, label smoothing 0.1, drop path 0.1), or train the CNN baseline.

    Either way, measure top-1 on the validation videos.
    """
    if arch == "cnn" and init:
        raise click.UsageError("--init loads ViT weights; --arch cnn trains from scratch only.")
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = PRESETS["tiny"]
    train_labels, train_frames = render_set(1, videos, label)
    val_labels, val_frames = render_set(2, val_videos, label)
    torch.manual_seed(0)
    num_classes = len(SHAPES if label == "shape" else CLASSES)
    report = "from scratch"
    if arch == "cnn":
        model = SmallConvNet(num_classes)
        groups = param_groups_weight_decay(model, 0.05)             # no decay for biases and norms
    else:
        model = VideoClassifier(cfg, num_classes, drop_path=0.1)
        if init:
            report = str(load_classifier(model, torch.load(init, map_location="cpu"), name=init))
        groups = optim.layer_decay_param_groups(model, 0.05, 0.75)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=True)
    rng, start, losses = np.random.default_rng(1), time.perf_counter(), []
    for step in range(steps):
        optim.set_lr(optimizer, optim.lr_at(step, peak_lr=lr, min_lr=lr / 1000, warmup_steps=steps // 10,
                                            total_steps=steps))
        videos_of_step = rng.integers(0, videos, 8)
        logits = model(sample_clips(train_frames, videos_of_step, rng, cfg.num_frames, cfg.img_size))
        loss = F.cross_entropy(logits, torch.from_numpy(train_labels[videos_of_step]), label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    correct, eval_rng = 0, np.random.default_rng(2)
    with torch.no_grad():
        for first in range(0, val_videos, 16):
            batch = np.arange(first, min(first + 16, val_videos))
            probs = sum(model(sample_clips(val_frames, batch, eval_rng, cfg.num_frames, cfg.img_size)).softmax(-1)
                        for _ in range(2))                          # 2 random views per video
            correct += int((probs.argmax(-1).numpy() == val_labels[batch]).sum())
    row = {"kind": "finetune", "arch": arch, "label": label, "lr": lr, "init": init or None, "init_report": report,
           "steps": steps, "videos": videos, "val_videos": val_videos, "top1": 100.0 * correct / val_videos,
           "final_train_loss": float(np.mean(losses[-50:])), "wall_s": time.perf_counter() - start}
    append_result(out, row)
    print(row, flush=True)


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder of the runs.")
@click.option("--report-dir", default=str(REPORT_DIR), show_default=True, help="Where budget.{json,md} go.")
def report(out, report_dir):
    """Gather OUT/results.jsonl and the curves into bench/reports/cpu/budget.{json,md}.

    The prose of budget.md below NOTES_MARK is kept.
    """
    out, report_dir = Path(out), Path(report_dir)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # Curves are read from their files, so a pre-training run still going (or stopped) shows too.
    curves = {path.stem.removeprefix("curve-dec"): [json.loads(line) for line in path.read_text().splitlines()]
              for path in sorted(out.glob("curve-dec*.jsonl"))}
    result = {"rows": rows, "curves": curves,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "processor": platform.processor() or platform.machine()}}
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "budget.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| label (chance) | init | peak lr | fine-tune steps | train videos | val videos | top-1 (%) "
             "| final train loss |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["kind"] == "finetune":
            label = row.get("label", "motion")          # rows from before --label were all motion
            chance = 100 / len(SHAPES if label == "shape" else CLASSES)
            start = Path(row["init"]).name if row["init"] else "scratch"
            if row.get("arch") == "cnn":
                start += " (3D CNN)"
            lines.append(f"| {label} ({chance:.1f} %) | {start} | "
                         f"{row.get('lr', 1e-3):g} | {row['steps']} | {row['videos']} | {row['val_videos']} | "
                         f"{row['top1']:.1f} | {row['final_train_loss']:.3f} |")
    for ratio, curve in curves.items():
        marks = [c for c in curve if c["step"] % 1000 == 0 or c is curve[0]]
        lines.append(f"\nPre-training loss, decoder_mask_ratio {ratio} (mean of 100 steps): "
                     + ", ".join(f"{c['step']}: {c['loss']:.4f}" for c in marks))
    md = report_dir / "budget.md"
    old = md.read_text() if md.exists() else ""
    notes = old[old.index(NOTES_MARK):] if NOTES_MARK in old else ""
    md.write_text("\n".join(lines) + "\n" + (f"\n{notes}" if notes else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
