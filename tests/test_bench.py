"""The benches run end to end on the CPU and their reports hold what they measured (no timing asserts)."""
import json

import pytest
from click.testing import CliRunner

from bench import epoch, report, step


def test_step_epoch_and_report_chain(tmp_path):
    dev = tmp_path / "cpu"
    runner = CliRunner()
    result = runner.invoke(step.main, ["--presets", "tiny", "--ratios", "0,0.5", "--compile", "off",
                                       "--checkpointing", "off", "--batch", "2", "--warmup", "1", "--repeats", "2",
                                       "--json", str(dev / "step.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads((dev / "step.json").read_text())
    assert [r["decoder_mask_ratio"] for r in payload["rows"]] == [0.0, 0.5]
    assert all(r["clips_per_s"] > 0 and r["repeats"] == 2 for r in payload["rows"])
    assert payload["dual_masking"][0]["preset"] == "tiny" and payload["env"]["git_commit"]

    result = runner.invoke(epoch.main, ["--step", str(dev / "step.json"), "--json", str(dev / "epoch.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((dev / "epoch.json").read_text())["rows"]
    k400 = next(r for r in rows if r["dataset"] == "K400")
    rate = payload["rows"][1]["clips_per_s"]
    assert k400["clips_per_epoch"] == 960_000
    assert abs(k400["hours_1gpu"] - 960_000 / rate / 3600) < 1e-6 * k400["hours_1gpu"]

    result = runner.invoke(report.main, ["--reports", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (dev / "README.md").read_text()
    assert "Training step, model alone" in text and "Projected epoch time" in text
    assert (dev / "step_throughput_vs_batch.png").stat().st_size > 1000
    assert f"{payload['rows'][0]['clips_per_s']:.4g}" in text


def test_report_without_json_fails_clearly(tmp_path):
    result = CliRunner().invoke(report.main, ["--reports", str(tmp_path)])
    assert result.exit_code != 0 and "no JSON reports" in result.output


def test_e2e_runs_the_real_loop_on_synthetic_shards(tmp_path):
    from bench import e2e
    from shard_tools.synth import make_synthetic

    make_synthetic(tmp_path / "shards", 4, num_frames=24, width=80, height=64, progress=False)
    result = CliRunner().invoke(e2e.main, ["--data", str(tmp_path / "shards"), "--steps", "4",
                                           "--set", "model.img_size=56", "--set", "batch_videos_per_gpu=1",
                                           "--set", "num_sample=2", "--json", str(tmp_path / "e2e.json")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "e2e.json").read_text())["rows"][0]
    assert row["clips_per_step"] == 2 and row["codecs"] == "vp9" and row["steps"] == 4
    assert row["clips_per_s"] > 0 and 0 <= row["data_wait_frac"] <= 1
    assert row["final_loss"] == row["final_loss"]                 # finite, not NaN


def test_write_report_keeps_the_notes_below_the_marker(tmp_path):
    from bench.env import NOTES_MARK, write_report

    path = tmp_path / "README.md"
    first = write_report(path, "# Report\n\n| a |\n|---|\n| 1 |\n")
    assert first.endswith(f"| 1 |\n\n{NOTES_MARK}\n") and path.read_text() == first
    path.write_text(first + "\nThe 1 is low because the cache was cold.\n")
    write_report(path, "# Report\n\n| a |\n|---|\n| 2 |\n")
    assert path.read_text() == ("# Report\n\n| a |\n|---|\n| 2 |\n\n"
                                f"{NOTES_MARK}\n\nThe 1 is low because the cache was cold.\n")
    assert not (tmp_path / "README.md.tmp").exists()
    with pytest.raises(ValueError, match="must not contain the notes marker"):
        write_report(path, f"text\n{NOTES_MARK}\n")


def test_environment_records_commit_and_dirty_flag_apart():
    from bench.env import environment, git_commit, is_dirty

    env = environment()
    assert env["git_commit"] == git_commit() and "+" not in env["git_commit"]
    assert env["git_dirty"] in (True, False, None)
    assert is_dirty({"git_commit": "abc1234", "git_dirty": True})
    assert is_dirty({"git_commit": "abc1234+dirty"})          # JSON written before the flag existed
    assert not is_dirty({"git_commit": "abc1234", "git_dirty": False}) and not is_dirty(None)


def test_report_flags_dirty_sections_and_keeps_notes(tmp_path):
    from bench.env import DIRTY_WARNING, NOTES_MARK, write_json

    dev = tmp_path / "dev"
    env = {"cpu": "x", "cpu_count": 2, "torch": "2", "python": "3", "git_commit": "abc1234", "git_dirty": False}
    write_json(dev / "clean.json", {"bench": "e2e", "env": env, "rows": [{"clips_per_s": 1.5}]})
    write_json(dev / "dirty.json", {"bench": "e2e", "env": {**env, "git_dirty": True}, "rows": [{"clips_per_s": 2.5}]})
    old = {**env, "git_commit": "abc1234+dirty"}
    del old["git_dirty"]                                   # JSON written before the flag existed
    write_json(dev / "old.json", {"bench": "e2e", "env": old, "rows": [{"clips_per_s": 3.5}]})
    result = CliRunner().invoke(report.main, ["--folder", str(dev)])
    assert result.exit_code == 0, result.output
    assert "dirty.json was measured on a tree with uncommitted changes" in result.output
    assert "old.json was measured on a tree with uncommitted changes" in result.output
    assert "clean.json was measured" not in result.output
    text = (dev / "README.md").read_text()
    assert text.count(DIRTY_WARNING) == 2 and "+dirty" not in text
    assert text.index(DIRTY_WARNING) > text.index("`dirty.json`") > text.index("`clean.json`")
    (dev / "README.md").write_text(text + "\nhand-written\n")
    assert CliRunner().invoke(report.main, ["--folder", str(dev)]).exit_code == 0
    assert (dev / "README.md").read_text().endswith(f"{NOTES_MARK}\n\nhand-written\n")
