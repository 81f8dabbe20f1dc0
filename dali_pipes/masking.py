"""Dual masking of VideoMAE V2: tube masking for the encoder, running-cell masking for the decoder.

Both masks live on the cube-token grid (T, H, W) = (frames / 2, height / p, width / p); a token's
index is (t·H + h)·W + w (time-major, then row, then column). In both masks 1 means removed.

The model takes masks as three fixed-size, sorted index arrays (no boolean indexing on the device):

    visible_idx  (B, N_vis)   tokens the encoder sees                  ViT-B 0.9/0.5: 160
    query_idx    (B, N_query) tokens the decoder reconstructs           784
    loss_idx     (B, N_loss)  positions *within query_idx* that are     704
                              also removed by the encoder (the loss)

This module is numpy in, numpy out and seeded by a `numpy.random.Generator`, so the data pipeline
(the sampling pipeline) and the model side share one implementation. It imports numpy only, so
the model, DALI's python_function and the reference loader can all import it cheaply.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

MASK_KEYS = ("visible_idx", "query_idx", "loss_idx")


def token_grid(num_frames: int, img_size: int, patch_size: int, tubelet_size: int = 2) -> tuple[int, int, int]:
    """The (T, H, W) cube-token grid of a clip; rejects sizes that do not tile exactly."""
    if num_frames % tubelet_size or img_size % patch_size:
        raise ValueError(
            f"a {num_frames}x{img_size}x{img_size} clip does not tile into {tubelet_size}x{patch_size}x{patch_size} "
            f"cubes: num_frames must be a multiple of {tubelet_size} and img_size a multiple of {patch_size}"
        )
    side = img_size // patch_size
    return num_frames // tubelet_size, side, side


def _check_running_cell(grid: tuple[int, int, int], decoder_mask_ratio: float) -> int:
    """Number of removed entries in the 2x2 cell; validates that the counts stay fixed."""
    if decoder_mask_ratio not in (0, 0.25, 0.5, 0.75):
        raise ValueError(f"decoder_mask_ratio must be one of 0, 0.25, 0.5, 0.75 (a 2x2 running cell), "
                         f"got {decoder_mask_ratio}")
    t, h, w = grid
    if decoder_mask_ratio > 0:
        if h % 2 or w % 2:
            raise ValueError(
                f"running-cell masking tiles a 2x2 cell over the {h}x{w} token grid, which needs even sides; "
                f"choose img_size so that img_size / patch_size is even, or set decoder_mask_ratio=0"
            )
        if t % 4:
            # The cell cycles with period 4 in time; only whole cycles decode every position equally
            # often, which is what keeps the loss-token count independent of the tube mask.
            raise ValueError(
                f"running-cell masking needs the number of time slices ({t} = num_frames / 2) to be a multiple "
                f"of 4 so that every position is decoded equally often; use num_frames a multiple of 8, "
                f"or set decoder_mask_ratio=0"
            )
    return int(4 * decoder_mask_ratio)


def mask_counts(grid: tuple[int, int, int], encoder_mask_ratio: float = 0.9,
                decoder_mask_ratio: float = 0.5) -> dict[str, int]:
    """Fixed per-sample sizes of visible_idx, query_idx and loss_idx for a grid and ratios."""
    t, h, w = grid
    cell_removed = _check_running_cell(grid, decoder_mask_ratio)
    kept_per_slice = h * w - int(encoder_mask_ratio * h * w)
    if kept_per_slice < 1:
        raise ValueError(f"encoder_mask_ratio {encoder_mask_ratio} leaves no visible token on a {h}x{w} grid")
    num_visible = t * kept_per_slice
    if decoder_mask_ratio == 0:
        num_query = t * h * w - num_visible
        return {"visible_idx": num_visible, "query_idx": num_query, "loss_idx": num_query}
    num_query = t * h * w * (4 - cell_removed) // 4
    # Each visible position is queried in (4 - removed)/4 of the slices, so this overlap is constant.
    num_overlap = kept_per_slice * t * (4 - cell_removed) // 4
    return {"visible_idx": num_visible, "query_idx": num_query, "loss_idx": num_query - num_overlap}


def tube_mask(rng: np.random.Generator, batch_size: int, grid: tuple[int, int, int],
              mask_ratio: float = 0.9) -> np.ndarray:
    """Encoder mask (B, T·H·W) bool, True = removed: the same ⌊ratio·H·W⌋ positions in every slice."""
    return np.tile(_tube_positions(rng, batch_size, grid, mask_ratio), (1, grid[0]))


def _tube_positions(rng: np.random.Generator, batch_size: int, grid: tuple[int, int, int],
                    mask_ratio: float) -> np.ndarray:
    """(B, H·W) bool, True = removed in every slice: the ⌊ratio·H·W⌋ smallest of H·W uniform draws per row."""
    _, h, w = grid
    num_masked = int(mask_ratio * h * w)
    # float32 noise: half the memory of float64 (and under the mmap threshold for a ViT-B batch).
    noise = rng.random((batch_size, h * w), dtype=np.float32)
    if not num_masked:
        return np.zeros((batch_size, h * w), dtype=bool)
    # The num_masked smallest draws of a row are a uniformly random subset: everything up to the
    # row's num_masked-th smallest value (np.partition finds it in linear time).
    threshold = np.partition(noise, num_masked - 1, axis=1)[:, num_masked - 1:num_masked]
    spatial = noise <= threshold
    tied = np.flatnonzero(np.count_nonzero(spatial, axis=1) != num_masked)
    if len(tied):  # equal float32 draws at the threshold (rare): pick exactly num_masked by index
        chosen = np.argpartition(noise[tied], num_masked - 1, axis=1)[:, :num_masked]
        spatial[tied] = False
        spatial[tied[:, None], chosen] = True
    return spatial


def _row_chunks(num_rows: int, row_size: int, max_bytes: int = 96 * 1024) -> list[slice]:
    """Row slices whose int64 temporaries stay under glibc's mmap threshold (128 KiB).

    Larger temporaries are mmapped fresh and page-faulted on every call, which cost more than the
    arithmetic here; smaller ones reuse the heap.
    """
    step = max(1, max_bytes // (8 * max(row_size, 1)))
    return [slice(lo, min(lo + step, num_rows)) for lo in range(0, num_rows, step)]


def running_cell_mask(phases: np.ndarray, grid: tuple[int, int, int], mask_ratio: float = 0.5) -> np.ndarray:
    """Decoder mask (B, T·H·W) bool, True = not decoded, for per-sample phases φ ∈ {0, 1, 2, 3}.

    The 2x2 cell holds a queue of int(4·ratio) ones then zeros in raster order; at slice t it is the
    queue rolled by φ + t + 1: cell[k] = queue[(k + φ + t + 1) mod 4], tiled over the grid.
    """
    t, h, w = grid
    cell_removed = _check_running_cell(grid, mask_ratio)
    phases = np.asarray(phases, dtype=np.int64).reshape(-1)
    queue = np.arange(4) < cell_removed                                   # (4,)
    rows, cols = np.meshgrid(np.arange(h) % 2, np.arange(w) % 2, indexing="ij")
    cell_pos = (2 * rows + cols).reshape(1, 1, h * w)                     # (1, 1, H·W)
    shift = phases[:, None, None] + np.arange(t)[None, :, None] + 1       # (B, T, 1)
    return queue[(cell_pos + shift) % 4].reshape(len(phases), t * h * w)


@lru_cache(maxsize=32)
def _query_tables(grid: tuple[int, int, int], mask_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """query_idx (4, N_query) of the running-cell mask per phase φ, and the spatial positions (4, P)
    decoded in a slice whose pattern is k: phase φ at slice t shows pattern (φ + t) mod 4."""
    t = grid[0]
    decoded = ~running_cell_mask(np.arange(4), grid, mask_ratio)              # (4, T·H·W)
    query_idx = np.nonzero(decoded)[1].reshape(4, -1)                         # row-major: sorted per phase
    slice_spatial = (query_idx[0] % (grid[1] * grid[2])).reshape(t, -1)[:4]  # phase 0, slices 0..3
    for table in (query_idx, slice_spatial):
        table.flags.writeable = False
    return query_idx, slice_spatial


def _as_numpy(mask: Any) -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"masks must be (B, N) arrays, got shape {mask.shape}")
    return mask.astype(bool)


def _row_indices(selected: np.ndarray, name: str) -> np.ndarray:
    counts = selected.sum(axis=1)
    if len(counts) and (counts != counts[0]).any():
        raise ValueError(
            f"{name}: every sample must select the same number of tokens so the batch stays dense, "
            f"got counts {sorted(set(counts.tolist()))}"
        )
    # A stable argsort puts the selected positions first, in ascending token order.
    order = np.argsort(~selected, axis=1, kind="stable")
    return order[:, : counts[0] if len(counts) else 0].astype(np.int64)


def from_boolean(encoder_mask: Any, decoder_mask: Any = None) -> dict[str, Any]:
    """Model mask inputs from boolean masks in the published convention.

    encoder_mask: (B, N) bool, True = removed from the encoder input (the published `bool_masked_pos`).
    decoder_mask: (B, N) bool, True = not decoded (the published `decode_masked_pos`), or None for
        VideoMAE V1 behaviour: the decoder reconstructs every encoder-removed token.
    Accepts numpy arrays or torch tensors; returns int64 index arrays of the same kind (torch tensors
    on the encoder mask's device). Every sample must have the same counts.
    """
    as_torch = hasattr(encoder_mask, "detach")
    device = encoder_mask.device if as_torch else None
    removed = _as_numpy(encoder_mask)
    query = ~_as_numpy(decoder_mask) if decoder_mask is not None else removed
    if query.shape != removed.shape:
        raise ValueError(f"encoder mask {removed.shape} and decoder mask {query.shape} differ in shape")
    visible_idx = _row_indices(~removed, "encoder mask (visible tokens)")
    query_idx = _row_indices(query, "decoder mask (query tokens)")
    removed_at_query = np.take_along_axis(removed, query_idx, axis=1)
    loss_idx = _row_indices(removed_at_query, "loss tokens (queried and encoder-removed)")
    out = {"visible_idx": visible_idx, "query_idx": query_idx, "loss_idx": loss_idx}
    if as_torch:
        import torch

        out = {k: torch.from_numpy(v).to(device) for k, v in out.items()}
    return out


def dual_masks(rng: np.random.Generator, batch_size: int, grid: tuple[int, int, int],
               encoder_mask_ratio: float = 0.9, decoder_mask_ratio: float = 0.5,
               out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Fresh tube masks and running-cell phases for a batch, as the model's index inputs (numpy).

    Vectorised over the batch without per-row loops or full sorts: a tube is the same spatial set in
    every slice, so visible_idx is its kept positions offset by t·H·W; the running-cell pattern
    depends only on the phase, so query_idx is one of four cached rows; loss_idx marks the queried
    positions whose spatial position the tube removed. Same values as
    from_boolean(tube_mask(...), running_cell_mask(...)) for the same generator state.

    out: optional int64 arrays {name: (B, count)} to write into, so that a caller can reuse their
    memory batch after batch (fresh large arrays are page-faulted on every call).
    """
    t, h, w = grid
    counts = mask_counts(grid, encoder_mask_ratio, decoder_mask_ratio)
    if out is None:
        out = {k: np.empty((batch_size, c), np.int64) for k, c in counts.items()}
    removed = _tube_positions(rng, batch_size, grid, encoder_mask_ratio)             # (B, H·W)
    kept = _columns(~removed, h * w - int(encoder_mask_ratio * h * w))             # (B, kept), sorted
    offsets = (np.arange(t) * h * w)[None, :, None]                                  # (1, T, 1)
    np.add(offsets, kept[:, None, :], out=out["visible_idx"].reshape(batch_size, t, -1))
    if decoder_mask_ratio == 0:  # VideoMAE V1: decode (and score) every encoder-removed token
        for rows in _row_chunks(batch_size, t * h * w):
            out["query_idx"][rows] = _columns(np.tile(removed[rows], (1, t)), counts["query_idx"])
        out["loss_idx"][:] = np.arange(counts["query_idx"])
        return out
    phases = rng.integers(0, 4, size=batch_size)
    query_table, slice_spatial = _query_tables(grid, decoder_mask_ratio)
    np.take(query_table, phases, axis=0, out=out["query_idx"])                     # (B, N_query)
    # Whether each query token was removed by the tube, all in bools: the tube seen through the
    # 4 slice patterns, then each sample's patterns in its slice order (φ + t) mod 4.
    removed_by_pattern = removed[:, slice_spatial]                                  # (B, 4, P)
    pattern = (phases[:, None] + np.arange(t)) % 4                                  # (B, T)
    removed_at_query = removed_by_pattern[np.arange(batch_size)[:, None], pattern]  # (B, T, P)
    removed_at_query = removed_at_query.reshape(batch_size, -1)
    for rows in _row_chunks(batch_size, removed_at_query.shape[1]):
        out["loss_idx"][rows] = _columns(removed_at_query[rows], counts["loss_idx"])
    return out


def _columns(selected: np.ndarray, count: int) -> np.ndarray:
    """(B, count) column indices of the True entries of each row, ascending; every row holds `count`.

    One flatnonzero over the whole (B, N) array (row-major, so each row's entries come in order and
    rows follow each other) minus each row's offset: ~30x faster than np.nonzero's 2-D indices.
    """
    rows, n = selected.shape
    columns = np.flatnonzero(selected).reshape(rows, count)
    columns -= (np.arange(rows) * n)[:, None]
    return columns
