"""Reconstruction images: unpatchify inverts patchify; what the encoder saw is shown unchanged."""
from __future__ import annotations

import numpy as np
import torch

from dali_pipes.masking import dual_masks
from vmae2 import build_pretrain_model
from vmae2.model import normalize_video
from vmae2.visualize import GREY, reconstruct, render_png, unpatchify

# 8x32x32 clips, 8x8 patches: a 4x4x4 token grid
SMALL = dict(num_frames=8, img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, mlp_hidden_dim=64,
             decoder_depth=1, decoder_embed_dim=32, decoder_num_heads=2)


def test_unpatchify_inverts_patchify():
    model = build_pretrain_model("tiny", **SMALL)
    pixels = torch.rand(2, 3, 8, 32, 32)
    assert torch.equal(unpatchify(model.patchify(pixels), model.cfg), pixels)


def test_reconstruction_keeps_visible_tokens_and_greys_unqueried_ones(tmp_path):
    torch.manual_seed(0)
    model = build_pretrain_model("tiny", **SMALL)
    video = torch.randint(0, 256, (2, 8, 32, 32, 3), dtype=torch.uint8)
    masks = {k: torch.from_numpy(v) for k, v in dual_masks(np.random.default_rng(0), 2, model.cfg.grid).items()}
    images = reconstruct(model, video, masks)
    pixels, _ = normalize_video(video)
    original = pixels.permute(0, 2, 3, 4, 1).numpy()
    assert np.allclose(images["original"], original)
    tokens = lambda a: model.patchify(torch.from_numpy(a).permute(0, 4, 1, 2, 3))  # noqa: E731
    recon, masked, orig = tokens(images["reconstruction"]), tokens(images["masked"]), tokens(original)
    N = recon.shape[1]
    vis = torch.zeros(2, N, dtype=torch.bool).scatter_(1, masks["visible_idx"], True)
    query = torch.zeros(2, N, dtype=torch.bool).scatter_(1, masks["query_idx"], True)
    assert torch.equal(recon[vis], orig[vis]) and torch.equal(masked[vis], orig[vis])
    assert torch.all(masked[~vis] == GREY)
    grey = (recon == GREY).flatten(2).all(dim=2)                   # (2, N) token entirely grey
    assert torch.equal(grey[~vis], ~query[~vis])               # removed: predicted iff queried
    png = render_png(images, tmp_path / "r.png", num_frames=3)
    assert png.stat().st_size > 0


def test_decoding_every_masked_token_leaves_no_grey_and_frames_are_enlarged(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    model = build_pretrain_model("tiny", **SMALL)
    video = torch.randint(0, 256, (2, 8, 32, 32, 3), dtype=torch.uint8)
    # what `visualize` asks for by default: the decoder queries every token the encoder did not see
    every = dual_masks(np.random.default_rng(0), 2, model.cfg.grid, 0.9, 0.0)
    masks = {k: torch.from_numpy(v) for k, v in every.items()}
    images = reconstruct(model, video, masks)
    recon = model.patchify(torch.from_numpy(images["reconstruction"]).permute(0, 4, 1, 2, 3))
    assert not (recon == GREY).flatten(2).all(dim=2).any()
    with Image.open(render_png(images, tmp_path / "r.png", num_frames=3)) as png:
        assert png.size[1] >= 2 * 3 * 192                         # 32-pixel frames drawn at least 192 high


def test_a_clip_shorter_than_the_columns_asked_for_is_drawn_once_per_frame(tmp_path):
    from PIL import Image

    def width(num_clip_frames, num_frames):
        images = {name: np.zeros((1, num_clip_frames, 16, 16, 3), np.float32)
                  for name in ("original", "masked", "reconstruction")}
        with Image.open(render_png(images, tmp_path / f"{num_clip_frames}-{num_frames}.png", num_frames)) as png:
            return png.size[0]

    assert width(2, 4) == width(2, 2) == width(8, 2) < width(8, 4)   # 2 frames: 2 columns, not a frame twice
