import numpy as np
import pytest
import torch

from dali_pipes.masking import dual_masks, from_boolean, mask_counts, running_cell_mask, token_grid, tube_mask

GRID_B = (8, 14, 14)   # ViT-B, 16x224x224, patch 16
GRID_G = (8, 16, 16)   # ViT-g, patch 14


@pytest.mark.parametrize("grid,visible,query,loss", [
    (GRID_B, 160, 784, 704),
    (GRID_G, 208, 1024, 920),
])
def test_counts_at_ratio_half(grid, visible, query, loss):
    masks = dual_masks(np.random.default_rng(0), 5, grid, 0.9, 0.5)
    assert masks["visible_idx"].shape == (5, visible)
    assert masks["query_idx"].shape == (5, query)
    assert masks["loss_idx"].shape == (5, loss)
    assert mask_counts(grid, 0.9, 0.5) == {"visible_idx": visible, "query_idx": query, "loss_idx": loss}


@pytest.mark.parametrize("ratio,query", [(0.25, 1176), (0.5, 784), (0.75, 392), (0, 1408)])
def test_query_counts_per_ratio(ratio, query):
    masks = dual_masks(np.random.default_rng(1), 3, GRID_B, 0.9, ratio)
    assert masks["query_idx"].shape == (3, query)
    for b in range(3):
        q = masks["query_idx"][b]
        assert (np.diff(q) > 0).all()                         # sorted, unique
        removed = np.ones(8 * 196, bool)
        removed[masks["visible_idx"][b]] = False
        loss_tokens = q[masks["loss_idx"][b]]
        assert removed[loss_tokens].all()                       # loss tokens were removed by the encoder
        assert removed[q].sum() == len(loss_tokens)             # ...and are all such queries
    if ratio == 0:  # VideoMAE V1: the decoder reconstructs exactly the encoder-removed tokens
        assert masks["loss_idx"].shape == (3, 1408)


def test_running_cell_phase_zero_matches_spec():
    mask = running_cell_mask(np.array([0]), (8, 2, 2), 0.5).reshape(8, 2, 2)
    kept = [sorted(zip(*np.nonzero(~mask[t]))) for t in range(8)]
    expected = [[(0, 1), (1, 0)], [(0, 0), (0, 1)], [(0, 0), (1, 1)], [(1, 0), (1, 1)]]
    assert kept[:4] == expected
    assert kept[4:] == expected                                 # the cycle repeats with period 4


def test_running_cell_tiles_the_grid_and_phases_shift():
    mask = running_cell_mask(np.arange(4), GRID_B, 0.5).reshape(4, 8, 14, 14)
    cell = mask[:, :, :2, :2]
    assert (mask == np.tile(cell, (1, 1, 7, 7))).all()
    # phase φ at slice t equals phase 0 at slice t + φ
    for phase in range(4):
        assert (mask[phase, :4] == mask[0, phase:phase + 4]).all()


@pytest.mark.parametrize("ratio,times", [(0.5, 4), (0.25, 6), (0.75, 2)])
def test_every_position_decoded_equally_often(ratio, times):
    mask = running_cell_mask(np.arange(4), GRID_B, ratio).reshape(4, 8, 196)
    decoded = (~mask).sum(axis=1)
    assert (decoded == times).all()


def test_tube_mask_constant_over_time_and_uniform():
    rng = np.random.default_rng(2)
    mask = tube_mask(rng, 4000, GRID_B, 0.9).reshape(4000, 8, 196)
    assert (mask == mask[:, :1]).all()
    assert (mask[:, 0].sum(axis=1) == 176).all()
    freq = mask[:, 0].mean(axis=0)                              # each position removed with p = 176/196
    p = 176 / 196
    sigma = np.sqrt(p * (1 - p) / 4000)
    assert np.abs(freq - p).max() < 5 * sigma
    assert mask[:, 0].astype(int).std(axis=0).min() > 0         # no position is always kept


def test_masks_are_deterministic_by_seed():
    a = dual_masks(np.random.default_rng(7), 4, GRID_B)
    b = dual_masks(np.random.default_rng(7), 4, GRID_B)
    c = dual_masks(np.random.default_rng(8), 4, GRID_B)
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["visible_idx"] == c["visible_idx"]).all()


def test_from_boolean_round_trip_numpy_and_torch():
    rng = np.random.default_rng(3)
    enc = tube_mask(rng, 3, GRID_B, 0.9)
    dec = running_cell_mask(rng.integers(0, 4, 3), GRID_B, 0.5)
    out = from_boolean(enc, dec)
    for b in range(3):
        assert (np.flatnonzero(~enc[b]) == out["visible_idx"][b]).all()
        assert (np.flatnonzero(~dec[b]) == out["query_idx"][b]).all()
    t_out = from_boolean(torch.from_numpy(enc), torch.from_numpy(dec))
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.int64 for v in t_out.values())
    assert all((t_out[k].numpy() == out[k]).all() for k in out)


def test_from_boolean_rejects_ragged_counts():
    enc = np.zeros((2, 16), bool)
    enc[0, :12] = True
    enc[1, :10] = True
    with pytest.raises(ValueError, match="same number of tokens"):
        from_boolean(enc)


def test_bad_grids_are_rejected_with_reasons():
    with pytest.raises(ValueError, match="even sides"):
        mask_counts((8, 7, 7), 0.9, 0.5)
    with pytest.raises(ValueError, match="multiple of 4"):
        mask_counts((6, 14, 14), 0.9, 0.5)
    with pytest.raises(ValueError, match="one of 0, 0.25"):
        mask_counts(GRID_B, 0.9, 0.3)
    with pytest.raises(ValueError, match="multiple of 16"):
        token_grid(16, 100, 16)
    assert mask_counts((8, 7, 7), 0.9, 0)["visible_idx"] == 8 * (49 - 44)   # V1 works on odd grids
