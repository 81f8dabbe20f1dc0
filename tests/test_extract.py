"""Feature extraction: the window rule, the streamed windows, features against an independent reference,
kill-and-rerun, two ranks, and bad input (short and undecodable videos).

What is compared with what (DALI's FFmpeg YUV→RGB and PyAV's differ by about 1.4 levels on average):
- decode: DALI's full-resolution frames against PyAV's, within a few levels;
- resize: the streamed windows against torch's resize of DALI's *own* full-resolution frames
  (official: bilinear without antialias to 1e-3 levels; default: antialiased, within 1 level);
- features: extract's rows against forward_features on the streamed windows (exact up to float
  rounding), and against forward_features on PyAV frames resized by torch (cosine ≥ 0.999).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_dali_clips import clip_frames, encode_clip, frame_numbers, make_shards, pyav_frames

from dali_pipes.windows import StreamError, WindowStream, window_starts
from vmae2.config import model_config
from vmae2.extract import extract, list_videos, load_model, open_dataset, window_features
from vmae2.model import IMAGENET_MEAN, IMAGENET_STD, VideoClassifier

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32  # tiny's patch is 8: a 4×4 grid keeps the CPU forward cheap
WINDOW = 8  # extract's window is the model's num_frames: tiny's 8 (a 4×4×4 token grid at SIZE)
LENGTHS = [5, 30, 17, 7, 20, 33]  # 5 and 7 are shorter than one 8-frame window


def save_tiny(model: VideoClassifier, path: Path) -> None:
    """The weights with their model config: without one, weights are taken for the published 1d table."""
    torch.save({"model": model.state_dict(), "config": {"model": dataclasses.asdict(model.cfg)}}, path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    make_shards(root / "ds", LENGTHS, shard_size=30_000)
    torch.manual_seed(0)
    model = VideoClassifier(model_config("tiny"), 5, drop_path=0.0)
    assert model.cfg.num_frames == WINDOW and model.cfg.patch_size == 8
    save_tiny(model, root / "weights.pt")
    return root


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmae2.cli", "extract", *args]


def _read_index(out: Path, name: str = "index.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def _features(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(out.glob("*.npy"))}


# ------------------------------------------------------------------------------------------------
# the window rule and the streamed windows


@pytest.mark.parametrize("step", [4, 16])
def test_window_starts_follow_the_published_rule(step):
    """range(0, n − 15, step) for 16-frame windows; with a stride, every window ends inside the video."""
    for n in [0, 1, 15, 16, 17, 19, 20, 31, 64, 65, 1000, 1001]:
        assert list(window_starts(n, 16, step)) == list(range(0, n - 15, step))
        expected_count = max(0, (n - 16) // step + 1)
        assert len(window_starts(n, 16, step)) == expected_count
    for n, window, stride in [(40, 8, 3), (22, 8, 3), (21, 8, 3), (100, 16, 2)]:
        starts = list(window_starts(n, window, step, stride))
        brute = [s for s in range(0, n, step) if s + (window - 1) * stride <= n - 1]
        assert starts == brute
    with pytest.raises(ValueError, match="must be ≥ 1"):
        window_starts(10, 16, 0)


@pytest.mark.parametrize("chunk_frames,chunks_per_run", [(4, 2), (16, 2), (5, 3)])
def test_stream_cuts_every_window_from_the_right_frames(tmp_path, chunk_frames, chunks_per_run):
    """Each window holds exactly frames start + i·stride (read back from the clips' own frame codes)."""
    stream = WindowStream(size=SIZE, chunk_frames=chunk_frames, chunks_per_run=chunks_per_run)
    for n in (11, 20, 30, 33):
        path = tmp_path / f"c{n}.webm"
        encode_clip(path, clip_frames(n))
        encoded = path.read_bytes()
        for window, step, stride in [(16, 4, 1), (4, 3, 2), (3, 7, 1)]:
            got = [(s, frame_numbers(w.numpy()).tolist())
                   for s, w in stream.windows(encoded, n, window=window, step=step, frame_stride=stride)]
            expected = [(s, list(range(s, s + (window - 1) * stride + 1, stride)))
                        for s in window_starts(n, window, step, stride)]
            assert got == expected, (n, window, step, stride)


def test_stream_refuses_a_wrong_frame_count_and_garbage_then_goes_on(tmp_path):
    path = tmp_path / "c.webm"
    encode_clip(path, clip_frames(30))
    encoded = path.read_bytes()
    stream = WindowStream(size=SIZE, chunk_frames=4, chunks_per_run=2)
    with pytest.raises(StreamError, match="num_frames=34"):
        list(stream.windows(encoded, 34, window=16, step=4))
    with pytest.raises(StreamError, match="num_frames=28"):
        list(stream.windows(encoded, 28, window=16, step=4))
    with pytest.raises(StreamError, match="decoder failed after 0 of 28 frames"):
        list(stream.windows(b"not a video" * 50, 28, window=16, step=4))
    # The pipeline is rebuilt after each refusal: the next video comes out whole.
    starts = [s for s, _ in stream.windows(encoded, 30, window=16, step=4)]
    assert starts == [0, 4, 8, 12]


# ------------------------------------------------------------------------------------------------
# preprocessing and features against a reference


def _dali_full_frames(encoded: bytes, n: int) -> torch.Tensor:
    """DALI's decode of the whole clip at full resolution, (F, 3, H, W) float."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def raw():
        return fn.experimental.inputs.video(name="encoded", sequence_length=n, device="cpu")

    pipe = raw()
    pipe.build()
    pipe.feed_input("encoded", [np.frombuffer(encoded, np.uint8)])
    return torch.from_numpy(np.array(pipe.run()[0][0])).permute(0, 3, 1, 2).float()


def _torch_preprocess(frames: torch.Tensor, compat: str) -> torch.Tensor:
    """(F, 3, H, W) float 0..255 → (F, S, S, 3): the reference preprocessing, in torch."""
    if compat == "official":  # the published extractor: float pixels / 255, squash, bilinear, no antialias
        resized = F.interpolate(frames / 255, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return resized.permute(0, 2, 3, 1) * 255
    h, w = frames.shape[-2:]
    nh, nw = round(h * SIZE / min(h, w)), round(w * SIZE / min(h, w))
    resized = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    y0, x0 = round((nh - SIZE) / 2), round((nw - SIZE) / 2)
    return resized.round().clamp(0, 255)[..., y0:y0 + SIZE, x0:x0 + SIZE].permute(0, 2, 3, 1)


def _reference_features(model, frames: torch.Tensor, compat: str) -> torch.Tensor:
    """forward_features, the public method; official input made so that its normalisation yields pixels/255."""
    if compat == "official":
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        return model.forward_features((frames / 255 * std + mean) * 255)
    return model.forward_features(frames.to(torch.uint8))


def test_decode_and_resize_against_independent_references(dataset):
    video = next(v for v in list_videos(open_dataset(dataset / "ds")) if v.meta["num_frames"] == 33)
    encoded = video.read()
    dali_full = _dali_full_frames(encoded, 33)
    pyav_full = torch.from_numpy(pyav_frames(encoded)).permute(0, 3, 1, 2).float()
    decode_diff = (dali_full - pyav_full).abs()
    assert decode_diff.mean() < 2.0 and decode_diff.max() <= 8, "DALI and PyAV decode differ by more than YUV→RGB"
    for compat in ("none", "official"):
        stream = WindowStream(size=SIZE, compat=compat)
        for start, window in stream.windows(encoded, 33, window=16, step=4):
            reference = _torch_preprocess(dali_full[start:start + 16], compat)
            diff = (window.float() - reference).abs()
            if compat == "official":
                assert window.dtype == torch.float32 and diff.max() < 1e-3
            else:
                assert window.dtype == torch.uint8 and diff.max() <= 1 and diff.mean() < 0.05


@pytest.mark.parametrize("compat", ["none", "official"])
def test_extracted_features_match_forward_features(dataset, tmp_path, compat):
    out = tmp_path / "out"
    summary = extract(dataset / "weights.pt", dataset / "ds", out, preset="tiny", size=SIZE, step=4,
                      compat=compat, batch=3, progress=False)
    assert summary["written"] == 4 and summary["skipped"] == 2
    model, _ = load_model(dataset / "weights.pt", "tiny", None, SIZE)
    index = {e["key"]: e for e in _read_index(out)}
    features = _features(out)
    stream = WindowStream(size=SIZE, compat=compat)
    for video in list_videos(open_dataset(dataset / "ds")):
        n = video.meta["num_frames"]
        if n < WINDOW:
            assert video.key not in features
            continue
        rows = features[video.key]
        entry = index[video.key]
        assert entry["starts"] == list(range(0, n - (WINDOW - 1), 4)) and entry["num_frames"] == n
        assert rows.dtype == np.float32 and rows.shape == (len(entry["starts"]), 192)
        windows = [w for _, w in stream.windows(video.read(), n, window=WINDOW, step=4)]
        with torch.no_grad():
            # Same frames: extract's batching and row order against the public forward_features.
            direct = torch.cat([_reference_features(model, w[None].float(), compat) for w in windows])
            np.testing.assert_allclose(rows, direct.numpy(), atol=2e-5, rtol=0)
            # Independent frames: PyAV decode, torch resize.
            pyav = torch.from_numpy(pyav_frames(video.read())).permute(0, 3, 1, 2).float()
            reference = torch.cat([_reference_features(model, _torch_preprocess(pyav[s:s + WINDOW], compat)[None],
                                                       compat) for s in entry["starts"]])
        cosine = F.cosine_similarity(torch.from_numpy(rows), reference, dim=1)
        assert cosine.min() > 0.999, cosine
        assert (torch.from_numpy(rows) - reference).abs().max() < 0.2


def test_default_path_is_forward_features_and_pool_none_gives_the_tokens(dataset):
    model, _ = load_model(dataset / "weights.pt", "tiny", None, SIZE)
    frames = torch.randint(0, 256, (3, WINDOW, SIZE, SIZE, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(window_features(model, frames), model.forward_features(frames))
        tokens = window_features(model, frames, pool="none")
        assert tokens.shape == (3, 4 * 4 * 4, 192)
        assert torch.allclose(model.fc_norm(tokens.mean(dim=1)), model.forward_features(frames), atol=1e-6)


def test_pool_none_writes_the_token_grid(dataset, tmp_path):
    out = tmp_path / "tokens"
    extract(dataset / "weights.pt", dataset / "ds", out, preset="tiny", size=SIZE, step=16, pool="none",
            progress=False)
    for entry in _read_index(out):
        assert np.load(out / entry["file"]).shape == (len(entry["starts"]), 64, 192)


# ------------------------------------------------------------------------------------------------
# bad input, reruns, ranks


def test_short_and_undecodable_videos_are_listed_and_the_run_goes_on(dataset, tmp_path):
    import shutil

    data = tmp_path / "ds"
    shutil.copytree(dataset / "ds", data)
    videos = list_videos(open_dataset(data))
    broken = next(v for v in videos if v.meta["num_frames"] == 30)
    with open(broken.tar, "r+b") as f:  # same size, so the shard still opens; the container header is gone
        f.seek(broken.offset)
        f.write(b"\0" * 256)
    out = tmp_path / "out"
    summary = extract(dataset / "weights.pt", data, out, preset="tiny", size=SIZE, progress=False)
    skipped = {e["key"]: e for e in _read_index(out, "skipped.jsonl")}
    short = {v.key for v in videos if v.meta["num_frames"] < WINDOW}
    assert set(skipped) == short | {broken.key} and len(short) == 2
    assert all(skipped[k]["reason"] == "too_short" and "one window spans 8" in skipped[k]["detail"] for k in short)
    # its json's checksum tells before the decoder runs (without one: test_bad_samples, "undecodable")
    assert skipped[broken.key]["reason"] == "checksum" and "changed after packing" in skipped[broken.key]["detail"]
    assert skipped[broken.key]["source"] == broken.meta["source"]
    written = {e["key"] for e in _read_index(out)}
    assert written == {v.key for v in videos} - set(skipped) and len(written) == 3
    assert set(_features(out)) == written and summary["skipped"] == 3


def test_rerun_with_other_options_is_refused(dataset, tmp_path):
    out = tmp_path / "out"
    extract(dataset / "weights.pt", dataset / "ds", out, preset="tiny", size=SIZE, step=16, progress=False)
    with pytest.raises(ValueError, match=r"step: 16 there, 4 now.*another --out"):
        extract(dataset / "weights.pt", dataset / "ds", out, preset="tiny", size=SIZE, step=4, progress=False)
    again = extract(dataset / "weights.pt", dataset / "ds", out, preset="tiny", size=SIZE, step=16, progress=False)
    assert again["already_done"] == len(LENGTHS) and again["windows"] == 0


def test_killed_run_continues_to_the_same_files(tmp_path):
    data = tmp_path / "ds"
    make_shards(data, [33] * 8, shard_size=60_000)
    torch.manual_seed(1)
    save_tiny(VideoClassifier(model_config("tiny"), 5, drop_path=0.0), tmp_path / "w.pt")
    # 80² at patch 8: 4×10×10 tokens a window, 7 windows a video, about the work of the old 112² at patch 14
    args = ["--weights", str(tmp_path / "w.pt"), "--data", str(data), "--preset", "tiny", "--size", "80",
            "--batch", "1", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--out", str(killed)), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((killed / "entries").glob("*.json")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "index.jsonl").exists(), "the run finished before it could be killed"
    done_before = len(list((killed / "entries").glob("*.json")))
    assert 1 <= done_before < 8
    rerun = subprocess.run(_cli(*args, "--out", str(killed)), cwd=ROOT, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(rerun.stdout)["already_done"] >= done_before
    clean = tmp_path / "clean"
    subprocess.run(_cli(*args, "--out", str(clean)), cwd=ROOT, env=env, check=True, capture_output=True)
    for name in ("index.jsonl", "skipped.jsonl"):
        assert (killed / name).read_text() == (clean / name).read_text()
    a, b = _features(killed), _features(clean)
    assert sorted(a) == sorted(b) and len(a) == 8
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_two_ranks_write_every_video_exactly_once(dataset, tmp_path):
    out = tmp_path / "ranks"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "vmae2.cli", "extract",
           "--weights", str(dataset / "weights.pt"), "--data", str(dataset / "ds"), "--out", str(out),
           "--preset", "tiny", "--size", str(SIZE), "--batch", "2", "--device", "cpu"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summaries = [json.loads(block) for block in run.stdout.replace("}\n{", "}\x00{").split("\x00") if block.strip()]
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    assert sum(s["this_rank"] for s in summaries) == len(LENGTHS)
    assert sum(s["written"] + s["skipped"] for s in summaries) == len(LENGTHS)
    keys = [e["key"] for e in _read_index(out)] + [e["key"] for e in _read_index(out, "skipped.jsonl")]
    all_keys = [v.key for v in list_videos(open_dataset(dataset / "ds"))]
    assert sorted(keys) == sorted(all_keys) and len(set(keys)) == len(keys)
    single = tmp_path / "single"
    extract(dataset / "weights.pt", dataset / "ds", single, preset="tiny", size=SIZE, batch=2, progress=False)
    assert (single / "index.jsonl").read_text() == (out / "index.jsonl").read_text()
    for key, rows in _features(single).items():
        np.testing.assert_allclose(_features(out)[key], rows, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC decode, GPU resize)")
@pytest.mark.parametrize("compat", ["none", "official"])
def test_gpu_stream_matches_the_cpu_stream(dataset, compat):
    """NVDEC (mixed) windows on the GPU hold the same frames as the CPU backend's, within decoder rounding."""
    video = next(v for v in list_videos(open_dataset(dataset / "ds")) if v.meta["num_frames"] == 33)
    cpu = [(s, w) for s, w in WindowStream(size=SIZE, compat=compat).windows(video.read(), 33, window=16, step=4)]
    gpu = [(s, w) for s, w in WindowStream(size=SIZE, compat=compat, device="gpu", device_id=0).windows(
        video.read(), 33, window=16, step=4)]
    assert [s for s, _ in gpu] == [s for s, _ in cpu] and all(w.is_cuda for _, w in gpu)
    for (_, a), (_, b) in zip(cpu, gpu, strict=True):
        assert (frame_numbers(b.cpu().float().numpy()) == frame_numbers(a.float().numpy())).all()
        assert (a.float() - b.cpu().float()).abs().mean() < 2.0
