"""Does pre-training learn anything spatial at a given budget? The smooth-image check, in minutes, without DALI.

    python -m bench.experiments.smooth [--steps 400] [--batch 8] [--lr 1e-3] [--mask-ratio 0.5] [--pos-embed 1d]

Clips are static smooth random images (a 4x4 grid of random colours, bicubically upsampled to the
preset's crop, the same in every frame): what a masked patch holds follows from its visible
neighbours, and from nothing else. `tiny`'s pre-training model (its own dual masking, pixel target)
trains on fresh clips with AdamW at a constant lr; every `--log-every` steps the script prints the
loss next to the clip-mean predictor's on the same batch (each masked patch predicted as its clip's mean
colour, which copying colour from the visible patches reaches). A model that has learned something
spatial goes clearly below that predictor; one that has learned colour sits on it.

Measured with the defaults (2 idle CPU cores, 148 s): 0.0692 against the clip-mean predictor's 0.0675
after 400 steps (ratio 1.02); the ratio drops between steps 750 and 1,000 (0.53 at 1,000). With
`--pos-embed 3d` it drops between 250 and 300 (0.44 at 400). See bench/reports/cpu/table1.md, "What we learned".
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import click
import numpy as np
import torch
import torch.nn.functional as F

from dali_pipes.masking import dual_masks


def smooth_clips(batch: int, num_frames: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, T, H, W, 3): a 4x4 grid of random colours upsampled bicubically, repeated over time."""
    grid = torch.rand(batch, 3, 4, 4, generator=generator)
    image = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    frames = (image * 255).round().to(torch.uint8).permute(0, 2, 3, 1)           # (B, H, W, 3)
    return frames[:, None].expand(-1, num_frames, -1, -1, -1).contiguous()


def clip_mean_loss(model, video: torch.Tensor, masks: dict) -> float:
    """The loss of predicting every loss token as its clip's mean colour (pixel target)."""
    from vmae2.model import normalize_video

    patches = model.patchify(normalize_video(video)[0])                           # (B, N, 2pp, 3)
    token_idx = torch.gather(masks["query_idx"], 1, masks["loss_idx"])
    target = torch.gather(patches, 1, token_idx[:, :, None, None].expand(-1, -1, *patches.shape[2:]))
    return float((target - patches.mean(dim=(1, 2), keepdim=True)).pow(2).mean())


def run(steps: int, batch: int, lr: float, mask_ratio: float, preset: str = "tiny", log_every: int = 25,
        seed: int = 0, pos_embed: str = "1d") -> Iterator[dict]:
    """Train `preset`'s pre-training model on smooth clips, yielding a row (step, loss, clip_mean, wall_s) every
    `log_every` steps and at the last, as it goes."""
    import vmae2

    torch.manual_seed(seed)
    model = vmae2.build_pretrain_model(preset, encoder_mask_ratio=mask_ratio, normalize_target=False,
                                       pos_embed=pos_embed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    cfg, start = model.cfg, time.perf_counter()
    for step in range(1, steps + 1):
        video = smooth_clips(batch, cfg.num_frames, cfg.img_size, generator)
        masks = {k: torch.from_numpy(v) for k, v in
                 dual_masks(rng, batch, cfg.grid, mask_ratio, cfg.decoder_mask_ratio).items()}
        loss, _ = model(video, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            yield {"step": step, "loss": loss.item(), "clip_mean": clip_mean_loss(model, video, masks),
                   "wall_s": time.perf_counter() - start}


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--steps", default=400, show_default=True, help="Optimizer steps (fresh clips every step).")
@click.option("--batch", default=8, show_default=True, help="Clips per step.")
@click.option("--lr", default=1e-3, show_default=True, help="AdamW learning rate (constant).")
@click.option("--mask-ratio", default=0.5, show_default=True, help="Encoder (tube) mask ratio.")
@click.option("--preset", default="tiny", show_default=True, help="Model preset.")
@click.option("--pos-embed", type=click.Choice(["1d", "3d"]), default="1d", show_default=True,
              help="Position table: 1d over the flat token index (published) or 3d (time, row, column).")
@click.option("--log-every", default=25, show_default=True, help="Print a row every this many steps.")
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
def main(steps, batch, lr, mask_ratio, preset, pos_embed, log_every, threads):
    torch.set_num_threads(threads)
    for row in run(steps, batch, lr, mask_ratio, preset, log_every, pos_embed=pos_embed):
        click.echo(f"step {row['step']:5d}  loss {row['loss']:.5f}  clip-mean predictor {row['clip_mean']:.5f}  "
                   f"ratio {row['loss'] / row['clip_mean']:.2f}  {row['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
