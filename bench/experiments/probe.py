"""What a frozen encoder's features carry: a linear probe, the mirror and time-reversal checks, and the
reconstruction loss next to the predictors that know nothing of the clip.

    clip_features(model, data, cfg)          pooled features of every clip of a shard set, by key
    fit_probe(x, y) / probe_accuracy(...)    L2-regularised logistic regression (its strength by cross-validation)
    recon_baselines (from vmae2.baselines)   held-out loss of a pre-trained model vs the best constant patch and
                                             the best patch per position, on the same clips and masks

Everything reads the shards through the engine's own loaders (dali_pipes), as training does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vmae2.baselines import recon_baselines  # noqa: F401  (re-exported for bench.experiments)

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
