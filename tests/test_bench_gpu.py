"""`python -m bench.gpu --dry-run`: the GPU acceptance script end to end on the CPU at toy sizes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
PART_JSON = ["gpu_run", "gpu_tests", "step", "step_vit_g", "step_distill", "loader", "e2e", "epoch"]
# Optional packages the dry run must do without: the plots' matplotlib, and what the GPU host lacks
# (PyAV, Ray, TensorBoard). Shards are made beforehand, as they are for the GPU host.
BLOCKED = ("matplotlib", "av", "ray", "tensorboard")


def blocking_path(folder: Path, modules=BLOCKED) -> str:
    """A folder to put first on PYTHONPATH in which `import NAME` fails for each of `modules`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in modules:
        (folder / f"{name}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}' (blocked by a "
                                           f"test)\", name={name!r})\n")
    return str(folder)


def test_dry_run_without_optional_packages_writes_the_readme_and_every_parts_json(tmp_path):
    from bench.gpu.shards import make_shards

    out, shards = tmp_path / "report", tmp_path / "shards"
    make_shards(shards, dry_run=True, progress=False)               # here, with PyAV; the run itself has none
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (blocking_path(tmp_path / "blocked"), env.get("PYTHONPATH"))
                                        if p)
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--dry-run", "--out", str(out),
                           "--shards", str(shards)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in PART_JSON:
        assert (out / f"{name}.json").is_file(), (name, sorted(p.name for p in out.iterdir()))
    run = json.loads((out / "gpu_run.json").read_text())
    assert run["dry_run"] is True
    assert [r["part"] for r in run["rows"]] == ["gpu_tests", "step", "step_vit_g", "step_distill", "loader", "e2e",
                                                "epoch"]
    assert all(r["status"] == "ok" and (out / r["log"]).is_file() for r in run["rows"]), run["rows"]
    assert run["shard_sets"][0]["name"] == "vp9-bench" and run["shard_sets"][0]["bytes"] > 0
    tests = json.loads((out / "gpu_tests.json").read_text())
    assert tests["counts"]["skipped"] == len(tests["rows"]) >= 10       # collected, and skipped here
    assert {r["message"] for r in tests["rows"]} == {"needs a CUDA GPU"}
    step = json.loads((out / "step_vit_g.json").read_text())["rows"]
    assert step[0]["fsdp"] is True and step[0]["activation_checkpointing"] is True
    distill = json.loads((out / "step_distill.json").read_text())
    assert distill["bench"] == "step_distill"
    row = distill["rows"][0]
    assert (row["teacher"], row["student"], row["num_classes"]) == ("tiny", "tiny", 710)
    assert row["teacher_forward_ms_median"] > 0 and row["student_step_ms_median"] > 0 and row["clips_per_s"] > 0
    assert "peak_memory_gib" in row
    epoch = json.loads((out / "epoch.json").read_text())
    assert epoch["inputs"]["loader"] and epoch["inputs"]["e2e"]
    readme = (out / "README.md").read_text()
    for title in ("Acceptance run", "GPU tests", "Training step", "Distillation step", "Data loader", "End to end",
                  "Projected epoch time"):
        assert title in readme, title
    assert "timed out" not in readme
    # without matplotlib: every table, no plot, and the report says why
    plotted = ("step", "step_vit_g", "loader")
    assert readme.count("Plot left out: matplotlib is not importable here") == len(plotted)
    assert not list(out.glob("*.png"))
    assert {run["packages"][name] for name in ("matplotlib", "av")} == {None}
    assert "missing: matplotlib (no plots, the tables stay)" in readme and "; PyAV (" in readme
    # without PyAV or decord the reference loader is left out; dali_pipes is measured all the same
    loader = json.loads((out / "loader.json").read_text())
    assert [r["loader"] for r in loader["results"] if "clips_per_s" in r] == ["dali_pipes"]
    assert any("reference loader left out" in note for note in loader["notes"])


def test_a_part_whose_package_is_missing_is_skipped_and_the_others_run(tmp_path, monkeypatch):
    from bench.gpu import run
    from bench.gpu.__main__ import part_passed

    tests = run.Part("gpu_tests", 30, lambda out: [sys.executable, "-c", "print('never')"],
                     needs_modules=("vmae2_no_such_package",))
    step = run.Part("step", 30, lambda out: [sys.executable, "-c", "print('stepped')"])
    monkeypatch.setattr(run, "plan", lambda shards, dry_run: [tests, step])
    payload = run.run_all(tmp_path, tmp_path, None, budget_s=60, dry_run=True, echo=lambda m: None)
    rows = {r["part"]: r for r in payload["rows"]}
    assert rows["gpu_tests"]["status"] == "skipped" and rows["gpu_tests"]["missing_packages"] == [
        "vmae2_no_such_package"]
    assert "pip install vmae2_no_such_package" in rows["gpu_tests"]["reason"]
    assert not (tmp_path / "gpu_tests.log").exists()
    assert rows["step"]["status"] == "ok" and (tmp_path / "step.log").read_text() == "stepped\n"
    # a dry run checks the script and passes; the real acceptance run is incomplete without the tests
    assert part_passed(rows["gpu_tests"], dry_run=True) and not part_passed(rows["gpu_tests"], dry_run=False)
    assert not part_passed({"status": "skipped", "reason": "budget"}, dry_run=True)


def test_the_gpu_path_imports_and_collects_without_pyav_or_matplotlib(tmp_path):
    """What the real run starts on the GPU host (no PyAV): every part's module, and pytest's collection of
    the GPU tests, which fall back to decord or OpenCV as the reference decoder."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (blocking_path(tmp_path / "blocked"), os.environ.get("PYTHONPATH")) if p)}
    modules = ["bench.gpu.__main__", "bench.gpu.run", "bench.step", "bench.loader", "bench.e2e", "bench.epoch",
               "bench.report", "bench.baselines.reference_loader", "vmae2.train", "dali_pipes"]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "from bench.baselines.reference_loader import decoder_name\n"
            "print('decoder', decoder_name())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] in ("None", "decord")              # PyAV is not what it found
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "test_gpu.py::" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_part_past_its_budget_is_killed_and_recorded(tmp_path, monkeypatch):
    from bench.gpu import run

    slow = run.Part("slow", 2, lambda out: [sys.executable, "-c", "import time; print('started', flush=True); "
                                            "time.sleep(60)"])
    quick = run.Part("quick", 30, lambda out: [sys.executable, "-c", "print('done')"])
    monkeypatch.setattr(run, "plan", lambda shards, dry_run: [slow, quick])
    payload = run.run_all(tmp_path, tmp_path / "no-shards", None, budget_s=60, dry_run=True, echo=lambda m: None)
    rows = {r["part"]: r for r in payload["rows"]}
    assert rows["slow"]["status"] == "timed out" and rows["slow"]["wall_s"] < 20
    assert (tmp_path / "slow.log").read_text() == "started\n"
    assert rows["quick"]["status"] == "ok" and (tmp_path / "quick.log").read_text() == "done\n"
    # a later call running one part keeps the other part's row
    monkeypatch.setattr(run, "plan", lambda shards, dry_run: [slow, quick])
    payload = run.run_all(tmp_path, tmp_path / "no-shards", ["quick"], budget_s=60, dry_run=True,
                          echo=lambda m: None)
    assert [r["status"] for r in payload["rows"]] == ["timed out", "ok"]


def test_total_budget_skips_the_parts_that_no_longer_fit(tmp_path, monkeypatch):
    from bench.gpu import run

    first = run.Part("first", 30, lambda out: [sys.executable, "-c", "import time; time.sleep(3)"])
    second = run.Part("second", 30, lambda out: [sys.executable, "-c", "print('never')"])
    monkeypatch.setattr(run, "plan", lambda shards, dry_run: [first, second])
    monkeypatch.setattr(run, "REPORT_RESERVE_S", 0)
    payload = run.run_all(tmp_path, tmp_path, None, budget_s=6, dry_run=True, echo=lambda m: None)
    rows = {r["part"]: r for r in payload["rows"]}
    assert rows["first"]["status"] == "ok"
    assert rows["second"]["status"] == "skipped" and "budget of 6 s was spent" in rows["second"]["reason"]


def test_a_part_missing_its_inputs_is_skipped_and_says_which(tmp_path, monkeypatch):
    from bench.gpu import run

    needy = run.Part("epoch", 30, lambda out: [sys.executable, "-c", "print('never')"], requires=("step.json",))
    monkeypatch.setattr(run, "plan", lambda shards, dry_run: [needy])
    row = run.run_all(tmp_path, tmp_path, None, budget_s=60, dry_run=True, echo=lambda m: None)["rows"][0]
    assert row["status"] == "skipped" and row["reason"] == "needs step.json from an earlier part"
    assert not (tmp_path / "epoch.log").exists()


def test_without_a_gpu_the_full_run_fails_fast_and_says_why():
    from bench.gpu.__main__ import main

    result = CliRunner().invoke(main, ["--parts", "step"])
    assert result.exit_code == 1
    assert "torch sees no CUDA GPU" in result.output and "--dry-run" in result.output


def test_unknown_part_is_named():
    from bench.gpu.__main__ import main

    result = CliRunner().invoke(main, ["--parts", "step,loaders", "--dry-run"])
    assert result.exit_code == 2 and "unknown part(s) ['loaders']" in result.output


def test_missing_shards_without_pyav_name_the_fix(tmp_path, monkeypatch):
    import builtins

    from bench.gpu.shards import make_shards

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("no av")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    try:
        make_shards(tmp_path / "s", dry_run=False)
    except RuntimeError as err:
        assert "python -m bench.gpu make-shards" in str(err) and "--shards" in str(err)
        assert "h264-320p" in str(err)
    else:
        raise AssertionError("expected a RuntimeError")


def test_coded_clips_say_which_frame_they_are_after_encoding(tmp_path):
    """The decode-test clips survive H.264 and VP9 encoding with every frame's number readable."""
    import av
    import numpy as np

    from bench.gpu.shards import ShardSpec, coded_frame_numbers, coded_frames, make_coded_set
    from shard_tools.format import VIDEO_EXTS

    assert coded_frame_numbers(coded_frames(33, 16, 24)).tolist() == list(range(33))
    for codec in ("h264", "vp9"):
        make_coded_set(tmp_path / codec, ShardSpec(codec, 2, 12, 192, 144, "test", coded=True), progress=False)
        manifest = json.loads((tmp_path / codec / "manifest.json").read_text())
        assert manifest["codecs"] == {codec: 2}
        lengths = []
        for tar_path in sorted((tmp_path / codec).glob("*.tar")):
            with tarfile.open(tar_path) as tar:
                for member in tar:
                    if member.name.rsplit(".", 1)[-1] in VIDEO_EXTS:
                        with av.open(tar.extractfile(member)) as container:
                            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
                        assert coded_frame_numbers(frames).tolist() == list(range(len(frames)))
                        assert np.abs(frames.astype(int) - coded_frames(len(frames), 144, 192)).mean() < 1.5
                        lengths.append(len(frames))
        assert sorted(lengths) == [11, 12]                 # clip i has frames − i % 4
