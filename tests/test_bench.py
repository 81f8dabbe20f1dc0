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
                                           "--set", "model.img_size=32", "--set", "batch_videos_per_gpu=1",
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


@pytest.mark.parametrize("no_git", ["not a checkout", "no git program"])
def test_outside_git_the_commit_and_dirty_flag_come_from_the_environment(tmp_path, monkeypatch, no_git):
    from bench import env as bench_env

    if no_git == "not a checkout":      # a copy of the tree without .git, as a GPU host receives it
        monkeypatch.setattr(bench_env, "ROOT", tmp_path)
        monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    else:
        monkeypatch.setenv("PATH", str(tmp_path))
    for name in ("VMAE2_GIT_COMMIT", "VMAE2_GIT_DIRTY"):
        monkeypatch.delenv(name, raising=False)
    assert bench_env.git_commit() == "unknown" and bench_env.git_dirty() is None
    monkeypatch.setenv("VMAE2_GIT_COMMIT", "0123abc")
    monkeypatch.setenv("VMAE2_GIT_DIRTY", "0")
    assert bench_env.git_commit() == "0123abc" and bench_env.git_dirty() is False
    assert bench_env.environment()["git_commit"] == "0123abc"
    monkeypatch.setenv("VMAE2_GIT_DIRTY", "1")
    assert bench_env.git_dirty() is True and bench_env.is_dirty(bench_env.environment())
    monkeypatch.setenv("VMAE2_GIT_DIRTY", "no")
    with pytest.raises(ValueError, match="VMAE2_GIT_DIRTY='no': set it to 0"):
        bench_env.git_dirty()


def test_inside_git_the_environment_variables_do_not_override_git(monkeypatch):
    from bench.env import git_commit

    if git_commit() == "unknown":
        pytest.skip("this copy of the tree is not a git checkout")
    monkeypatch.setenv("VMAE2_GIT_COMMIT", "not-this")
    assert git_commit() != "not-this"


def test_report_without_matplotlib_keeps_tables_and_says_why_plots_are_missing(tmp_path, monkeypatch):
    import builtins

    from bench.env import write_json

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    env = {"cpu": "x", "cpu_count": 2, "torch": "2", "python": "3", "git_commit": "abc1234", "git_dirty": False}
    row = {"preset": "tiny", "decoder_mask_ratio": 0.5, "compile": False, "activation_checkpointing": False,
           "clips_per_step": 2, "clips_per_s": 7.25}
    write_json(tmp_path / "step.json", {"bench": "step", "env": env, "rows": [row]})
    write_json(tmp_path / "loader.json", {"bench": "loader", "env": env, "rows": [{"loader": "dali_pipes",
                                                                                   "clips_per_s": 3.5}]})
    warnings = []
    text = report.render(str(tmp_path), warn=warnings.append)
    assert "| 7.25 |" in text and "| 3.5 |" in text                    # the tables are all there
    assert text.count("Plot left out: matplotlib is not importable here") == 2
    assert "pip install matplotlib" in text and not list(tmp_path.glob("*.png"))
    assert sum("matplotlib" in w for w in warnings) == 2


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
