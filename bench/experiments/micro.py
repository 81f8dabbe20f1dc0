"""Does masked pre-training teach tiny's ViT the digit? Pre-training, probes and fine-tuning, small and in memory.

    python -m bench.experiments.micro --out /tmp/vmae2-micro

Clips of the plain glyph set (shard_tools.glyphs, style "plain") rendered in memory at 8 x 48 x 48: 2,000
unlabelled clips (seed 101) for pre-training, 200 labelled ones (seed 202, 20 per digit) for the probe and
fine-tuning, 400 held-out ones (seed 303) for every score. The model is tiny's (depth 4, width 192, decoder
depth 2) at patch 6 with the factorised 3-D position table (a 4 x 8 x 8 token grid):

    pretrain   dual masking (tube 0.9, running cell 0.5) on pixels, AdamW, 12,000 steps of 16 clips (about
               30 minutes on one core; 4,000 steps learn far less of the digit); the held-out loss next to the
               best constant patch and the best patch per position (training-clip means, the same masks)
    probe      logistic regression on the encoder's mean-pooled tokens (before any norm), L2 chosen by 5-fold
               CV on the labelled clips, from the pre-training and from a random init, for the digit and for
               the motion (also scored on the held-out clips mirrored and played backwards, against the
               motion they then show: a probe that reads motion keeps its score there); again with the
               2,000 pre-training clips' labels, to ask whether a label is in the features at all
    finetune   the classifier (mean pooling, fc_norm, head) trained on the 200 labelled clips with layer decay
               and a random shift of up to 4 px, from the pre-training and from scratch, same recipe

Nothing here reads shards or runs vmae2's training loop: it measures what the model learns from this
pre-training objective on this data, quickly. bench/experiments/table1 measures the engine. Each stage's
result is kept in OUT (a rerun continues).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from bench.env import environment, write_json_and_report
from bench.experiments import table1
from bench.experiments.ceiling import render, top1
from bench.experiments.probe import VIEWS, fit_probe, probe_predict, standard_error
from dali_pipes.masking import dual_masks
from shard_tools.files import write_json_atomic
from shard_tools.flipmap import flip_permutation
from shard_tools.glyphs import FLIP_PAIRS, GLYPHS, MOTIONS, glyph_labels

SPLITS = {"unlabelled": (101, 2000), "labelled": (202, 200), "held_out": (303, 400)}   # seed, default count
SIZE, FRAMES, PATCH = 48, 8, 6
GRID = (FRAMES // 2, SIZE // PATCH, SIZE // PATCH)


def model_overrides(**extra) -> dict:
    return dict(img_size=SIZE, patch_size=PATCH, num_frames=FRAMES, pos_embed="3d", **extra)


def cosine(step: int, steps: int, warmup: int) -> float:
    """lr factor: linear warmup from 0, then a half cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def pretrain(videos: np.ndarray, steps: int, lr: float, batch: int, seed: int = 0, shift: int = 0):
    """tiny's pre-training model at the micro size, trained with dual masks on pixels, each clip moved by up to
    `shift` pixels (0: not moved); (model, losses)."""
    from vmae2 import build_pretrain_model

    torch.manual_seed(seed)
    model = build_pretrain_model("tiny", **model_overrides(normalize_target=False))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    warmup = max(1, steps // 20)
    rng = np.random.default_rng(seed)
    clips, losses = torch.from_numpy(videos), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * cosine(step, steps, warmup)
        idx = torch.from_numpy(rng.integers(0, len(clips), batch))
        video = shifted(clips[idx], rng, shift) if shift else clips[idx]
        loss, _ = model(video, dual_masks(rng, batch, GRID, 0.9, 0.5))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


@torch.no_grad()
def recon_losses(model, train: np.ndarray, held_out: np.ndarray, batch: int = 50, seed: int = 7) -> dict:
    """Held-out loss of the model, of the best constant patch and of the best patch per position (the
    training clips' mean patch, overall and at each token position), all on the same masks."""
    from vmae2.model import normalize_video

    model.eval()
    total = None
    for i in range(0, len(train), batch):
        patches = model.patchify(normalize_video(torch.from_numpy(train[i:i + batch]))[0]).flatten(2).sum(0)
        total = patches if total is None else total + patches
    per_position = total / len(train)                                     # (N, 2pp·3)
    constant = per_position.mean(0, keepdim=True).expand_as(per_position)
    rng = np.random.default_rng(seed)
    sums = {"model": 0.0, "constant": 0.0, "per_position": 0.0}
    for i in range(0, len(held_out), batch):
        video = torch.from_numpy(held_out[i:i + batch])
        masks = {k: torch.from_numpy(v) for k, v in dual_masks(rng, len(video), GRID, 0.9, 0.5).items()}
        pixels = normalize_video(video)[0]
        sums["model"] += model(video, masks)[0].item() * len(video)
        for name, table in (("constant", constant), ("per_position", per_position)):
            pred = table[masks["query_idx"]]                              # (B, N_query, 2pp·3)
            sums[name] += model.forward_loss(pixels, pred, masks["query_idx"], masks["loss_idx"]).item() * len(video)
    model.train()
    out = {name: value / len(held_out) for name, value in sums.items()}
    out["ratio_to_per_position"] = out["model"] / max(out["per_position"], 1e-12)
    return out


def classifier(encoder_state: dict | None, seed: int = 0):
    """tiny's classifier at the micro size: a random init (seeded), or the pre-trained encoder's weights
    (all but its final norm, which the classifier does not have)."""
    from vmae2 import build_classifier

    torch.manual_seed(seed)
    net = build_classifier("tiny", len(GLYPHS), drop_path=0.0, **model_overrides())
    if encoder_state is not None:
        weights = {k.removeprefix("encoder."): v for k, v in encoder_state.items()
                   if k.startswith("encoder.") and not k.startswith("encoder.norm.")}
        missing, unexpected = net.load_state_dict(weights, strict=False)
        if unexpected or set(missing) - {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}:
            raise RuntimeError(f"encoder weights do not fit the classifier: missing {missing}, unexpected {unexpected}")
    return net


@torch.no_grad()
def pooled_tokens(net, videos: np.ndarray, batch: int = 50) -> np.ndarray:
    """(V, D) the encoder's output tokens, mean-pooled, before fc_norm."""
    from vmae2.model import normalize_video, run_blocks

    net.eval()
    out = []
    for i in range(0, len(videos), batch):
        x = normalize_video(torch.from_numpy(videos[i:i + batch]))[1]
        x = run_blocks(net.blocks, net.patch_embed(x) + net.pos_embed, False)
        out.append(x.mean(1).numpy())
    net.train()
    return np.concatenate(out)


def motion_labels(seed: int, count: int) -> np.ndarray:
    return np.array([glyph_labels(seed, i)["motion"] for i in range(count)])


def probe(net, train: tuple, held_out: tuple, train_seed: int, held_out_seed: int) -> dict:
    """Linear probes for the glyph and the motion label; the motion probe is also scored on the held-out
    clips mirrored and played backwards, against the motion they then show."""
    features = pooled_tokens(net, train[0])
    views = {"plain": held_out[0], "mirrored": held_out[0][:, :, :, ::-1], "reversed": held_out[0][:, ::-1]}
    held = {view: pooled_tokens(net, np.ascontiguousarray(clips)) for view, clips in views.items()}
    result = {}
    for label, y, y_held in (("glyph", train[1], held_out[1]),
                             ("motion", motion_labels(train_seed, len(train[1])),
                              motion_labels(held_out_seed, len(held_out[1])))):
        fitted = fit_probe(features, y, len(table1.LABELS[label]))
        row = {"l2": fitted["l2"], "labelled": len(y)}
        for view in VIEWS if label == "motion" else ("plain",):
            expected = y_held
            if view != "plain":
                pairs = FLIP_PAIRS if view == "mirrored" else table1.REVERSE_PAIRS
                expected = np.array(flip_permutation(pairs, list(MOTIONS)))[y_held]
            top1 = 100 * float((probe_predict(fitted, held[view]) == expected).mean())
            row[view] = {"top1": top1, "se": standard_error(top1, len(expected))}
        row.update(row["plain"])
        result[label] = row
    return result


def shifted(videos: torch.Tensor, rng: np.random.Generator, pixels: int) -> torch.Tensor:
    """Each clip moved by a random whole-pixel offset of up to `pixels` each way, its edges repeated."""
    B, T, H, W, C = videos.shape
    frames = videos.permute(0, 1, 4, 2, 3).reshape(B * T, C, H, W).float()
    padded = F.pad(frames, (pixels,) * 4, mode="replicate").reshape(B, T, C, H + 2 * pixels, W + 2 * pixels)
    out = torch.empty_like(videos)
    for b, (dy, dx) in enumerate(rng.integers(0, 2 * pixels + 1, (B, 2))):
        out[b] = padded[b, :, :, dy:dy + H, dx:dx + W].permute(0, 2, 3, 1).to(videos.dtype)
    return out


def recoloured(videos: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Each clip's colour channels in a random order, and with probability 0.5 inverted (255 - x): a clip's
    colours then say nothing about its label."""
    out = videos.clone()
    for b in range(len(out)):
        out[b] = out[b][..., torch.from_numpy(rng.permutation(3))]
        if rng.random() < 0.5:
            out[b] = 255 - out[b]
    return out


def finetune(net, train: tuple, held_out: tuple, steps: int, lr: float, layer_decay: float, batch: int = 32,
             shift: int = 4, seed: int = 0, colour: bool = False) -> dict:
    """AdamW with layer decay (vmae2.model.layer_id), warmup 10 % then cosine, weight decay 0.05 off 1-D
    parameters, clips shifted (and with `colour`, recoloured); train and held-out top-1 at the end."""
    from vmae2.model import layer_id

    depth = len(net.blocks)
    groups = {}
    for name, param in net.named_parameters():
        scale = layer_decay ** (depth + 1 - layer_id(name, depth))
        groups.setdefault((scale, param.ndim == 1), []).append(param)
    opt = torch.optim.AdamW([{"params": params, "scale": scale, "weight_decay": 0.0 if flat else 0.05}
                             for (scale, flat), params in groups.items()], lr=lr)
    rng = np.random.default_rng(seed)
    videos, labels = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"] * cosine(step, steps, max(1, steps // 10))
        idx = torch.from_numpy(rng.integers(0, len(labels), batch))
        video = shifted(videos[idx], rng, shift)
        loss = F.cross_entropy(net(recoloured(video, rng) if colour else video), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    held = top1(net, *held_out)
    return {"train_top1": top1(net, *train), "top1": held, "se": standard_error(held, len(held_out[1])),
            "final_loss": loss.item(), "wall_s": time.perf_counter() - start}


def stage(out: Path, name: str, compute) -> dict:
    """A stage's result, read back when OUT holds it, else computed and written."""
    path = out / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    write_json_atomic(path, result, indent=2, sort_keys=False)
    return result


def versus(a: dict, b: dict) -> str:
    """a's top-1 minus b's, with the difference's standard error and the difference in standard errors."""
    return table1.versus(a["top1"], a["se"], b["top1"], b["se"])


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--out", default="/tmp/vmae2-micro", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the pre-trained weights and each stage's result (a rerun continues there).")
@click.option("--unlabelled", default=SPLITS["unlabelled"][1], show_default=True, help="Pre-training clips.")
@click.option("--labelled", default=SPLITS["labelled"][1], show_default=True, help="Labelled clips (balanced).")
@click.option("--held-out", default=SPLITS["held_out"][1], show_default=True, help="Held-out clips.")
@click.option("--pretrain-steps", default=12000, show_default=True, help="Pre-training steps.")
@click.option("--pretrain-batch", default=16, show_default=True, help="Pre-training clips per step.")
@click.option("--pretrain-lr", default=1.5e-3, show_default=True, help="Pre-training peak lr.")
@click.option("--finetune-steps", default=600, show_default=True, help="Fine-tuning steps of 32 clips.")
@click.option("--finetune-lr", default=1e-3, show_default=True, help="Fine-tuning peak lr (the head's).")
@click.option("--layer-decay", default=0.5, show_default=True, help="Fine-tuning lr scale per layer down.")
@click.option("--pretrain-shift", default=0, show_default=True,
              help="Pre-training: move each clip by up to this many pixels (0: not moved).")
@click.option("--colour-aug/--no-colour-aug", default=False, show_default=True,
              help="Fine-tuning: random channel order and inversion (p 0.5) per clip.")
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
@click.option("--report-dir", default=str(table1.REPORT_DIR), show_default=True, help="Where micro.{json,md} go.")
def main(out, unlabelled, labelled, held_out, pretrain_steps, pretrain_batch, pretrain_lr, finetune_steps,
         finetune_lr, layer_decay, pretrain_shift, colour_aug, threads, report_dir):
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"unlabelled": unlabelled, "labelled": labelled, "held_out": held_out}
    data = {split: render(seed, counts[split], SIZE, FRAMES, "plain") for split, (seed, _) in SPLITS.items()}
    weights = out / "pretrained.pt"

    def run_pretrain():
        start = time.perf_counter()
        model, losses = pretrain(data["unlabelled"][0], pretrain_steps, pretrain_lr, pretrain_batch,
                                 shift=pretrain_shift)
        wall = time.perf_counter() - start
        torch.save(model.state_dict(), weights)
        tail = max(1, len(losses) // 10)
        return {"steps": pretrain_steps, "batch": pretrain_batch, "lr": pretrain_lr, "wall_s": wall,
                "first_loss": losses[0], "last_loss": float(np.mean(losses[-tail:])),
                "held_out": recon_losses(model, data["unlabelled"][0], data["held_out"][0])}

    rows = {"pretrain": stage(out, "pretrain", run_pretrain)}
    state = torch.load(weights)
    for init in ("pretrained", "random"):
        start = state if init == "pretrained" else None
        rows[f"probe_{init}"] = stage(out, f"probe_{init}", lambda: probe(
            classifier(start), data["labelled"], data["held_out"], SPLITS["labelled"][0], SPLITS["held_out"][0]))
        rows[f"probe_all_{init}"] = stage(out, f"probe_all_{init}", lambda: probe(
            classifier(start), data["unlabelled"], data["held_out"], SPLITS["unlabelled"][0], SPLITS["held_out"][0]))
        rows[f"finetune_{init}"] = stage(out, f"finetune_{init}", lambda: finetune(
            classifier(start), data["labelled"], data["held_out"], finetune_steps, finetune_lr, layer_decay,
            colour=colour_aug))
    config = {"unlabelled": unlabelled, "labelled": labelled, "held_out": held_out, "pretrain_steps": pretrain_steps,
              "pretrain_batch": pretrain_batch, "pretrain_lr": pretrain_lr, "finetune_steps": finetune_steps,
              "finetune_lr": finetune_lr, "layer_decay": layer_decay, "pretrain_shift": pretrain_shift,
              "colour_aug": colour_aug, "threads": threads}
    env = environment()
    click.echo(write_json_and_report(Path(report_dir) / "micro.json", {"rows": rows, "config": config, "env": env},
                                     report_text(rows, config, env)))


def report_text(rows: dict, config: dict, env: dict) -> str:
    pre, recon = rows["pretrain"], rows["pretrain"]["held_out"]
    lines = ["# Does masked pre-training teach tiny's ViT the digit? (in memory, 8x48x48)", "",
             f"tiny's widths at patch 6 with the 3-D position table, on the plain glyph set rendered in memory: "
             f"{config['unlabelled']} unlabelled clips, {config['labelled']} labelled ones "
             f"({config['labelled'] // len(GLYPHS)} per digit), {config['held_out']} held-out ones for every score. "
             "± is the binomial standard error over the held-out clips; a difference's ± combines both. "
             "Pre-trained and random init share every other setting.", "",
             f"    {env['command']}", "",
             f"{env['cpu']} ({env['cpu_count']} cores, {config['threads']} threads), torch {env['torch']}, commit "
             f"`{env['git_commit']}`{' (dirty tree)' if env.get('git_dirty') else ''}, {env['time_utc']}.", "",
             f"Pre-training: dual masking, {config['pretrain_steps']} steps of {config['pretrain_batch']} clips"
             + (f" each moved by up to ±{config['pretrain_shift']} px" if config.get("pretrain_shift") else "") + ", "
             f"peak lr {config['pretrain_lr']:g}, {pre['wall_s']:.0f} s; train loss {pre['first_loss']:.4f} → "
             f"{pre['last_loss']:.4f}. Held-out: {recon['model']:.4f}, against the best constant patch "
             f"{recon['constant']:.4f} and the best patch per position {recon['per_position']:.4f} "
             f"({recon['ratio_to_per_position']:.2f}x).", "",
             "| measure | label | pre-trained | random init | difference | mirrored (pre / rand) "
             "| reversed (pre / rand) |",
             "|---|---|---|---|---|---|---|"]
    for kind, title in (("probe", f"linear probe, {config['labelled']} labels"),
                        ("probe_all", f"linear probe, the {config['unlabelled']} pre-training clips' labels"),
                        ("finetune", f"fine-tuned on {config['labelled']} labels")):
        for label in ("glyph",) if kind == "finetune" else table1.LABELS:
            a, b = rows[f"{kind}_pretrained"], rows[f"{kind}_random"]
            if kind != "finetune":
                a, b = a[label], b[label]
            views = ["–", "–"]
            if label == "motion":
                views = [f"{a[view]['top1']:.1f} / {b[view]['top1']:.1f}" for view in ("mirrored", "reversed")]
            lines.append(f"| {title} | {label} (chance {100 / len(table1.LABELS[label]):.0f} %) | {a['top1']:.1f} ± "
                         f"{a['se']:.1f} | {b['top1']:.1f} ± {b['se']:.1f} | {versus(a, b)} | {' | '.join(views)} |")
    ft = rows["finetune_pretrained"], rows["finetune_random"]
    lines += ["", f"Fine-tuning: {config['finetune_steps']} steps of 32 clips, peak lr {config['finetune_lr']:g}, "
              f"layer decay {config['layer_decay']:g}, shift ±4 px"
              + ("; each clip's channels in a random order and inverted with p 0.5" if config.get("colour_aug") else "")
              + f"; train top-1 {ft[0]['train_top1']:.0f} % "
              f"(pre-trained) and {ft[1]['train_top1']:.0f} % (random init). Mirrored and reversed: the held-out clips "
              "flipped left-right or played backwards, scored against the motion they then show; a probe that reads "
              "the motion keeps its score there."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
