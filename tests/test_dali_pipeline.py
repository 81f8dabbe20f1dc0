"""The DALI pre-training engine on the CPU, read back through self-describing VP9 and MJPEG clips.

Tiny setting throughout: 80×64 clips, 8 frames at stride 2, img_size 32, patch 8 → grid (4, 4, 4).
"""
from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import take
from nvidia.dali import pipeline_def
from test_dali_clips import HEIGHT, WIDTH, crop_box, frame_numbers, make_shards, pyav_frames

import dali_pipes
from dali_pipes import graph
from dali_pipes.masking import mask_counts, running_cell_mask
from dali_pipes.sampling import SamplingConfig, crop_size_pairs, fix_offsets, frame_indices
from dali_pipes.shards import open_shards

T, STRIDE, SIZE, PATCH = 8, 2, 32, 8
LENGTHS = [30, 9, 20, 16, 25, 12, 33, 10]  # 9, 16, 12 and 10 leave no free start for the 16-frame span
CFG = SamplingConfig(num_frames=T, img_size=SIZE, stride=STRIDE, patch_size=PATCH, num_sample=2)
OPTS = dict(device="cpu", num_threads=2)


def make_loader(out, batch_size, num_sample=2, cfg=CFG, **options):
    return dali_pipes.pretrain_loader(out, batch_size, replace(cfg, num_sample=num_sample), **{**OPTS, **options})


@pytest.fixture(scope="module", params=["vp9", "mjpeg"])
def dataset(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "ds"
    return out, make_shards(out, LENGTHS, codec=request.param, shard_size=20_000)


@pytest.fixture(scope="module")
def vp9_16(tmp_path_factory):
    """16 samples over several shards: divides evenly into 2 ranks × batches of 4."""
    out = tmp_path_factory.mktemp("vp9_16") / "ds"
    return out, make_shards(out, [10 + (i * 7) % 23 for i in range(16)], shard_size=25_000)


def test_frames_follow_start_stride_rule_and_short_clips_repeat_last(dataset):
    out, metas = dataset
    span = T * STRIDE  # the published window: T·stride frames, the last stride − 1 unused
    starts = {}
    loader = make_loader(out, 2, num_sample=2, seed=3)
    for _ in range(3):  # epochs: fresh starts each time
        for batch in loader:
            for clip, key in zip(batch["video"].numpy(), batch["keys"]):
                n = metas[key]["num_frames"]
                got = frame_numbers(clip)
                start = int(got[0])
                assert 0 <= start <= max(n - span, 0), (key, n, got)
                assert (got == frame_indices(start, n, T, STRIDE)).all(), (key, n, got)
                starts.setdefault(key, set()).add(start)
    for key, meta in metas.items():  # short clips start at 0 and end on their repeated last frame
        if meta["num_frames"] <= span:
            assert starts[key] == {0}
    assert any(len(s) > 1 for s in starts.values()), "start frames never vary"


def test_crops_are_multiscale_with_13_offsets_and_shared_decode(dataset):
    out, _ = dataset
    allowed = [(x, y, w, h) for w, h in crop_size_pairs(WIDTH, HEIGHT, SIZE)
               for x, y in fix_offsets(WIDTH, HEIGHT, w, h)]
    seen = set()
    for batch in make_loader(out, 2, num_sample=3, seed=5):
        video = batch["video"].numpy()
        assert video.shape == (6, T, SIZE, SIZE, 3) and video.dtype == np.uint8
        for b in range(2):  # the 3 crops of a sample come from one decode: same frames
            frames = [frame_numbers(video[3 * b + j]).tolist() for j in range(3)]
            assert frames[0] == frames[1] == frames[2]
        for clip in video:
            box = np.array(crop_box(clip))
            dist = np.abs(np.array(allowed) - box).max(axis=1)
            assert dist.min() < 1.0, f"crop {box.round(2)} is none of the multi-scale crops"
            seen.add(allowed[int(dist.argmin())])
    assert len(seen) > 4  # several distinct crops, not one fixed box


def test_masks_have_spec_counts_and_patterns(vp9_16):
    out, _ = vp9_16
    counts = mask_counts((4, 4, 4), 0.9, 0.5)
    assert counts == {"visible_idx": 8, "query_idx": 32, "loss_idx": 28}
    loader = make_loader(out, 4, num_sample=4, seed=1)
    phases = set()
    batch = next(iter(loader))
    for name, count in counts.items():
        idx = batch["masks"][name]
        assert idx.dtype == torch.int64 and idx.shape == (16, count) and idx.device == batch["video"].device
        assert (idx.diff(dim=1) > 0).all()  # sorted, unique
    for vis, query, loss in zip(*(batch["masks"][k].numpy() for k in ("visible_idx", "query_idx", "loss_idx"))):
        visible = np.zeros(64, bool)
        visible[vis] = True
        per_slice = visible.reshape(4, 16)
        assert (per_slice == per_slice[0]).all() and per_slice[0].sum() == 2  # a tube
        queried = np.zeros(64, bool)
        queried[query] = True
        phase = [p for p in range(4) if (~running_cell_mask(np.array([p]), (4, 4, 4))[0] == queried).all()]
        assert len(phase) == 1, "query tokens are no running-cell pattern"
        phases.add(phase[0])
        assert (loss == np.flatnonzero(~visible[query])).all()
    # 16 crops: 4 fresh masks per decoded video, not one shared mask
    assert len({tuple(v) for v in batch["masks"]["visible_idx"].numpy()}) > 8
    assert len(phases) > 1


def test_dali_decode_matches_pyav(dataset):
    """DALI's CPU decoder and PyAV (FFmpeg) give the same frames.

    Tolerance: mean |diff| < 2 and max ≤ 8 per 8-bit value. The two convert YUV 4:2:0 to RGB with
    different chroma upsampling and rounding (measured here: mean ≈ 1.4, max 6), while neighbouring
    test frames differ by 7 in every red value, so each DALI frame must also be nearest to the PyAV
    frame of the same index.
    """
    out, metas = dataset
    shards = open_shards(out)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def whole_clips():
        encoded, _ = graph.read_samples(shards.tar_paths, shards.index_paths, shards.video_exts, shard_id=0,
                                        num_shards=1, shuffle=False, initial_fill=1, seed=0)
        return graph.decode_clip(encoded, 0, num_frames=9, stored_stride=1, device="cpu"), encoded

    pipe = whole_clips()
    pipe.build()
    for _ in range(4):
        frames, encoded = pipe.run()
        ours = np.asarray(frames[0])
        all_theirs = pyav_frames(np.asarray(encoded[0]).tobytes()).astype(int)
        theirs = all_theirs[:9]
        diff = np.abs(ours.astype(int) - theirs)
        assert ours.shape == theirs.shape
        assert diff.max() <= 8 and diff.mean() < 2, (diff.max(), diff.mean())
        nearest = [np.abs(all_theirs - f.astype(int)).mean(axis=(1, 2, 3)).argmin() for f in ours]
        assert nearest == list(range(9))


def test_every_sample_once_per_epoch_across_two_ranks(vp9_16):
    out, metas = vp9_16
    loaders = [make_loader(out, 4, num_sample=2, rank=r, world_size=2, seed=7)
               for r in range(2)]
    assert [len(x) for x in loaders] == [2, 2]
    for _ in range(2):
        keys = []
        for loader in loaders:
            for batch in loader:
                keys += batch["keys"][::2]  # each key is repeated num_sample times
                assert batch["keys"][::2] == batch["keys"][1::2]
        assert sorted(keys) == sorted(metas)


def test_uneven_split_pads_ranks_to_equal_length(dataset):
    out, metas = dataset  # 8 samples, 3 ranks, batches of 2: 3 per rank, ceil(3/2) = 2 batches
    seen = []
    for rank in range(3):
        loader = make_loader(out, 2, num_sample=1, rank=rank, world_size=3)
        batches = list(loader)
        assert len(batches) == len(loader) == 2
        seen += [k for b in batches for k in b["keys"]]
    assert set(seen) == set(metas) and len(seen) == 12  # all seen; the padding repeats samples


def test_resume_continues_with_identical_batches(vp9_16):
    out, _ = vp9_16

    def make():
        return make_loader(out, 4, num_sample=2, seed=11)

    full = take(make(), 9)  # 4 batches per epoch: crosses two epoch boundaries
    first = make()
    take(first, 3)
    state = first.state_dict()
    first.close()
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.epoch == 0
    rest = take(resumed, 6)
    for a, b in zip(full[3:], rest):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["video"], b["video"])
        for k in a["masks"]:
            assert torch.equal(a["masks"][k], b["masks"][k])


def test_batches_stay_valid_while_the_pipeline_runs_on(vp9_16):
    """Zero-copy outputs must not be overwritten by later iterations."""
    out, _ = vp9_16
    loader = make_loader(out, 4, num_sample=1, seed=2, prefetch=2)
    kept = [(b["video"], b["video"].clone(), b["masks"]["visible_idx"].clone(), b["masks"]["visible_idx"])
            for _ in range(2) for b in loader]
    for video, copy, vis_copy, vis in kept:
        assert torch.equal(video, copy) and torch.equal(vis, vis_copy)


def test_missing_shard_and_index_mismatch_are_named(vp9_16, tmp_path):
    import shutil

    out, _ = vp9_16
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    tars = sorted(broken.glob("*.tar"))
    idxs = sorted(broken.glob("*.idx"))
    good_index = idxs[0].read_bytes()
    shutil.copy(idxs[1], idxs[0])  # an index that belongs to another shard
    with pytest.raises(dali_pipes.DatasetError, match=idxs[0].name + ".*rebuild"):
        make_loader(broken, 4)
    idxs[0].write_bytes(good_index)
    tars[1].unlink()
    with pytest.raises(dali_pipes.DatasetError, match=tars[1].name + ".*missing"):
        make_loader(broken / "manifest.json", 4)


def test_corrupt_sample_is_replaced_and_named_by_key(tmp_path):
    """The frames zeroed behind the header: the video's checksum names it; no batch holds it (test_bad_samples)."""
    out = tmp_path / "ds"
    metas = make_shards(out, [20, 20, 20, 20], shard_size=10 ** 9)
    tar = next(out.glob("*.tar"))
    idx = tar.with_suffix(".idx").read_text().splitlines()[2].split()  # sample 1's members
    video_field = next(i for i in range(0, len(idx), 4) if idx[i] != "json")
    offset, size, name = int(idx[video_field + 1]), int(idx[video_field + 2]), idx[video_field + 3]
    data = bytearray(tar.read_bytes())
    data[offset + size // 4: offset + size] = bytes(size - size // 4)  # keep the header, zero the frames
    tar.write_bytes(bytes(data))
    bad_key = name.split(".", 1)[0]
    assert bad_key in metas
    loader = make_loader(out, 4, num_sample=1, shuffle=False)
    (batch,) = list(loader)
    assert bad_key not in batch["keys"] and [r["key"] for r in batch["bad_samples"]] == [bad_key]
    assert [(r["key"], r["reason"], r["count"]) for r in loader.bad_samples()] == [(bad_key, "checksum", 1)]


def test_bad_metadata_is_reported_from_the_producer_by_source(tmp_path):
    out = tmp_path / "ds"
    make_shards(out, [20, 20, 20, 20], shard_size=10 ** 9)
    tar = next(out.glob("*.tar"))
    data = tar.read_bytes()
    assert data.count(b'"num_frames"') == 4
    tar.write_bytes(data.replace(b'"num_frames"', b'"num_framez"', 1))  # same length: the index still fits
    loader = make_loader(out, 2, num_sample=1, shuffle=False)
    named = r"reading samples from .*\.tar:\d+:.*lacks integer \['num_frames'\].*repack"
    with pytest.raises(RuntimeError, match=named):
        for _ in loader:
            pass
    loader.close()


def test_bad_sizes_and_strides_are_rejected(vp9_16, tmp_path):
    import json
    import shutil

    out, _ = vp9_16
    with pytest.raises(ValueError, match="multiple of 8"):  # fails when the config is made, before any pipeline
        replace(CFG, img_size=36)
    with pytest.raises(ValueError, match="decoder_mask_ratio must be one of"):
        replace(CFG, decoder_mask_ratio=0.4)
    with pytest.raises(ValueError, match=r"encoder_mask_ratio must be in \[0, 1\)"):
        replace(CFG, encoder_mask_ratio=1.0)
    with pytest.raises(ValueError, match="num_sample must be a positive integer"):
        replace(CFG, num_sample=0)
    with pytest.raises(TypeError, match="SamplingConfig"):
        dali_pipes.pretrain_loader(out, 4, {"num_frames": 8}, device="cpu")
    thinned = tmp_path / "thinned"  # as if packed with --frame-stride 2
    shutil.copytree(out, thinned)
    manifest = json.loads((thinned / "manifest.json").read_text())
    (thinned / "manifest.json").write_text(json.dumps({**manifest, "frame_stride": 2}))
    with pytest.raises(ValueError, match="stride 3.*frame_stride 2"):
        make_loader(thinned, 4, cfg=replace(CFG, stride=3))
    assert make_loader(thinned, 4, cfg=replace(CFG, stride=4)).recipe.stored_stride == 2


def test_close_stops_both_threads_and_frees_both_pipelines(vp9_16):
    out, _ = vp9_16
    loader = make_loader(out, 4, num_sample=1, seed=4)
    next(iter(loader))
    engine = loader._engine
    pipes = [weakref.ref(engine.clips), weakref.ref(engine.stage.pipe)]
    threads = [engine.drawn.thread, engine.collected.thread]
    del engine
    loader.close()
    gc.collect()
    assert not any(t.is_alive() for t in threads)
    assert [p() for p in pipes] == [None, None]  # DALI shuts a pipeline down when it is freed
    with pytest.raises(RuntimeError, match="closed"):
        next(iter(loader))
    dropped = make_loader(out, 4, num_sample=1, seed=4)  # dropped without close(): its threads stop too
    next(iter(dropped))
    threads = [dropped._engine.drawn.thread, dropped._engine.collected.thread]
    del dropped
    gc.collect()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC decode, device outputs)")
def test_gpu_batches_live_on_the_gpu(vp9_16):
    out, metas = vp9_16
    loader = make_loader(out, 4, num_sample=2, device=None)
    batch = next(iter(loader))
    assert batch["video"].is_cuda and batch["video"].shape == (8, T, SIZE, SIZE, 3)
    assert all(m.is_cuda for m in batch["masks"].values())
    for clip, key in zip(batch["video"].cpu().numpy(), batch["keys"]):
        got = frame_numbers(clip)
        assert (got == frame_indices(int(got[0]), metas[key]["num_frames"], T, STRIDE)).all()
