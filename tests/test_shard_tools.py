"""vmae2-shard verify, info, the index parser, synth packing and the command line."""

import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from test_shard_pack import make_clip

from shard_tools.cli import main
from shard_tools.format import read_manifest
from shard_tools.index import format_index, parse_index
from shard_tools.info import info
from shard_tools.pack import PackError, pack
from shard_tools.synth import CLASSES, make_synthetic, synth_index
from shard_tools.verify import verify


@pytest.fixture()
def packed(tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        (src / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        make_clip(src / f"c{i % 2}" / f"v{i}.webm", num_frames=6 + i, seed=i)
    pack(src, tmp_path / "out", shard_size=8_000, progress=False)
    return tmp_path / "out"


def test_verify_passes_a_fresh_dataset_and_decodes_every_clip_with_full(packed):
    report = verify(packed, full=True)
    assert report["problems"] == []
    assert report["samples"] == 6 and report["decoded"] == 6
    assert verify(packed)["decoded"] == report["shards"] > 1


def test_verify_catches_a_corrupted_tar(packed):
    entry = read_manifest(packed)["shards"][0]
    tar = packed / entry["tar"]
    data = bytearray(tar.read_bytes())
    data[1500] ^= 0xFF  # inside the first video member
    tar.write_bytes(bytes(data))
    problems = verify(packed)["problems"]
    assert any("corrupted" in p and entry["tar"] in p for p in problems)


def test_verify_catches_a_stale_index(packed):
    shards = read_manifest(packed)["shards"]
    (packed / shards[0]["index"]).write_bytes((packed / shards[1]["index"]).read_bytes())
    problems = verify(packed)["problems"]
    assert any("stale index" in p and shards[0]["index"] in p for p in problems)


def test_verify_catches_a_missing_shard_and_the_cli_exits_nonzero(packed):
    entry = read_manifest(packed)["shards"][-1]
    (packed / entry["tar"]).unlink()
    assert any("missing shard" in p for p in verify(packed)["problems"])
    result = CliRunner().invoke(main, ["verify", str(packed)])
    assert result.exit_code == 1 and "missing shard" in result.output


def test_info_counts_labels_resolutions_and_durations(packed):
    summary = info(packed)
    assert summary["num_samples"] == 6
    assert summary["labels"] == {"c0": 3, "c1": 3}
    assert summary["resolution_histogram"] == {"32x24": 6}
    assert summary["codecs"] == {"vp9": 6}
    assert summary["duration_histogram"] == {"0-1s": 6}
    assert summary["total_hours"] == pytest.approx(sum(6 + i for i in range(6)) / 25 / 3600)
    result = CliRunner().invoke(main, ["info", str(packed)])
    assert result.exit_code == 0 and "32x24  6" in result.output


def test_synth_is_deterministic_balanced_and_decodes_on_dalis_cpu_backend(tmp_path):
    from nvidia.dali import fn, pipeline_def

    summary = make_synthetic(tmp_path / "a", 8, seed=5, num_frames=16, width=64, height=48,
                             progress=False)
    make_synthetic(tmp_path / "b", 8, seed=5, num_frames=16, width=64, height=48, workers=2,
                   progress=False)
    make_synthetic(tmp_path / "c", 8, seed=6, num_frames=16, width=64, height=48, progress=False)
    tar = read_manifest(tmp_path / "a")["shards"][0]["tar"]
    assert (tmp_path / "a" / tar).read_bytes() == (tmp_path / "b" / tar).read_bytes()
    assert (tmp_path / "a" / tar).read_bytes() != (tmp_path / "c" / tar).read_bytes()
    manifest = read_manifest(tmp_path / "a")
    assert summary["num_samples"] == 8 and manifest["labels"] == list(CLASSES)
    assert info(tmp_path / "a")["labels"] == {name: 1 for name in CLASSES}
    assert verify(tmp_path / "a", full=True)["problems"] == []

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def decode():
        video, meta = fn.readers.webdataset(
            paths=[str(tmp_path / "a" / s["tar"]) for s in manifest["shards"]],
            index_paths=[str(tmp_path / "a" / s["index"]) for s in manifest["shards"]],
            ext=["webm", "json"])
        return fn.decoders.video(video, device="cpu"), meta

    pipe = decode()
    pipe.build()
    frames, metas = pipe.run()
    for i in range(8):
        meta = json.loads(bytes(np.array(metas.at(i))).decode("utf-8"))
        assert np.array(frames.at(i)).shape == (meta["num_frames"], 48, 64, 3) == (16, 48, 64, 3)


def test_synth_style_plain_packs_the_plain_glyphs_and_records_the_style(tmp_path):
    from nvidia.dali import fn, pipeline_def

    from shard_tools.glyphs import render_glyph_scene

    args = ["synth", "--kind", "glyphs", "--num-videos", "4", "--num-frames", "8", "--width", "32", "--height", "32",
            "--codec", "mjpeg", "--no-progress"]
    for style in ("plain", "varied"):
        result = CliRunner().invoke(main, [*args, str(tmp_path / style), "--style", style])
        assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "plain")
    assert manifest["args"]["provenance"]["synth"]["style"] == "plain"
    assert "style" not in read_manifest(tmp_path / "varied")["args"]["provenance"]["synth"]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def decode(root):
        shards = read_manifest(root)["shards"]
        video, meta = fn.readers.webdataset(paths=[str(root / s["tar"]) for s in shards],
                                            index_paths=[str(root / s["index"]) for s in shards],
                                            ext=["avi", "json"])
        return fn.decoders.video(video, device="cpu"), meta

    for style in ("plain", "varied"):   # each decoded clip is nearer its own style's render than the other's
        pipe = decode(tmp_path / style)
        pipe.build()
        frames, metas = pipe.run()
        for i in range(4):
            index = synth_index(json.loads(bytes(np.array(metas.at(i))).decode("utf-8"))["source"])
            error = {s: np.abs(np.array(frames.at(i)).astype(float)
                               - render_glyph_scene(0, index, 8, 32, 32, style=s)["frames"]).mean()
                     for s in ("plain", "varied")}
            assert error[style] < 8 and error[style] < error[{"plain": "varied", "varied": "plain"}[style]], error

    result = CliRunner().invoke(main, ["synth", str(tmp_path / "scenes"), "--num-videos", "2", "--style", "plain"])
    assert result.exit_code != 0 and "glyph style" in result.output


def test_every_cli_command_and_option_has_help():
    for name, command in main.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.name}"


def test_cli_pack_prints_the_summary_and_reports_bad_arguments(tmp_path):
    make_clip(tmp_path / "one.webm")
    runner = CliRunner()
    result = runner.invoke(main, ["pack", str(tmp_path / "one.webm"), str(tmp_path / "o")])
    assert result.exit_code == 2 and "is a single video" in result.output
    (tmp_path / "list.txt").write_text("one.webm\n")
    result = runner.invoke(main, ["pack", str(tmp_path / "list.txt"), str(tmp_path / "out"),
                                  "--root", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "packed 1 samples into 1 shards" in result.output
    result = runner.invoke(main, ["pack", str(tmp_path / "list.txt"), str(tmp_path / "out"),
                                  "--root", str(tmp_path), "--seed", "9", "--no-progress"])
    assert result.exit_code == 2 and "different arguments" in result.output
    result = runner.invoke(main, ["synth", str(tmp_path / "syn"), "--num-videos", "2",
                                  "--num-frames", "8", "--width", "32", "--height", "32",
                                  "--no-progress"])
    assert result.exit_code == 0 and "packed 2 samples" in result.output
    assert Path(tmp_path / "syn" / "manifest.json").is_file()


def test_index_parser_round_trips_and_names_the_bad_line():
    members = [("a.webm", 512, 10), ("a.json", 1536, 5), ("b_c0.mp4", 2560, 3), ("b_c0.json", 3584, 2)]
    assert parse_index(format_index(members)) == [
        [("webm", 512, 10, "a.webm"), ("json", 1536, 5, "a.json")],
        [("mp4", 2560, 3, "b_c0.mp4"), ("json", 3584, 2, "b_c0.json")]]
    for text, message in (("v1.2 1\nwebm x 3 a.webm\n", "line 2: 'webm x 3 a.webm'"),
                          ("v1.2 1\nwebm 1 3\n", "line 2"), ("v1.2\n", "line 1"),
                          ("v1.1 0\n", "version v1.1"), ("v1.2 2\nwebm 1 2 a.webm\n", "says 2")):
        with pytest.raises(ValueError, match=message):
            parse_index(text)


def test_cli_ray_flag_alone_means_the_running_cluster(tmp_path, monkeypatch):
    seen = {}

    def fake_pack(src, out, **kwargs):
        seen.update(kwargs)
        raise PackError("stop here")

    monkeypatch.setattr("shard_tools.cli.pack", fake_pack)
    for args, expected in ((["--ray"], "auto"), (["--ray", "local"], "local"),
                           (["--ray", "ray://head:10001"], "ray://head:10001"), ([], None)):
        result = CliRunner().invoke(main, ["pack", "src", "out", *args, "--workers", "2"])
        assert result.exit_code == 2 and "stop here" in result.output
        assert (seen["ray"], seen["workers"]) == (expected, 2)
