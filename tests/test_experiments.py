"""bench.experiments and bench.finetune: the probe's pieces on known data, and a toy run of Table 1.

The toy run uses a handful of small glyph clips and a few steps: it checks that every stage goes through
the engine (shards, the loop, the loaders), that a rerun reads the stages back instead of redoing them, and
that the report has its rows and keeps the notes below the marker. What the full run measures is in
bench/reports/cpu/table1.md.
"""
from __future__ import annotations

import json
import math

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench import finetune as finetune_bench
from bench.env import NOTES_MARK
from bench.experiments import probe, table1


def test_the_probe_fits_separable_features_and_chooses_its_strength_on_the_training_clips():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (4, 16))
    y = np.repeat(np.arange(4), 30)
    x = centres[y] + rng.normal(0, 1, (len(y), 16))
    fitted = probe.fit_probe(x, y, 4)
    assert set(fitted["cv_accuracy"]) == {1e-4, 1e-3, 1e-2, 1e-1} and fitted["l2"] in fitted["cv_accuracy"]
    held_y = np.repeat(np.arange(4), 10)
    held = centres[held_y] + rng.normal(0, 1, (len(held_y), 16))
    assert (probe.probe_predict(fitted, held) == held_y).mean() >= 0.95
    noise = probe.fit_probe(rng.normal(0, 1, (120, 16)), y, 4)                  # labels carry nothing
    assert (probe.probe_predict(noise, rng.normal(0, 1, (400, 16))) == np.repeat(np.arange(4), 100)).mean() < 0.4
    assert probe.standard_error(50.0, 100) == pytest.approx(5.0)


def test_labels_by_key_are_the_generators():
    from shard_tools.synth import synth_labels

    keys = ["3_synth-000012_0123abcd", "left_synth-000001_feedbeef"]
    assert table1.labels_of(keys, 1, "glyph").tolist() == [synth_labels("glyphs", 1, i)["glyph"] for i in (12, 1)]
    assert table1.labels_of(keys, 1, "motion").tolist() == [0, 1]                  # clip i moves MOTIONS[i % 4]


def test_table1_probes_the_encoder_at_the_pre_training_model_size():
    sets = {"model.img_size": "48", "model.patch_size": "6", "model.num_frames": "8", "model.pos_embed": "3d"}
    model, cfg = table1.classifier_of(None, 10, sets)
    assert cfg.model.grid == (4, 8, 8) and model.pos_embed.shape == (1, 256, cfg.model.embed_dim)
    assert table1.model_text(cfg.model) == "8x48x48, patch 6, 3D position table"
    assert table1.classifier_of(None, 10)[1].model.grid == (4, 6, 6)                 # tiny as packed


@pytest.fixture(scope="module")
def table1_run(tmp_path_factory):
    out, reports = tmp_path_factory.mktemp("t1"), tmp_path_factory.mktemp("reports")
    quiet = ["progress=false", "log_every=1", "loader_threads=1"]
    args = ["--out", str(out), "--pretrain-videos", "4", "--train-videos", "10", "--val-videos", "8",
            "--pretrain-steps", "2", "--finetune-steps", "2", "--report-dir", str(reports), "--threads", "1",
            *[a for item in quiet for a in ("--pretrain-set", item)],
            *[a for item in (*quiet, "batch_videos_per_gpu=2") for a in ("--finetune-set", item)]]
    result = CliRunner().invoke(table1.main, args)
    assert result.exit_code == 0, result.output
    return out, reports, args


def test_table1_runs_every_stage_through_the_engine_and_reports(table1_run):
    out, reports, _ = table1_run
    rows = json.loads((reports / "table1.json").read_text())["rows"]
    assert set(rows) == {"dual", "encoder-only", "scratch"}
    assert [rows[n]["pretrain"]["steps"] for n in ("dual", "encoder-only")] == [2, 2]
    assert rows["dual"]["pretrain"]["gflops_per_clip"] < rows["encoder-only"]["pretrain"]["gflops_per_clip"]
    for name in ("dual", "encoder-only"):
        recon = rows[name]["recon"]
        assert recon["per_position"] <= recon["constant"] <= recon["zero"] + 1e-6 and recon["model"] > 0
    for name in table1.SETTINGS:
        glyph, motion = rows[name]["probe"]["glyph"], rows[name]["probe"]["motion"]
        assert glyph["val_clips"] == 8 and glyph["train_clips"] == 10 and 0 <= glyph["top1_plain"] <= 100
        assert {"top1_mirrored", "top1_reversed"} <= set(motion) and "top1_mirrored" not in glyph
        assert rows[name]["finetune"]["steps"] == 2 and rows[name]["finetune"]["val_videos"] == 8
    assert (out / "pretrain-dual" / "summary.json").is_file() and (out / "finetune-scratch" / "summary.json").is_file()
    md = (reports / "table1.md").read_text()
    for title in table1.TITLES.values():
        assert f"| {title} |" in md
    env = json.loads((reports / "table1.json").read_text())["env"]
    assert f"    {env['command']}" in md and md.count(NOTES_MARK) == 1                 # the command that ran


def test_table1_rerun_reads_its_stages_back_and_keeps_the_notes(table1_run):
    out, reports, args = table1_run
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    md = (reports / "table1.md").read_text()
    (reports / "table1.md").write_text(md + "\nWhy the rows differ.\n")
    result = CliRunner().invoke(table1.main, args)
    assert result.exit_code == 0, result.output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == stamps     # nothing recomputed
    assert (reports / "table1.md").read_text().endswith("\nWhy the rows differ.\n")
    result = CliRunner().invoke(table1.main, [*args[:2], "--finetune-set", "oops"])
    assert result.exit_code == 2 and "write key=value" in result.output


def test_finetune_bench_reports_each_command_and_the_gain():
    rows = [{"setting": "pretrain", "command": "vmae2-train pretrain --preset tiny", "wall_s": 600, "steps": 3000,
             "final_loss": 0.1},
            {"setting": "pre-trained", "command": "vmae2-train finetune --preset tiny --init P", "wall_s": 300,
             "steps": 400, "final_loss": 0.5, "top1": 60.0, "top1_se": 3.9, "val_videos": 160},
            {"setting": "scratch", "command": "vmae2-train finetune --preset tiny", "wall_s": 300, "steps": 400,
             "final_loss": 2.2, "top1": 15.0, "top1_se": 2.8, "val_videos": 160}]
    env = {"command": "python -m bench.finetune", "cpu": "cpu", "cpu_count": 2, "torch": "2", "dali": "2",
           "git_commit": "abc", "git_dirty": False, "time_utc": "now"}
    md = finetune_bench.markdown({"env": env, "rows": rows, "config": {"per_class": 16, "val_per_class": 16}})
    assert "| pre-trained | `vmae2-train finetune --preset tiny --init P` | 400 | 5.0 min | 60.0 ± 3.9 |" in md
    assert "Pre-trained minus scratch: +45.0 ± 4.8 points" in md and "took 15.0 min" in md


def test_finetune_bench_refuses_an_out_whose_runs_were_made_on_other_data(tmp_path):
    data = {"per_class": 16, "val_per_class": 16, "style": "plain", "train_seed": 11, "val_seed": 12}
    finetune_bench.check_same_data(tmp_path, data)
    finetune_bench.check_same_data(tmp_path, dict(data))  # the same data again: its kept runs are reused
    with pytest.raises(click.ClickException, match="data.json.*new --out"):
        finetune_bench.check_same_data(tmp_path, dict(data, train_seed=21))


def test_the_held_out_reconstruction_baselines_on_a_model_that_knows_nothing(tmp_path):
    """Zero predictions score the zero baseline exactly; the per-position patch is fitted, so it is the lowest."""
    from shard_tools.synth import make_synthetic
    from vmae2.config import pretrain_config
    from vmae2.model import VideoMAEv2

    data = tmp_path / "clips"
    make_synthetic(data, 4, kind="glyphs", seed=0, num_frames=16, width=32, height=32, progress=False)
    cfg = pretrain_config("tiny", {"model.img_size": 32, "model.patch_size": 8, "frame_stride": 1,
                                   "batch_videos_per_gpu": 2, "num_sample": 2, "loader_threads": 1})
    model = VideoMAEv2(cfg.model)
    with torch.no_grad():
        model.decoder.head.weight.zero_()
        model.decoder.head.bias.zero_()
    result = probe.recon_baselines(model, str(data), cfg, batches=2)
    assert result["model"] == pytest.approx(result["zero"], rel=1e-5)
    assert result["per_position"] <= result["constant"] <= result["zero"]
    assert result["clips"] == 8
    assert result["detail"] == pytest.approx(0.0, abs=1e-6)                    # flat patches draw no detail
    assert 0 < result["patch_mean"] < result["per_position"]

    class Oracle(torch.nn.Module):
        """Predicts every query token as the clip's own pixels: all of the detail, a loss of 0."""

        def forward(self, video, masks):
            from vmae2.model import normalize_video

            patches = model.patchify(normalize_video(video)[0])
            query = masks["query_idx"]
            pred = torch.gather(patches, 1, query[:, :, None, None].expand(-1, -1, *patches.shape[2:]))
            return torch.zeros(()), pred.flatten(2)

        patchify = staticmethod(model.patchify)

    result = probe.recon_baselines(Oracle(), str(data), cfg, batches=2)
    assert result["detail"] == pytest.approx(1.0, abs=1e-6)


def test_the_smooth_image_check_trains_and_scores_against_the_clip_mean():
    from bench.experiments.smooth import run, smooth_clips

    clips = smooth_clips(2, 4, 112, torch.Generator().manual_seed(0))
    assert clips.shape == (2, 4, 112, 112, 3) and clips.dtype == torch.uint8
    assert torch.equal(clips[:, 0], clips[:, 3])                                  # static
    steps = clips[:, 0].float().diff(dim=1).abs()
    assert steps.mean() < 3 and clips.float().std() > 20                          # smooth, not flat
    for pos_embed in ("1d", "3d"):
        rows = list(run(steps=3, batch=2, lr=1e-3, mask_ratio=0.5, log_every=2, pos_embed=pos_embed))
        assert [r["step"] for r in rows] == [2, 3]
        assert all(math.isfinite(r["loss"]) and 0 < r["clip_mean"] < r["loss"] for r in rows)  # untrained: worse
