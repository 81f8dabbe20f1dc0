"""vmae2-shard pack: round trips, readers (DALI, webdataset), resume, bad inputs, arguments."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from shard_tools import shard, stage
from shard_tools.format import read_manifest
from shard_tools.index import index_for_tar
from shard_tools.pack import PackError, pack
from shard_tools.samples import iter_samples
from shard_tools.sources import make_key, parse_sources, resolve_labels
from shard_tools.transcode import TranscodeError, check_encoder


def make_clip(path, codec="libvpx-vp9", container=None, num_frames=12, size=(32, 24), fps=25,
              seed=0):
    """A tiny clip of random-ish frames, written with PyAV."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)


def _mux_audio(out, stream, num_frames):
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                       layout="mono")
    frame.sample_rate = 16000
    for i in range(num_frames):
        frame.pts = i * 1024
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def make_audio(path):
    with av.open(str(path), "w", format="mp4") as out:
        _mux_audio(out, out.add_stream("aac", rate=16000), 8)


def make_clip_with_long_audio(path, num_frames=12, audio_seconds=3.0):
    """A WebM whose Opus track runs seconds past the end of its VP9 video."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libvpx-vp9", rate=25)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        audio = out.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt",
                                           layout="mono")
        frame.sample_rate = 48000
        for i in range(int(audio_seconds * 50)):
            if i % 2 == 0 and i // 2 < num_frames:
                image = np.full((24, 32, 3), 10 * i % 255, np.uint8)
                for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
            if i == 2 * num_frames:
                for packet in video.encode():
                    out.mux(packet)
            frame.pts = i * 960
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return Path(path)


def decode_frames(data_or_path):
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(source) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def all_samples(out):
    manifest = read_manifest(out)
    return [s for e in manifest["shards"]
            for s in iter_samples(Path(out) / e["tar"], Path(out) / e["index"])]


def out_files(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Class folders with spaces, unicode and dots in names; VP9, H.264 and MJPEG clips."""
    root = tmp_path_factory.mktemp("videos")
    clips = {
        "class a/clip one.webm": ("libvpx-vp9", None),
        "class a/two.v2.final.webm": ("libvpx-vp9", None),
        "ünïcode klass/vidéo ü.mp4": ("libx264", None),
        "ünïcode klass/three.avi": ("mjpeg", None),
        "b/4.mkv": ("libvpx-vp9", "matroska"),
        "b/five.webm": ("libvpx-vp9", None),
    }
    for i, (name, (codec, container)) in enumerate(clips.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        make_clip(root / name, codec, container, num_frames=8 + i, seed=i)
    (root / "b" / "notes.txt").write_text("not a video, and not searched")
    return root


def test_copy_round_trip_stores_each_input_once_with_identical_bytes_and_frames(collection,
                                                                                tmp_path):
    summary = pack(collection, tmp_path / "out", shard_size=20_000, progress=False)
    manifest = read_manifest(tmp_path / "out")
    samples = all_samples(tmp_path / "out")
    sources = sorted(meta["source"] for _, _, _, meta in samples)
    expected = sorted(p.relative_to(collection).as_posix() for p in collection.rglob("*")
                      if p.suffix in (".webm", ".mp4", ".avi", ".mkv"))
    assert sources == expected
    assert summary["num_samples"] == manifest["num_samples"] == 6 and summary["num_skipped"] == 0
    assert len(manifest["shards"]) > 1
    assert manifest["labels"] == ["b", "class a", "ünïcode klass"]
    assert manifest["codecs"] == {"h264": 1, "mjpeg": 1, "vp9": 4}
    assert manifest["video_exts"] == ["avi", "mkv", "mp4", "webm"]
    for key, ext, video, meta in samples:
        path = collection / meta["source"]
        assert "." not in key and " " not in key and key == make_key(meta["source"])
        assert ext == {".webm": "webm", ".mp4": "mp4", ".avi": "avi", ".mkv": "mkv"}[path.suffix]
        assert video == path.read_bytes()
        frames = decode_frames(video)
        np.testing.assert_array_equal(frames, decode_frames(path))
        assert (meta["num_frames"], meta["height"], meta["width"]) == frames.shape[:3]
        assert meta["label_name"] == path.parent.name
        assert manifest["labels"][meta["label"]] == meta["label_name"]
        assert meta["fps"] == 25.0 and meta["frame_stride"] == 1 and meta["clip_start"] == 0.0
        assert meta["duration"] == pytest.approx(meta["num_frames"] / 25)
    for entry in manifest["shards"]:
        tar = tmp_path / "out" / entry["tar"]
        assert (tmp_path / "out" / entry["index"]).read_text() == index_for_tar(tar)
        assert entry["bytes"] == tar.stat().st_size
    assert sum(e["num_samples"] for e in manifest["shards"]) == 6
    assert not (tmp_path / "out" / ".staging").exists()
    assert (tmp_path / "out" / "skipped.jsonl").read_text() == ""


def test_dali_cpu_webdataset_reader_yields_every_sample_with_the_same_bytes(collection, tmp_path):
    from nvidia.dali import fn, pipeline_def

    pack(collection, tmp_path / "out", shard_size=20_000, progress=False)
    manifest = read_manifest(tmp_path / "out")
    expected = {key: (video, meta) for key, _, video, meta in all_samples(tmp_path / "out")}

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def reader():
        video, meta = fn.readers.webdataset(
            paths=[str(tmp_path / "out" / e["tar"]) for e in manifest["shards"]],
            index_paths=[str(tmp_path / "out" / e["index"]) for e in manifest["shards"]],
            ext=[";".join(manifest["video_exts"]), "json"], name="reader")
        return video, meta

    pipe = reader()
    pipe.build()
    assert pipe.epoch_size("reader") == len(expected)
    seen = {}
    while len(seen) < len(expected):
        videos, metas = pipe.run()
        for i in range(len(metas)):
            meta = json.loads(bytes(np.array(metas.at(i))).decode("utf-8"))
            seen[make_key(meta["source"])] = bytes(np.array(videos.at(i)))
    assert {k: v for k, v in seen.items()} == {k: v[0] for k, v in expected.items()}


def test_webdataset_library_reads_the_shards(collection, tmp_path):
    import webdataset as wds

    pack(collection, tmp_path / "out", shard_size=20_000, progress=False)
    manifest = read_manifest(tmp_path / "out")
    urls = [str(tmp_path / "out" / e["tar"]) for e in manifest["shards"]]
    read = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    assert len(read) == manifest["num_samples"]
    for key, ext, video, meta in all_samples(tmp_path / "out"):
        assert read[key][ext] == video
        assert json.loads(read[key]["json"]) == meta


def test_transcode_with_stride_and_clips_records_what_was_stored(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_clip(src / "long.mp4", "libx264", num_frames=50, size=(48, 32))  # 2 s at 25 fps
    summary = pack(src, tmp_path / "out", codec="vp9", short_side=16, gop=4, frame_stride=2,
                   max_seconds=0.8, progress=False)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["frame_stride"] == 2 and manifest["max_seconds"] == 0.8
    metas = sorted((m for _, _, _, m in all_samples(tmp_path / "out")),
                   key=lambda m: m["clip_start"])
    # 50 frames in clips of 20: [0, 20), [20, 40) and a tail of 10 (kept: half a clip).
    assert [m["clip_start"] for m in metas] == [0.0, 0.8, 1.6]
    assert [m["num_frames"] for m in metas] == [10, 10, 5]
    assert summary["num_samples"] == 3
    for key, ext, video, meta in all_samples(tmp_path / "out"):
        assert key.endswith(("_c0", "_c1", "_c2")) and ext == "webm"
        assert (meta["codec"], meta["width"], meta["height"]) == ("vp9", 24, 16)
        assert meta["fps"] == 12.5 and meta["frame_stride"] == 2 and meta["keyframe_interval"] == 4
        assert decode_frames(video).shape == (meta["num_frames"], 16, 24, 3)


def _pack_transcoded(src, out, **kw):
    return pack(src, out, codec="vp9", gop=4, shard_size=12_000, seed=3, progress=False, **kw)


def test_interrupted_then_resumed_output_is_byte_identical(collection, tmp_path, monkeypatch):
    reference = _pack_transcoded(collection, tmp_path / "ref")
    assert reference["num_shards"] >= 3

    real_write, calls = shard.write_shard, []

    def crash_on_second_shard(samples, tar_path, idx_path):
        calls.append(tar_path)
        if len(calls) == 2:
            Path(f"{tar_path}.tmp").write_bytes(b"torn tar")  # a crash mid-write
            raise KeyboardInterrupt("simulated interruption")
        return real_write(samples, tar_path, idx_path)

    monkeypatch.setattr(shard, "write_shard", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        _pack_transcoded(collection, tmp_path / "run")
    assert not (tmp_path / "run" / "manifest.json").exists()
    monkeypatch.setattr(shard, "write_shard", real_write)
    resumed = _pack_transcoded(collection, tmp_path / "run")
    assert resumed["shards_reused"] == 1
    assert out_files(tmp_path / "run") == out_files(tmp_path / "ref")


def test_interrupted_during_transcoding_resumes_byte_identical(collection, tmp_path, monkeypatch):
    _pack_transcoded(collection, tmp_path / "ref", workers=2)
    real_transcode, calls = stage.transcode, []

    def crash_on_fourth_video(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated interruption")
        return real_transcode(*args, **kwargs)

    monkeypatch.setattr(stage, "transcode", crash_on_fourth_video)
    with pytest.raises(KeyboardInterrupt):
        _pack_transcoded(collection, tmp_path / "run")
    assert len(list((tmp_path / "run" / ".staging" / "items").iterdir())) == 3
    calls.clear()
    resumed = _pack_transcoded(collection, tmp_path / "run")
    assert len(calls) == 3  # only the videos not finished before the interruption
    assert resumed["num_samples"] == 6
    assert out_files(tmp_path / "run") == out_files(tmp_path / "ref")


@pytest.fixture()
def bad_inputs(tmp_path):
    """A list file with one good video and one entry of every bad-input kind."""
    d = tmp_path / "in"
    d.mkdir()
    make_clip(d / "good one.webm")
    make_clip(d / "other good.webm", seed=1)
    truncated = make_clip(d / "cut.webm", num_frames=24).read_bytes()
    (d / "cut.webm").write_bytes(truncated[: len(truncated) // 2])
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("hello, I am not a video\n" * 50)
    make_audio(d / "sound.m4a")
    make_clip(d / "mpeg2.mkv", "mpeg2video", "matroska")
    (d / "a folder.webm").mkdir()
    make_clip_with_long_audio(d / "long audio.webm")
    whole = make_clip_with_long_audio(d / "cut av.webm", num_frames=60).read_bytes()
    (d / "cut av.webm").write_bytes(whole[: len(whole) // 2])
    lines = ["good one.webm cat", "other good.webm dog", "cut.webm cat", "empty.mp4 cat",
             "text.mp4 cat", "sound.m4a cat", "mpeg2.mkv cat", "a folder.webm cat",
             "gone.webm cat", "good one.webm cat", "long audio.webm dog",
             "cut av.webm dog"]
    (d / "list.txt").write_text("\n".join(lines) + "\n")
    (d / "labels.txt").write_text("cat\ndog\n")
    return d


def test_every_bad_input_is_skipped_with_its_reason_and_good_videos_survive(bad_inputs, tmp_path):
    summary = pack(bad_inputs / "list.txt", tmp_path / "out", root=str(bad_inputs),
                   labels=str(bad_inputs / "labels.txt"), progress=False)
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").open()]
    reasons = {(s["source"], s["reason"]) for s in skipped}
    assert reasons == {
        ("cut.webm", "truncated"), ("empty.mp4", "zero-byte"), ("text.mp4", "non-video"),
        ("sound.m4a", "audio-only"), ("mpeg2.mkv", "unsupported-codec"),
        ("a folder.webm", "unreadable"), ("gone.webm", "missing"),
        ("good one.webm", "duplicate"), ("cut av.webm", "truncated"),
    }
    assert all(s["detail"] for s in skipped)
    assert "--codec vp9" in next(s["detail"] for s in skipped if s["source"] == "mpeg2.mkv")
    assert summary["num_skipped"] == 9 and summary["skipped"]["duplicate"] == 1
    metas = [m for _, _, _, m in all_samples(tmp_path / "out")]
    assert sorted((m["source"], m["label_name"]) for m in metas) == [
        ("good one.webm", "cat"), ("long audio.webm", "dog"), ("other good.webm", "dog")]
    assert next(m["num_frames"] for m in metas if m["source"] == "long audio.webm") == 12
    assert read_manifest(tmp_path / "out")["labels"] == ["cat", "dog"]


def test_strict_turns_a_skip_into_a_failure(bad_inputs, tmp_path):
    with pytest.raises(PackError, match="--strict: 9 inputs skipped"):
        pack(bad_inputs / "list.txt", tmp_path / "out", root=str(bad_inputs),
             labels=str(bad_inputs / "labels.txt"), strict=True, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert len((tmp_path / "out" / "skipped.jsonl").read_text().splitlines()) == 9


def test_bad_arguments_get_clear_errors(collection, tmp_path, monkeypatch):
    with pytest.raises(PackError, match="does not exist"):
        pack(tmp_path / "nowhere", tmp_path / "out", progress=False)
    pack(collection, tmp_path / "out", progress=False)
    with pytest.raises(PackError, match="different arguments.*seed was 0, now 1"):
        pack(collection, tmp_path / "out", seed=1, progress=False)
    assert pack(collection, tmp_path / "out", workers=2, progress=False)["already_complete"]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.pdf").write_bytes(b"%PDF")
    with pytest.raises(PackError, match="not empty"):
        pack(collection, tmp_path / "foreign", progress=False)
    with pytest.raises(PackError, match="--codec copy keeps"):
        pack(collection, tmp_path / "o2", frame_stride=4, progress=False)
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    with pytest.raises(TranscodeError, match="lacks.*use one of: vp9"):
        check_encoder("h264")


def test_list_csv_and_pretraining_sources(tmp_path):
    (tmp_path / "v").mkdir()
    make_clip(tmp_path / "v" / "a b.webm")
    (tmp_path / "train.txt").write_text("v/a b.webm 3\n")
    (tmp_path / "pre.txt").write_text("v/a b.webm 0 -1\n")
    (tmp_path / "list.csv").write_text("video,cls\nv/a b.webm,jump\n")
    [labeled] = parse_sources(tmp_path / "train.txt", root=str(tmp_path))
    assert (labeled.source, labeled.path, labeled.label_raw) == (
        "v/a b.webm", str(tmp_path / "v" / "a b.webm"), "3")
    labels, unknown = resolve_labels([labeled])
    assert labels == ["0", "1", "2", "3"] and labeled.label == 3 and not unknown
    [pretrain] = parse_sources(tmp_path / "pre.txt", root=str(tmp_path))
    assert (pretrain.label_raw, pretrain.start, pretrain.total) == (None, 0, None)
    [row] = parse_sources(tmp_path / "list.csv", root=str(tmp_path), path_column="video",
                          label_column="cls")
    assert (row.source, row.label_raw) == ("v/a b.webm", "jump")
    summary = pack(tmp_path / "list.csv", tmp_path / "out", root=str(tmp_path),
                   path_column="video", label_column="cls", progress=False)
    assert summary["num_samples"] == 1 and read_manifest(tmp_path / "out")["labels"] == ["jump"]


def test_keys_are_dot_free_stable_and_distinct():
    names = ["a/b.c.mp4", "a/b_c.mp4", "ü/ö ä.webm", "x" * 300 + ".mp4", "...mp4"]
    keys = [make_key(n) for n in names]
    assert len(set(keys)) == len(keys)
    assert all("." not in k and " " not in k and k.isascii() and len(k) <= 53 for k in keys)
    assert make_key("a/b.c.mp4") == keys[0]


def test_workers_do_not_change_the_output(collection, tmp_path):
    _pack_transcoded(collection, tmp_path / "one", workers=1)
    _pack_transcoded(collection, tmp_path / "two", workers=2)
    assert out_files(tmp_path / "one") == out_files(tmp_path / "two")
    shutil.rmtree(tmp_path / "two")


def test_killed_process_then_rerun_gives_the_same_bytes(collection, tmp_path):
    """SIGKILL a real `vmae2-shard pack` once it has finished some work, then run it again."""
    _pack_transcoded(collection, tmp_path / "ref")
    command = [sys.executable, "-m", "shard_tools.cli", "pack", str(collection),
               str(tmp_path / "run"), "--codec", "vp9", "--gop", "4", "--shard-size", "12000",
               "--seed", "3", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    items = tmp_path / "run" / ".staging" / "items"
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if items.is_dir() and len(list(items.glob("*.json"))) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait()
    if process.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert not (tmp_path / "run" / "manifest.json").exists()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert out_files(tmp_path / "run") == out_files(tmp_path / "ref")
