"""bench.experiments: the in-memory loader's contract, the test views, and a tiny run of each command.

The smoke runs use toy sizes (a few steps, a handful of synthetic videos): they check that every
training goes through the loop (run folders with metrics and a summary), that the report rows exist,
and that the notes below the marker survive a rerun.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.env import NOTES_MARK
from bench.experiments import budget, table1
from dali_pipes.masking import mask_counts


def toy_frames(num_videos=5, stored=12, height=20, width=24):
    """Videos whose pixel (v, t, y, x) encodes its own coordinates, so a crop can be located."""
    v, t, y, x = np.meshgrid(np.arange(num_videos), np.arange(stored), np.arange(height), np.arange(width),
                             indexing="ij")
    return np.stack([v * 40 + t, y, x], axis=-1).astype(np.uint8)


def test_clip_loader_batches_masks_and_resume():
    frames, labels = toy_frames(), np.array([3, 1, 4, 1, 5])
    grid = (4, 2, 2)                                             # mask indices only: any valid grid
    loader = budget.ClipLoader(frames, labels, 2, num_sample=3, num_frames=4, stride=2, img_size=8, seed=7,
                               grid=grid, mask_ratios=(0.5, 0.5))
    assert len(loader) == 2                                      # 5 videos, batches of 2: the last video waits
    batches = list(loader)
    assert len(batches) == 2 and loader.state_dict() == {"epoch": 1, "batch": 0}
    seen = []
    for batch in batches:
        video = batch["video"].numpy()
        assert video.shape == (6, 4, 8, 8, 3) and video.dtype == np.uint8
        v = video[:, 0, 0, 0, 0] // 40
        assert np.all(np.diff(video[..., 0].astype(int), axis=1) == 2)          # stride 2 in time
        assert np.all(np.diff(video[..., 1].astype(int), axis=2) == 1)          # a contiguous crop
        assert batch["label"].tolist() == labels[v].tolist()
        assert batch["keys"] == [f"synth-{i:06d}" for i in v]
        assert len(set(v[:3])) == 1 and len(set(v[3:])) == 1                    # 3 views of each video
        for key, count in mask_counts(grid, 0.5, 0.5).items():
            assert batch["masks"][key].shape == (6, count)
        seen += sorted(set(v.tolist()))
    assert len(set(seen)) == 4                                   # no video twice in an epoch
    state = {"epoch": 0, "batch": 1}
    resumed = budget.ClipLoader(frames, labels, 2, num_sample=3, num_frames=4, stride=2, img_size=8, seed=7,
                                grid=grid, mask_ratios=(0.5, 0.5))
    resumed.load_state_dict(state)
    again = next(iter(resumed))
    assert torch.equal(again["video"], batches[1]["video"])
    assert torch.equal(again["masks"]["visible_idx"], batches[1]["masks"]["visible_idx"])


def test_clip_loader_flips_and_names_what_does_not_fit():
    frames = toy_frames(num_videos=2)
    loader = budget.ClipLoader(frames, np.zeros(2, dtype=np.int64), 2, num_sample=8, num_frames=4, stride=2,
                               img_size=8, flip=True)
    columns = next(iter(loader))["video"][:, 0, 0, :, 2].numpy().astype(int)  # the x coordinate along a row
    steps = {int(np.diff(row)[0]) for row in columns}
    assert steps == {1, -1}                                      # some views flipped, some not (seeded)
    with pytest.raises(ValueError, match="do not fit videos of 12 frames of 24x20"):
        budget.ClipLoader(frames, np.zeros(2), 1, num_sample=1, num_frames=8, stride=2, img_size=8)
    with pytest.raises(ValueError, match="2 videos make no batch of 3"):
        budget.ClipLoader(frames, np.zeros(2), 3, num_sample=1, num_frames=4, stride=2, img_size=8)


def test_test_clips_spread_over_time_and_the_long_side():
    video = toy_frames(num_videos=1)[0]                          # 12 frames of 24x20
    views = budget.test_clips(video, num_frames=4, stride=2, img_size=8, num_clips=2, num_crops=3)
    assert views.shape == (6, 4, 8, 8, 3)
    starts = views[:, 0, 0, 0, 0].tolist()                      # first frame of each view, clip-major
    assert starts == [0, 0, 0, 4, 4, 4]                          # 12 − 4·2 = 4 spare frames
    assert views[:, 0, 0, 0, 2].tolist() == [0, 8, 16] * 2      # crops at x 0, 8, 16 along the width
    assert set(views[:, 0, 0, 0, 1].tolist()) == {6}            # centred in height: (20 − 8) / 2
    one = budget.test_clips(video, num_frames=4, stride=2, img_size=8, num_clips=1, num_crops=1)
    assert one[0, 0, 0, 0].tolist() == [2, 6, 8]                 # the centre clip and crop


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_budget_commands_run_through_the_loop_and_report(tmp_path):
    runner, out, reports = CliRunner(), tmp_path / "budget", tmp_path / "reports"
    quiet = ["--set", "progress=false", "--set", "log_every=1"]
    result = runner.invoke(budget.main, ["pretrain", "--out", str(out), "--steps", "2", "--videos", "2", *quiet])
    assert result.exit_code == 0, result.output
    run = out / "pretrain-dec0.5-2"
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2] and (run / "pretrain_final.pt").is_file()
    weights = str(run / "pretrain_final.pt")
    for extra in ([], ["--init", weights], ["--label", "shape"]):
        result = runner.invoke(budget.main, ["finetune", "--out", str(out), "--steps", "2", "--videos", "4",
                                             "--val-videos", "3", *extra, *quiet])
        assert result.exit_code == 0, result.output
    result = runner.invoke(budget.main, ["finetune", "--out", str(out), "--init", str(tmp_path / "nope.pt")])
    assert result.exit_code == 2 and "no such weights file" in result.output
    result = runner.invoke(budget.main, ["plateau", "--out", str(out), "--weights", weights, "--videos", "4",
                                         "--batches", "2"])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out / "results.jsonl")
    assert [r["kind"] for r in rows] == ["pretrain", "finetune", "finetune", "finetune", "plateau"]
    plateau = rows[-1]
    assert plateau["clips"] == 16 and abs(plateau["zero"] - 1) < 0.02     # normalised targets: 0 scores ~1
    assert plateau["constant"] <= plateau["zero"] and plateau["model"] > 0
    rows = rows[:-1]
    assert [r["label"] for r in rows[1:]] == ["motion", "motion", "shape"]
    assert all(r["top1"] in (0.0, 100 / 3, 200 / 3, 100.0) and r["views"] == 6 for r in rows[1:])
    assert rows[2]["init"] == weights and rows[0]["command"].startswith("python -m ")
    assert len(list(out.glob("clips-seed1-4x*.npy"))) == 1      # rendered once, reused by the later runs

    result = runner.invoke(budget.main, ["report", "--out", str(out), "--report-dir", str(reports)])
    assert result.exit_code == 0, result.output
    md = (reports / "budget.md").read_text()
    assert "| motion (12.5 %) | scratch | 2 | 4 | 3 (6) |" in md
    assert "| motion (12.5 %) | pretrain-dec0.5-2 | 2 | 4 | 3 (6) |" in md
    assert "| shape (25.0 %) | scratch | 2 | 4 | 3 (6) |" in md
    assert "Pre-training loss, pretrain-dec0.5-2 (2 videos" in md
    assert len(json.loads((reports / "budget.json").read_text())["rows"]) == 5
    (reports / "budget.md").write_text(md + "\nWhat the rows show.\n")
    result = runner.invoke(budget.main, ["report", "--out", str(out), "--report-dir", str(reports)])
    assert result.exit_code == 0, result.output
    assert (reports / "budget.md").read_text() == md + "\nWhat the rows show.\n"
    assert md.count(NOTES_MARK) == 1


def test_table1_runs_three_settings_and_a_rerun_keeps_the_notes(tmp_path):
    runner, out, reports = CliRunner(), tmp_path / "t1", tmp_path / "reports"
    args = ["--out", str(out), "--pretrain-videos", "2", "--finetune-videos", "4", "--val-videos", "2",
            "--pretrain-steps", "2", "--finetune-steps", "2", "--report-dir", str(reports),
            "--pretrain-set", "progress=false", "--finetune-set", "progress=false", "--finetune-set", "log_every=1"]
    result = runner.invoke(table1.main, args)
    assert result.exit_code == 0, result.output
    md = (reports / "table1.md").read_text()
    for title in table1.TITLES.values():
        assert f"| {title} |" in md
    rows = json.loads((reports / "table1.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == ["encoder-only", "dual", "scratch"]
    assert [r["decoder_mask_ratio"] for r in rows] == [0.0, 0.5, None]
    assert all(r["finetune_steps"] == 2 and r["val_videos"] == 2 for r in rows)
    assert [r["pretrain_steps"] for r in rows[:2]] == [2, 2] and rows[0]["pretrain_gflops_per_clip"] > 0
    assert rows[0]["vs_scratch"] == rows[0]["top1"] - rows[2]["top1"] and "vs_scratch" not in rows[2]
    assert (out / "pretrain-dual" / "summary.json").is_file() and (out / "finetune-scratch" / "summary.json").is_file()

    (out / "dual.json").rename(out / "dual.saved")
    result = runner.invoke(table1.main, [*args, "--setting", "scratch"])     # dual not recorded: no report
    assert result.exit_code == 0 and "the report waits for: dual" in result.output
    assert (reports / "table1.md").read_text() == md
    (out / "dual.saved").rename(out / "dual.json")
    (reports / "table1.md").write_text(md + "\nWhy the rows differ.\n")
    mtime = (out / "dual.json").stat().st_mtime_ns
    result = runner.invoke(table1.main, args)                    # nothing left to run: only the report
    assert result.exit_code == 0, result.output
    assert (out / "dual.json").stat().st_mtime_ns == mtime
    assert (reports / "table1.md").read_text() == md + "\nWhy the rows differ.\n"
    result = runner.invoke(table1.main, [*args[:2], "--finetune-set", "oops"])
    assert result.exit_code == 2 and "write key=value" in result.output
