"""The reconstruction loss of a pre-training model next to predictors that see nothing of the clip.

A falling loss proves little on its own: a model can settle on what the data's average looks like. These
baselines say what that average is worth on the same held-out clips, masks and loss tokens.
"""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def recon_baselines(model, data: str, cfg, batches: int = 16, seed: int = 1234) -> dict:
    """Reconstruction loss of a pre-training model on held-out shards vs predictors that see no clip.

    constant: the one target patch that is best on average over these loss tokens; per_position: the best
    patch for each token position (the mean target there), fitted on these same clips, so it is an
    optimistic baseline; zero: predicting 0 (with the normalised target that is each patch's own mean, 1.0 by
    construction; with the pixel target, black). Targets are the model's own (cfg.model.normalize_target).

    Two more say whether the model draws what is inside a patch or only its average colour: patch_mean, the
    loss of an oracle that predicts each loss token as its own true mean (per channel), which is all that a
    model drawing flat patches could reach; detail, the share of that within-patch variance (edges, strokes,
    gradients about each patch's mean) that the model's prediction recovers: 1 - |(pred - its mean) - (target
    - its mean)|^2 / |target - its mean|^2 over the loss tokens. A model drawing flat patches scores 0, a
    perfect one 1; below 0 its structure is worse than none.
    """
    import dali_pipes
    from vmae2.model import gather_tokens, normalize_video, token_stats
    from vmae2.tasks import sampling_config

    model.eval()
    losses, targets, positions = [], [], []
    detail_err, detail_var = 0.0, 0.0
    loader = dali_pipes.pretrain_loader(data, cfg.batch_videos_per_gpu, sampling_config(cfg), device="cpu",
                                        seed=seed, num_threads=cfg.loader_threads)
    try:
        for batch, _ in zip(loader, range(batches)):
            loss, pred = model(batch["video"], batch["masks"])
            losses.append(float(loss))
            pixels, _ = normalize_video(batch["video"])
            patches = model.patchify(pixels)                                       # (B, N, 2pp, 3)
            token_idx = torch.gather(batch["masks"]["query_idx"], 1, batch["masks"]["loss_idx"])
            picked = torch.gather(patches, 1, token_idx[:, :, None, None].expand(-1, -1, *patches.shape[2:]))
            if cfg.model.normalize_target:
                mean, std = token_stats(picked, cfg.model.target_eps)
                picked = (picked - mean) / std
            targets.append(picked.flatten(2))                                      # (B, N_loss, 2pp·3)
            guess = gather_tokens(pred, batch["masks"]["loss_idx"].to(pred.device)).float().reshape(picked.shape)
            about_mean = picked - picked.mean(2, keepdim=True)
            detail_err += float((guess - guess.mean(2, keepdim=True) - about_mean).pow(2).sum())
            detail_var += float(about_mean.pow(2).sum())
            positions.append(token_idx)
    finally:
        loader.close()
    target, where = torch.cat(targets), torch.cat(positions)
    flat, flat_where = target.flatten(0, 1), where.flatten()
    sums = torch.zeros(cfg.model.num_patches, flat.shape[1]).index_add_(0, flat_where, flat)
    counts = torch.zeros(cfg.model.num_patches).index_add_(0, flat_where, torch.ones(len(flat_where)))
    per_position = (flat - (sums / counts.clamp(min=1)[:, None])[flat_where]).pow(2).mean()
    return {"model": float(np.mean(losses)), "constant": float((flat - flat.mean(0)).pow(2).mean()),
            "per_position": float(per_position), "zero": float(flat.pow(2).mean()),
            "patch_mean": detail_var / flat.numel(), "detail": 1.0 - detail_err / max(detail_var, 1e-12),
            "clips": int(target.shape[0]),
            "loss_tokens": int(flat.shape[0])}
