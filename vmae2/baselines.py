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
                mean, std = token_stats(picked, cfg.model.target_eps)
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
