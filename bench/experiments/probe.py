"""What a frozen encoder's features carry: a linear probe, the mirror and time-reversal checks, and the
reconstruction loss next to the predictors that know nothing of the clip.

    clip_features(model, data, cfg)          pooled features of every clip of a shard set, by key
    fit_probe(x, y) / probe_accuracy(...)    L2-regularised logistic regression (its strength by cross-validation)
    recon_baselines(model, data, cfg)        held-out loss of a pre-trained model vs the best constant patch and
                                             the best patch per position, on the same clips and masks

Everything reads the shards through the engine's own loaders (dali_pipes), as training does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

VIEWS = ("plain", "mirrored", "reversed")   # mirrored: left-right flip; reversed: frames in reverse order


def standard_error(accuracy_pct: float, n: int) -> float:
    """Binomial standard error (points) of an accuracy (%) over n clips."""
    p = accuracy_pct / 100
    return 100 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


@torch.no_grad()
def clip_features(model, data: str, cfg, views=("plain",), batch_size: int = 8) -> dict:
    """{"keys": [...], "labels": int64 (V,), view: float32 (V, D) for each view} of every video in `data`.

    One centre clip per video (the test loader's 1 x 1 view at the model's size); features are the
    classifier's `forward_features` (tokens mean-pooled, then fc_norm), as fine-tuning would see them.
    """
    from dali_pipes.classify import test_loader
    from vmae2.evaluate import eval_config

    model.eval()
    keys, labels, feats = [], [], {view: [] for view in views}
    views_cfg = eval_config(cfg, (1, 1))
    with test_loader(data, batch_size, views_cfg, device="cpu", num_threads=cfg.loader_threads) as loader:
        for batch in loader:
            valid = batch["valid"].numpy()
            video = batch["video"][valid]                                      # (B, T, H, W, 3) uint8
            keys += [k for k, ok in zip(batch["keys"], valid) if ok]
            labels.append(batch["label"].numpy()[valid])
            for view in views:
                clip = {"plain": video, "mirrored": video.flip(3), "reversed": video.flip(1)}[view]
                feats[view].append(model.forward_features(clip).float().numpy())
    return {"keys": keys, "labels": np.concatenate(labels), **{v: np.concatenate(f) for v, f in feats.items()}}


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, steps: int = 200):
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, l2_grid=(1e-4, 1e-3, 1e-2, 1e-1), folds: int = 5,
              seed: int = 0) -> dict:
    """Logistic regression on standardised features; the L2 strength is the one with the best k-fold accuracy
    on the training clips alone (the held-out clips choose nothing)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = torch.from_numpy((x - mean) / std).float()
    ys = torch.from_numpy(y).long()
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    scores = {}
    for l2 in l2_grid:
        correct = 0
        for k in range(folds):
            train, test = torch.from_numpy(fold != k), torch.from_numpy(fold == k)
            weight, bias = _fit(xs[train], ys[train], num_classes, l2)
            correct += int(((xs[test] @ weight + bias).argmax(1) == ys[test]).sum())
        scores[l2] = correct / len(y)
    best = max(l2_grid, key=lambda l2: (scores[l2], -l2))
    weight, bias = _fit(xs, ys, num_classes, best)
    return {"mean": mean, "std": std, "weight": weight, "bias": bias, "l2": best, "cv_accuracy": scores}


def probe_predict(probe: dict, x: np.ndarray) -> np.ndarray:
    xs = torch.from_numpy((x - probe["mean"]) / probe["std"]).float()
    return (xs @ probe["weight"] + probe["bias"]).argmax(1).numpy()


@torch.no_grad()
def recon_baselines(model, data: str, cfg, batches: int = 16, seed: int = 1234) -> dict:
    """Reconstruction loss of a pre-training model on held-out shards vs predictors that see no clip.

    constant: the one normalised patch that is best on average over these loss tokens; per_position: the
    best patch for each token position (the mean target there), fitted on these same clips, so it is an
    optimistic baseline; zero: predicting the patch mean (1.0 by construction of the normalised target).
    """
    import dali_pipes
    from vmae2.model import normalize_video, token_stats
    from vmae2.tasks import sampling_config

    model.eval()
    losses, targets, positions = [], [], []
    loader = dali_pipes.pretrain_loader(data, cfg.batch_videos_per_gpu, sampling_config(cfg), device="cpu",
                                        seed=seed, num_threads=cfg.loader_threads)
    try:
        for batch, _ in zip(loader, range(batches)):
            loss, _ = model(batch["video"], batch["masks"])
            losses.append(float(loss))
            pixels, _ = normalize_video(batch["video"])
            patches = model.patchify(pixels)                                       # (B, N, 2pp, 3)
            token_idx = torch.gather(batch["masks"]["query_idx"], 1, batch["masks"]["loss_idx"])
            picked = torch.gather(patches, 1, token_idx[:, :, None, None].expand(-1, -1, *patches.shape[2:]))
            if cfg.model.normalize_target:
                mean, std = token_stats(picked)
                picked = (picked - mean) / std
            targets.append(picked.flatten(2))                                      # (B, N_loss, 2pp·3)
            positions.append(token_idx)
    finally:
        loader.close()
    target, where = torch.cat(targets), torch.cat(positions)
    flat, flat_where = target.flatten(0, 1), where.flatten()
    sums = torch.zeros(cfg.model.num_patches, flat.shape[1]).index_add_(0, flat_where, flat)
    counts = torch.zeros(cfg.model.num_patches).index_add_(0, flat_where, torch.ones(len(flat_where)))
    per_position = (flat - (sums / counts.clamp(min=1)[:, None])[flat_where]).pow(2).mean()
    return {"model": float(np.mean(losses)), "constant": float((flat - flat.mean(0)).pow(2).mean()),
            "per_position": float(per_position), "zero": float(flat.pow(2).mean()), "clips": int(target.shape[0]),
            "loss_tokens": int(flat.shape[0])}
