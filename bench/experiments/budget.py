"""How much pre-training does `tiny` need on the synthetic set? A learning-curve probe on clips held in memory.

    python -m bench.experiments.budget pretrain --out /tmp/budget --steps 3000 [--decoder-mask-ratio 0.5]
    python -m bench.experiments.budget finetune --out /tmp/budget [--init RUN/pretrain_final.pt] [--label shape]
    python -m bench.experiments.budget plateau --out /tmp/budget --weights RUN/pretrain_final.pt
    python -m bench.experiments.budget report --out /tmp/budget

Every run goes through the one training loop (`vmae2.train.train`) with tiny's recipes (`pretrain_config`,
`finetune_config("tiny", "synth")`): lr schedule, layer decay, mixup/cutmix, clipping and checkpoints all come
from there. Only the data differ from a shard run: clips rendered by shard_tools.synth.render_clip are kept
in memory (cached as .npy in OUT) and served by `ClipLoader`, which has the loader contract of
dali_pipes (a random 16-frame window at the recipe's stride, a random 112² crop, a horizontal flip when
the recipe flips; no codec, no multi-scale crop, no RandAugment or random erasing). Pre-training masks
come from dali_pipes.masking.dual_masks. Fine-tuning is scored by `InMemoryClassification` on held-out
clips, softmax averaged over the recipe's test views (clips along time × crops along the width).

Each run appends one row (with its command, git commit and environment) to OUT/results.jsonl;
`report` gathers them into bench/reports/cpu/budget.{json,md}, keeping the notes below the marker.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from bench.env import environment, write_json_and_report
from dali_pipes.masking import dual_masks
from shard_tools.files import write_bytes_atomic
from shard_tools.synth import CLASSES, SHAPES, clip_labels, render_clip
from vmae2.config import finetune_config, pretrain_config
from vmae2.tasks import Classification
from vmae2.train import train

REPORT_DIR = Path(__file__).resolve().parent.parent / "reports" / "cpu"
SOURCE_FRAMES, SOURCE_WIDTH, SOURCE_HEIGHT = 64, 160, 128
LABELS = {"motion": CLASSES, "shape": SHAPES}
# Seeds of the three disjoint synthetic splits.
PRETRAIN_SEED, FINETUNE_SEED, VAL_SEED = 0, 1, 2


def render_set(seed: int, num_videos: int, label: str = "motion", cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 (V,), frames uint8 (V, 64, 128, 160, 3)) of synthetic clips 0..V-1 of `seed`.

    label: "motion" (the set's class, CLASSES) or "shape" (the main shape's kind, SHAPES), from
    shard_tools.synth.clip_labels. With cache_dir the frames are saved there once (.npy, atomically) and
    memory-mapped afterwards, so runs and processes that share a set render it once and share the pages.
    """
    if label not in LABELS:
        raise ValueError(f"label {label!r}: choose one of {', '.join(LABELS)}")
    labels = np.array([clip_labels(seed, i)[label] for i in range(num_videos)], dtype=np.int64)
    cache = Path(cache_dir) / f"clips-seed{seed}-{num_videos}x{SOURCE_FRAMES}x{SOURCE_HEIGHT}x{SOURCE_WIDTH}.npy"
    if cache_dir is not None and cache.is_file():
        return labels, np.load(cache, mmap_mode="r")
    frames = np.empty((num_videos, SOURCE_FRAMES, SOURCE_HEIGHT, SOURCE_WIDTH, 3), dtype=np.uint8)
    for i in tqdm(range(num_videos), desc=f"render seed {seed}", unit="video", leave=False):
        frames[i] = render_clip(seed, i, SOURCE_FRAMES, SOURCE_WIDTH, SOURCE_HEIGHT)[1]
    if cache_dir is not None:
        buffer = io.BytesIO()
        np.save(buffer, frames)
        write_bytes_atomic(cache, buffer.getvalue())
    return labels, frames


class ClipLoader:
    """The dali_pipes loader contract on clips held in memory: seeded, resumable, one epoch = every video once.

    Batches: video uint8 (B·N, T, S, S, 3) (N random views of each of B videos: a num_frames window at
    `stride`, an S² crop, a flip with p 0.5 when `flip`), label int64 (B·N,), keys, and with `mask_ratios`
    (encoder, decoder) the dual masks of each clip.
    """

    def __init__(self, frames: np.ndarray, labels: np.ndarray, batch_videos: int, *, num_sample: int,
                 num_frames: int, stride: int, img_size: int, seed: int = 0, flip: bool = False,
                 grid: tuple[int, int, int] | None = None, mask_ratios: tuple[float, float] | None = None):
        num_videos, stored, height, width = frames.shape[:4]
        if num_frames * stride > stored or img_size > min(height, width):
            raise ValueError(f"clips of {num_frames} frames at stride {stride} and {img_size}² crops do not fit "
                             f"videos of {stored} frames of {width}x{height}; lower num_frames, stride or img_size")
        if num_videos < batch_videos:
            raise ValueError(f"{num_videos} videos make no batch of {batch_videos}; render more videos "
                             f"or lower batch_videos_per_gpu")
        self.frames, self.labels, self.batch_videos, self.num_sample = frames, labels, batch_videos, num_sample
        self.num_frames, self.stride, self.img_size, self.seed, self.flip = num_frames, stride, img_size, seed, flip
        self.grid, self.mask_ratios = grid, mask_ratios
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return len(self.frames) // self.batch_videos

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = state["epoch"], state["batch"]

    def make_batch(self, epoch: int, b: int) -> dict:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.frames))
        videos = np.repeat(order[b * self.batch_videos:(b + 1) * self.batch_videos], self.num_sample)
        rng = np.random.default_rng([self.seed, epoch, b, 1])
        stored, height, width = self.frames.shape[1:4]
        span, size = self.num_frames * self.stride, self.img_size
        clips = []
        for v in videos:
            t = rng.integers(0, stored - span + 1)
            y, x = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
            clip = self.frames[v, t:t + span:self.stride, y:y + size, x:x + size]
            clips.append(clip[:, :, ::-1] if self.flip and rng.random() < 0.5 else clip)
        batch = {"video": torch.from_numpy(np.stack(clips)),                      # (B·N, T, S, S, 3) uint8
                 "label": torch.from_numpy(self.labels[videos]), "keys": [f"synth-{v:06d}" for v in videos]}
        if self.mask_ratios is not None:
            masks = dual_masks(rng, len(videos), self.grid, *self.mask_ratios)
            batch["masks"] = {k: torch.from_numpy(v) for k, v in masks.items()}
        return batch

    def __iter__(self):
        while self.batch < len(self):
            b = self.batch
            self.batch += 1
            yield self.make_batch(self.epoch, b)
        self.epoch, self.batch = self.epoch + 1, 0


def test_clips(frames: np.ndarray, num_frames: int, stride: int, img_size: int, num_clips: int,
               num_crops: int) -> np.ndarray:
    """(num_clips·num_crops, T, S, S, 3) test views of one video (T, H, W, 3), clip-major.

    Clips start evenly over the stored frames, crops slide along the long side at the centre of the short
    one, as the published test views; without their resize, so that a view has the train crops' scale.
    """
    stored, height, width = frames.shape[:3]
    span = num_frames * stride

    def spread(spare: int, count: int) -> list[int]:
        return [spare // 2] if count == 1 else [round(k * spare / (count - 1)) for k in range(count)]

    y0, x0 = (height - img_size) // 2, (width - img_size) // 2
    boxes = ([(y0, x) for x in spread(width - img_size, num_crops)] if width >= height
             else [(y, x0) for y in spread(height - img_size, num_crops)])
    return np.stack([frames[t:t + span:stride, y:y + img_size, x:x + img_size]
                     for t in spread(stored - span, num_clips) for y, x in boxes])


class InMemoryClassification(Classification):
    """Classification whose evaluation scores clips held in memory: softmax averaged over the test views.

    1 view during training, the config's test_num_clips × test_num_crops at the end (as the shard task).
    """

    def __init__(self, cfg, num_classes: int, val_frames: np.ndarray, val_labels: np.ndarray):
        super().__init__(cfg, num_classes=num_classes)
        self.val_frames, self.val_labels = val_frames, val_labels

    def evaluate(self, model, env, final: bool) -> dict:
        cfg = self.cfg
        clips, crops = (cfg.test_num_clips, cfg.test_num_crops) if final else (1, 1)
        model.eval()
        correct = 0
        with torch.no_grad():
            for frames, label in zip(self.val_frames, self.val_labels):
                views = test_clips(frames, cfg.model.num_frames, cfg.frame_stride, cfg.model.img_size, clips, crops)
                probs = model(torch.from_numpy(views).to(env.device)).float().softmax(-1).mean(0)
                correct += int(probs.argmax()) == int(label)
        return {"top1": 100.0 * correct / len(self.val_labels), "num_videos": len(self.val_labels),
                "views": clips * crops}


def run_record() -> dict:
    """What a results row carries about the code and machine that made it."""
    env = environment()
    return {k: env[k] for k in ("command", "git_commit", "git_dirty", "time_utc", "cpu", "cpu_count", "torch")}


def append_result(out: Path, row: dict) -> None:
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def pretrain_run(run_dir, frames: np.ndarray, *, steps: int, decoder_mask_ratio: float, overrides=None) -> dict:
    """tiny's pre-training recipe through vmae2.train.train on in-memory clips; returns the run's summary."""
    cfg = pretrain_config("tiny", {"out_dir": str(run_dir), "total_steps": steps, "device": "cpu",
                                   "model.decoder_mask_ratio": decoder_mask_ratio, "tensorboard": False,
                                   **(overrides or {})})
    m = cfg.model
    loader = ClipLoader(frames, np.zeros(len(frames), dtype=np.int64), cfg.batch_videos_per_gpu,
                        num_sample=cfg.num_sample, num_frames=m.num_frames, stride=cfg.frame_stride,
                        img_size=m.img_size, seed=cfg.seed, grid=m.grid,
                        mask_ratios=(m.encoder_mask_ratio, m.decoder_mask_ratio))
    return train(cfg, loader=loader)


def finetune_run(run_dir, train_set: tuple[np.ndarray, np.ndarray], val_set: tuple[np.ndarray, np.ndarray], *,
                 num_classes: int, init: str = "", overrides=None) -> dict:
    """tiny's synth fine-tuning recipe through vmae2.train.train on in-memory clips; returns the summary.

    The summary's "result" holds top-1 (%) over the validation videos with the recipe's test views.
    """
    cfg = finetune_config("tiny", "synth", {"out_dir": str(run_dir), "init": init, "device": "cpu",
                                            "tensorboard": False, **(overrides or {})})
    labels, frames = train_set
    m = cfg.model
    loader = ClipLoader(frames, labels, cfg.batch_videos_per_gpu, num_sample=cfg.num_sample,
                        num_frames=m.num_frames, stride=cfg.frame_stride, img_size=m.img_size, seed=cfg.seed,
                        flip=cfg.flip)
    task = InMemoryClassification(cfg, num_classes, val_set[1], val_set[0])
    return train(cfg, loader=loader, task=task)


def parse_sets(sets) -> dict:
    out = {}
    for item in sets:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: write --set key=value (a field of vmae2.config)", param_hint="--set")
        key, value = item.split("=", 1)
        out[key] = value
    return out


@click.group()
def main():
    """Learning-curve probe of `tiny` on the synthetic set (see the module docstring)."""


SET_HELP = "Config override key=value (vmae2.config field, e.g. log_every=50); repeatable."


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for runs, clip cache, results.")
@click.option("--steps", default=3000, show_default=True, help="Optimizer steps (the recipe's cosine over all).")
@click.option("--videos", default=128, show_default=True, help="Unlabeled videos (synthetic seed 0).")
@click.option("--decoder-mask-ratio", default=0.5, show_default=True, help="0 = encoder masking only (V1).")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads.")
@click.option("--set", "sets", multiple=True, help=SET_HELP)
def pretrain(out, steps, videos, decoder_mask_ratio, threads, sets):
    """Pre-train tiny with its recipe (2 videos x 4 crops per step) into OUT/pretrain-dec{RATIO}-{STEPS}."""
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, frames = render_set(PRETRAIN_SEED, videos, cache_dir=out)
    run_dir = out / f"pretrain-dec{decoder_mask_ratio}-{steps}"
    summary = pretrain_run(run_dir, frames, steps=steps, decoder_mask_ratio=decoder_mask_ratio,
                           overrides=parse_sets(sets))
    curve = [{"step": r["step"], "loss": r["loss"]} for r in read_metrics(run_dir) if "loss" in r]
    append_result(out, {"kind": "pretrain", "run": str(run_dir), "steps": steps, "videos": videos,
                        "decoder_mask_ratio": decoder_mask_ratio, "final_loss": summary["final_loss"],
                        "curve": curve, "wall_s": summary["wall_s"], "threads": threads, **run_record()})


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for runs, clip cache, results.")
@click.option("--init", default="", help="Pre-trained weights (e.g. RUN/pretrain_final.pt); empty = from scratch.")
@click.option("--videos", default=256, show_default=True, help="Labeled training videos (synthetic seed 1).")
@click.option("--val-videos", default=256, show_default=True, help="Validation videos (synthetic seed 2).")
@click.option("--label", type=click.Choice(sorted(LABELS)), default="motion", show_default=True,
              help="What to classify: the set's motion class (8) or the main shape's kind (4), which one frame shows.")
@click.option("--steps", default=0, show_default=True, help="Optimizer steps; 0 = the recipe's epochs (10).")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads.")
@click.option("--set", "sets", multiple=True, help=SET_HELP)
def finetune(out, init, videos, val_videos, label, steps, threads, sets):
    """Fine-tune tiny with the synth recipe (layer decay, mixup/cutmix, label smoothing); top-1 on held-out clips."""
    if init and not Path(init).exists():
        raise click.BadParameter(f"{init}: no such weights file; pass RUN/pretrain_final.pt of a pretrain run",
                                 param_hint="--init")
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_set = render_set(FINETUNE_SEED, videos, label, cache_dir=out)
    val_set = render_set(VAL_SEED, val_videos, label, cache_dir=out)
    start = Path(init).parent.name if init else "scratch"
    existing = len(list(out.glob("finetune-*")))
    run_dir = out / f"finetune-{existing:03d}-{label}-{start}"
    overrides = {**({"total_steps": steps} if steps else {}), **parse_sets(sets)}
    summary = finetune_run(run_dir, train_set, val_set, num_classes=len(LABELS[label]), init=init,
                           overrides=overrides)
    rows = read_metrics(run_dir)
    losses = [r["loss"] for r in rows if "loss" in r]
    append_result(out, {"kind": "finetune", "run": str(run_dir), "label": label, "init": init or None,
                        "steps": summary["steps"], "videos": videos, "val_videos": val_videos,
                        "top1": summary["result"]["top1"], "views": summary["result"]["views"],
                        "final_train_loss": losses[-1], "wall_s": summary["wall_s"], "threads": threads,
                        **run_record()})
    print(f"top-1 {summary['result']['top1']:.1f} % ({label}, {start}) -> {out / 'results.jsonl'}")


def plateau_losses(model, loader, batches: int) -> dict:
    """Pre-training loss of `model` and of predictors that know no scene, on the same clips and masks.

    zero: predict 0 for every normalised target (a loss of 1.0 per token by construction); constant: the
    one normalised patch that is best on average over these targets; per_position: the best such patch
    for each token position. A model at the `constant` loss has learned what every patch shares (e.g. a
    vertical light ramp), nothing about the scene.
    """
    from vmae2.model import normalize_video, token_stats

    model.eval()
    targets, positions, losses = [], [], []
    with torch.no_grad():
        for _, batch in zip(range(batches), loader):
            loss, _ = model(batch["video"], batch["masks"])
            losses.append(float(loss))
            pixels, _ = normalize_video(batch["video"])
            patches = model.patchify(pixels)                                     # (B, N, 2pp, 3)
            mean, std = token_stats(patches)
            targets.append(((patches - mean) / std).flatten(2))                  # (B, N, 2pp·3)
            positions.append(torch.gather(batch["masks"]["query_idx"], 1, batch["masks"]["loss_idx"]))
    target = torch.cat(targets)                                                  # (clips, N, 2pp·3)
    loss_tokens = torch.cat(positions)                                           # (clips, N_loss)
    picked = torch.gather(target, 1, loss_tokens[:, :, None].expand(-1, -1, target.shape[-1]))
    constant = (picked - picked.mean(dim=(0, 1))).pow(2).mean()
    per_position = (target - target.mean(dim=0)).pow(2).mean()                  # over all tokens
    return {"model": float(np.mean(losses)), "zero": float(picked.pow(2).mean()), "constant": float(constant),
            "per_position": float(per_position), "clips": int(target.shape[0])}


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the clip cache and results.")
@click.option("--weights", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Pre-training weights (RUN/pretrain_final.pt).")
@click.option("--videos", default=160, show_default=True,
              help="Videos to draw clips from: the labeled split (seed 1), which pre-training did not see.")
@click.option("--batches", default=16, show_default=True, help="Batches of the pre-training recipe to score.")
@click.option("--decoder-mask-ratio", default=0.5, show_default=True, help="Masks of the scored batches.")
def plateau(out, weights, videos, batches, decoder_mask_ratio):
    """Where a pre-training loss stands: the model vs predictors that know nothing of the scene."""
    from vmae2.model import VideoMAEv2
    from vmae2.weights import load_weights

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, frames = render_set(FINETUNE_SEED, videos, cache_dir=out)
    cfg = pretrain_config("tiny", {"model.decoder_mask_ratio": decoder_mask_ratio})
    model = VideoMAEv2(cfg.model)
    print(f"{weights}: {load_weights(model, weights)}")
    m = cfg.model
    loader = ClipLoader(frames, np.zeros(len(frames), dtype=np.int64), cfg.batch_videos_per_gpu,
                        num_sample=cfg.num_sample, num_frames=m.num_frames, stride=cfg.frame_stride,
                        img_size=m.img_size, seed=123, grid=m.grid,
                        mask_ratios=(m.encoder_mask_ratio, m.decoder_mask_ratio))
    result = plateau_losses(model, loader, batches)
    append_result(out, {"kind": "plateau", "weights": weights, "videos": videos, **result, **run_record()})
    print(json.dumps(result))


def report_text(rows: list[dict]) -> str:
    lines = ["# How much pre-training does tiny need on the synthetic set? (in-memory clips, one loop)", "",
             "| label (chance) | init | fine-tune steps | train videos | val videos (views) | top-1 (%) "
             "| train loss at the end | commit |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["kind"] == "finetune":
            chance = 100 / len(LABELS[row["label"]])
            start = Path(row["init"]).parent.name if row["init"] else "scratch"
            commit = row["git_commit"] + (" (dirty)" if row["git_dirty"] else "")
            lines.append(f"| {row['label']} ({chance:.1f} %) | {start} | {row['steps']} | {row['videos']} | "
                         f"{row['val_videos']} ({row['views']}) | {row['top1']:.1f} | "
                         f"{row['final_train_loss']:.3f} | {commit} |")
    for row in rows:
        if row["kind"] == "pretrain":
            every = max(1, len(row["curve"]) // 10)
            marks = [c for i, c in enumerate(row["curve"]) if i % every == 0 or i == len(row["curve"]) - 1]
            lines.append(f"\nPre-training loss, {Path(row['run']).name} ({row['videos']} videos, "
                         f"{row['wall_s']:.0f} s): " + ", ".join(f"{c['step']}: {c['loss']:.4f}" for c in marks))
    lines += ["", "Commands:", ""] + [f"    {command}" for command in dict.fromkeys(r["command"] for r in rows)]
    return "\n".join(lines) + "\n"


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, exists=True), help="Folder of the runs.")
@click.option("--report-dir", default=str(REPORT_DIR), show_default=True, help="Where budget.{json,md} go.")
def report(out, report_dir):
    """Gather OUT/results.jsonl into REPORT_DIR/budget.{json,md}; the notes below the marker are kept."""
    results = Path(out) / "results.jsonl"
    if not results.is_file():
        raise click.UsageError(f"{results} does not exist: run `pretrain` or `finetune` with --out {out} first")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line]
    print(write_json_and_report(Path(report_dir) / "budget.json", {"rows": rows, "environment": environment()},
                                report_text(rows)))


if __name__ == "__main__":
    main()
