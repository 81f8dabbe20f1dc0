"""Bad samples: a video changed inside a packed shard, or one that does not decode, is replaced in its batch
by a good video of the same batch, counted and named (metrics, summary, result.json, skipped.jsonl); too many
stop the run with the shard and the fix; --verify-data checks every shard's sha256 before anything runs.

Tiny VP9 shards made here (DALI's CPU decoder). "Overwrite 4 kB in the middle" keeps the tar's size, so
the shard still opens and FFmpeg decodes on: only the checksum in the sample's json tells.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SMALL_MODEL_KWARGS, take

import dali_pipes
from dali_pipes.bad_samples import BadDataError, check_bad_fraction, verify_datasets
from dali_pipes.classify import FinetuneConfig, TestConfig, finetune_loader, test_loader
from dali_pipes.sampling import SamplingConfig
from shard_tools.format import read_manifest
from shard_tools.index import parse_index
from shard_tools.samples import iter_samples
from shard_tools.shard import write_shard
from shard_tools.verify import verify
from vmae2.cli import main

SMALL_SETS = [*(f"model.{k}={v}" for k, v in SMALL_MODEL_KWARGS.items()), "batch_videos_per_gpu=2", "num_sample=2",
              "frame_stride=2", "device=cpu", "log_every=1", "progress=false", "loader_threads=1", "tensorboard=false"]
SAMPLING = SamplingConfig(num_frames=8, stride=2, img_size=32, num_sample=1, patch_size=8)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    from shard_tools.synth import make_synthetic

    out = tmp_path_factory.mktemp("bad_samples") / "clean"
    make_synthetic(out, 8, codec="vp9", seed=0, num_frames=40, width=64, height=48, progress=False)
    return out


def copy_of(clean: Path, tmp_path: Path, checksums: bool = True) -> Path:
    data = tmp_path / "data"
    shutil.copytree(clean, data)
    if not checksums:
        strip_checksums(data)
    return data


def strip_checksums(data: Path) -> None:
    """Rewrite the shards without video_crc32, as packed before the field existed (manifest updated to match)."""
    manifest = read_manifest(data)
    for entry in manifest["shards"]:
        tar, idx = data / entry["tar"], data / entry["index"]
        samples = [(key, ext, video, {k: v for k, v in meta.items() if k != "video_crc32"})
                   for key, ext, video, meta in iter_samples(tar, idx)]
        written = write_shard(samples, tar, idx)
        entry["bytes"], entry["sha256"] = written["bytes"], written["sha256"]
    manifest["total_bytes"] = sum(e["bytes"] for e in manifest["shards"])
    (data / "manifest.json").write_text(json.dumps(manifest))


def video_members(data: Path) -> list[tuple[Path, int, int, str]]:
    """(tar, data offset, size, key) of every video member, shard by shard in tar order (the reader's order)."""
    members = []
    for entry in read_manifest(data)["shards"]:
        for sample in parse_index((data / entry["index"]).read_text()):
            ext, offset, size, name = next(m for m in sample if m[0] != "json")
            members.append((data / entry["tar"], offset, size, name.split(".", 1)[0]))
    return members


def overwrite(member, nbytes: int = 4096, where: str = "middle") -> str:
    """Overwrite up to nbytes of a video member in place (the tar keeps its size); returns its key.

    middle: random bytes in the middle (FFmpeg decodes on); start: zeros over the container header
    (the decoder cannot open it).
    """
    tar, offset, size, key = member
    n = min(nbytes, size)
    start = offset + (size - n) // 2 if where == "middle" else offset
    data = np.random.default_rng(size).integers(0, 256, n, dtype=np.uint8).tobytes() if where == "middle" else bytes(n)
    with open(tar, "r+b") as f:
        f.seek(start)
        f.write(data)
    return key


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def set_args(*extra):
    return [a for s in (*SMALL_SETS, *extra) for a in ("--set", s)]


def pretrain_loader(data, batch_size, **options):
    return dali_pipes.pretrain_loader(data, batch_size, SAMPLING, device="cpu", num_threads=1, **options)


# ---- packing and verify ----------------------------------------------------------------------------------------
def test_pack_records_each_videos_crc32_and_verify_names_a_changed_video(clean, tmp_path):
    for entry in read_manifest(clean)["shards"]:
        for _, _, video, meta in iter_samples(clean / entry["tar"], clean / entry["index"]):
            assert meta["video_crc32"] == f"{zlib.crc32(video):08x}"
    data = copy_of(clean, tmp_path)
    bad_key = overwrite(video_members(data)[3])
    problems = verify(data)["problems"]
    assert any(bad_key in p and "changed after packing" in p for p in problems), problems


def test_bad_fraction_is_judged_after_one_over_the_fraction_samples():
    one = [{"key": "a", "shard": "/d/train-000000.tar", "reason": "checksum", "count": 1}]
    check_bad_fraction(one, 50, 0.01)                     # 1 of 50: fewer than 100 read, not judged yet
    check_bad_fraction(one, 100, 0.01)                    # 1 of 100: not more than 1 %
    two = [{**one[0], "count": 2}]
    with pytest.raises(BadDataError, match=r"2 of 100 .*train-000000.tar: a \(checksum\).*vmae2-shard verify /d"):
        check_bad_fraction(two, 100, 0.01)
    with pytest.raises(BadDataError):
        check_bad_fraction(one, 1, 0.0)                   # 0: the first bad sample stops
    check_bad_fraction([{**one[0], "count": 5}], 5, 1.0)  # 1: never


# ---- the loaders -----------------------------------------------------------------------------------------------
def test_corrupted_video_is_replaced_by_a_good_video_of_its_batch(clean, tmp_path):
    """Same seed, clean and corrupted shards: only the bad row changes, and it becomes the next good row's clip."""
    data = copy_of(clean, tmp_path)
    bad_key = overwrite(video_members(data)[5])
    clean_batches = list(pretrain_loader(clean, 4, shuffle=False, seed=1))
    loader = pretrain_loader(data, 4, shuffle=False, seed=1)
    batches = list(loader)
    assert len(batches) == 2
    for ref, got in zip(clean_batches, batches):
        if bad_key not in ref["keys"]:
            assert got["keys"] == ref["keys"] and torch.equal(got["video"], ref["video"]) and not got["bad_samples"]
            continue
        row = ref["keys"].index(bad_key)
        good = (row + 1) % 4
        assert got["keys"] == [ref["keys"][good] if i == row else k for i, k in enumerate(ref["keys"])]
        for i in range(4):
            assert torch.equal(got["video"][i], ref["video"][good if i == row else i])
            assert torch.equal(got["masks"]["visible_idx"][i], ref["masks"]["visible_idx"][good if i == row else i])
        assert [(r["key"], r["reason"]) for r in got["bad_samples"]] == [(bad_key, "checksum")]
        assert got["bad_samples"][0]["shard"].endswith(".tar") and "CRC-32" in got["bad_samples"][0]["detail"]
    assert [(r["key"], r["count"]) for r in loader.bad_samples()] == [(bad_key, 1)] and loader.samples_read() == 8


@pytest.mark.parametrize("checksums", [True, False], ids=["checksum", "decode"])
def test_bad_rows_are_replaced_an_all_bad_batch_dropped_and_resume_stays_exact(clean, tmp_path, checksums):
    """Reader order is tar order: batch 1 (rows 2, 3) is all bad and dropped, batch 2 (rows 4, 5) has one.

    Without checksums the decoder finds them (each sample of the failing batch decoded alone); with them the
    sampler does. A loader resumed after the dropped batch gives the uninterrupted loader's batches and tally.
    """
    data = copy_of(clean, tmp_path, checksums)
    members = video_members(data)
    where = "middle" if checksums else "start"
    bad = {overwrite(members[row], nbytes=4096 if checksums else 256, where=where) for row in (2, 3, 4)}

    def make():
        return pretrain_loader(data, 2, shuffle=False, seed=5)

    full_loader = make()
    full = take(full_loader, 6)
    assert [b["keys"] for b in full[:2]] == [[members[0][3], members[1][3]], [members[5][3]] * 2]
    reason = "checksum" if checksums else "decode"
    assert sorted(r["key"] for r in full[1]["bad_samples"]) == sorted(bad)            # the dropped batch's too
    assert {r["reason"] for r in full_loader.bad_samples()} == {reason}
    assert not any(key in bad for b in full for key in b["keys"])
    first = make()
    take(first, 2)
    state = first.state_dict()
    first.close()
    assert state["batches_drawn"] == 3 and state["samples_read"] == 6
    resumed = make()
    resumed.load_state_dict(state)
    rest = take(resumed, 4)
    for a, b in zip(full[2:], rest):
        assert a["keys"] == b["keys"] and torch.equal(a["video"], b["video"])
        assert [r["key"] for r in a["bad_samples"]] == [r["key"] for r in b["bad_samples"]]
    assert resumed.bad_samples() == full_loader.bad_samples()
    assert resumed.samples_read() == full_loader.samples_read()


def test_finetune_and_test_loaders_leave_the_bad_video_out_and_list_it(clean, tmp_path):
    data = copy_of(clean, tmp_path)
    bad_key = overwrite(video_members(data)[6])
    cfg = FinetuneConfig(num_frames=8, stride=2, img_size=32, num_sample=2, rand_augment=None, erase=None)
    loader = finetune_loader(data, 2, cfg, device="cpu", num_threads=1, shuffle=False)
    keys = [k for b in loader for k in b["keys"]]
    assert bad_key not in keys and len(keys) == 16
    assert [r["key"] for r in loader.bad_samples()] == [bad_key]
    views = TestConfig(num_frames=8, stride=2, num_clips=1, num_crops=1, short_side=32)
    with test_loader(data, 3, views, device="cpu", num_threads=1) as tests:
        valid = [k for b in tests for k, ok in zip(b["keys"], b["valid"].tolist()) if ok]
        assert sorted(valid) == sorted(m[3] for m in video_members(clean) if m[3] != bad_key)
        assert [r["key"] for r in tests.bad_samples()] == [bad_key]


# ---- training, evaluation and extraction end to end ------------------------------------------------------------
def test_pretrain_on_a_corrupted_shard_finishes_and_names_the_one_bad_key(clean, tmp_path):
    data = copy_of(clean, tmp_path)
    bad_key = overwrite(video_members(data)[2])
    run = tmp_path / "run"
    result = invoke("pretrain", "--preset", "tiny", "--data", data, "--out", run, "--steps", 6,
                    *set_args("log_keys=true", "save_every=6"))
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["bad_samples"] >= 1 and [r["key"] for r in summary["bad_sample_list"]] == [bad_key]
    assert summary["bad_sample_list"][0]["reason"] == "checksum"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["new_bad_keys"] for r in rows if "new_bad_keys" in r] == [[bad_key]]
    assert rows[-1]["bad_samples"] == summary["bad_samples"]
    logged = [json.loads(line)["keys"] for line in (run / "keys-rank0.jsonl").read_text().splitlines()]
    assert len(logged) == 6 and not any(bad_key in keys for keys in logged)
    assert bad_key in result.output and "replaced by other videos" in result.output


def test_every_video_corrupted_stops_with_the_shard_and_the_fix(clean, tmp_path):
    data = copy_of(clean, tmp_path)
    for member in video_members(data):
        overwrite(member)
    result = invoke("pretrain", "--preset", "tiny", "--data", data, "--out", tmp_path / "run", "--steps", 4,
                    *set_args())
    assert result.exit_code == 1, result.output
    assert "no good sample" in result.output and f"vmae2-shard verify {data} --full" in result.output
    assert "train-000000.tar" in result.output and "Traceback" not in result.output


def test_more_bad_videos_than_the_fraction_stop_the_run(clean, tmp_path):
    data = copy_of(clean, tmp_path)
    bad = {overwrite(video_members(data)[row]) for row in (1, 6)}
    run = tmp_path / "run"
    result = invoke("pretrain", "--preset", "tiny", "--data", data, "--out", run, "--steps", 10,
                    *set_args("max_bad_sample_fraction=0.1"))
    assert result.exit_code == 1, result.output
    assert "max_bad_sample_fraction=0.1" in result.output and "vmae2-shard verify" in result.output
    assert all(key in result.output for key in bad) and "train-000000.tar" in result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bad_samples"] >= 2 and len(rows) < 10     # stopped at the row that went over


def test_eval_leaves_the_bad_video_out_of_the_scores_and_lists_it(clean, tmp_path):
    from vmae2.config import model_config
    from vmae2.model import VideoClassifier

    data = copy_of(clean, tmp_path)
    bad_key = overwrite(video_members(data)[4])
    weights = tmp_path / "classifier.pt"
    torch.save(VideoClassifier(model_config("tiny", **SMALL_MODEL_KWARGS), 8, drop_path=0.0).state_dict(), weights)
    sets = [a for s in (*(f"model.{k}={v}" for k, v in SMALL_MODEL_KWARGS.items()), "frame_stride=2",
                        "loader_threads=1", "batch_videos_per_gpu=3") for a in ("--set", s)]
    result = invoke("eval", "--weights", weights, "--data", data, "--out", tmp_path / "eval", "--preset", "tiny",
                    "--views", "1x1", "--device", "cpu", *sets)
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert res["num_videos"] == 7 and res["num_skipped"] == 1
    assert [(r["key"], r["reason"]) for r in res["skipped"]] == [(bad_key, "checksum")]


def test_extraction_lists_a_video_the_decoder_cannot_open_in_shards_without_checksums(clean, tmp_path):
    from vmae2.config import model_config
    from vmae2.extract import extract
    from vmae2.model import VideoClassifier

    data = copy_of(clean, tmp_path, checksums=False)
    bad_key = overwrite(video_members(data)[1], nbytes=256, where="start")
    weights = tmp_path / "classifier.pt"
    model = VideoClassifier(model_config("tiny"), 4, drop_path=0.0)
    # with its config: weights without one are taken for the published 1d table, and tiny has the 3d one
    torch.save({"model": model.state_dict(), "config": {"model": dataclasses.asdict(model.cfg)}}, weights)
    out = tmp_path / "features"
    summary = extract(weights, data, out, preset="tiny", size=32, step=16, device="cpu", progress=False)  # 4×4 grid
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["key"], s["reason"]) for s in skipped] == [(bad_key, "undecodable")]
    assert summary["written"] == 7 and summary["skipped"] == 1


# ---- --verify-data -----------------------------------------------------------------------------------------------
def test_verify_data_catches_a_modified_tar_before_anything_runs(clean, tmp_path):
    data = copy_of(clean, tmp_path)
    verify_datasets([data])
    verify_datasets([data], rank=1, world_size=2)       # rank 1 of 2 hashes no shard of a 1-shard set
    tar = video_members(data)[0][0]
    overwrite(video_members(data)[7], nbytes=16)
    for command in (["pretrain", "--preset", "tiny", "--out", tmp_path / "run", *set_args()],
                    ["extract", "--weights", tmp_path / "none.pt", "--out", tmp_path / "features"]):
        result = invoke(*command, "--data", data, "--verify-data")
        assert result.exit_code == 1, result.output
        assert f"{tar}: sha256 differs from the manifest" in result.output
        assert f"vmae2-shard verify {data}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
