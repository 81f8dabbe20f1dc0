"""The parts of the acceptance run, each a subprocess with its own time budget.

A part that runs past its budget is killed (its whole process group) and recorded as "timed out",
so one slow part cannot eat the others' time. Every part's output goes to PART.log in the report
folder; what each part measured goes to its own JSON, gathered by bench.report into README.md.
gpu_run.json records each part's outcome, wall time, budget and (for the loader and end-to-end
parts) the GPU, NVDEC and CPU use while it ran, and which optional packages the machine has. A part
whose package is missing (pytest for the GPU tests) is skipped with the reason, and the others run.
Running only some parts (--parts) updates their rows and keeps the others', so a run can be spread
over several calls into one folder.
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.env import environment, write_json

RUN_RECORD = "gpu_run.json"
ROOT = Path(__file__).resolve().parents[2]   # the repository: parts run from here
REPORT_RESERVE_S = 10  # kept back from the total budget for the epoch projection's report
# Packages the run uses where they are installed, recorded in gpu_run.json (the GPU host has no PyAV):
# module -> (name in the report, what changes without it).
OPTIONAL_PACKAGES = {
    "pytest": ("pytest", "the gpu_tests part is skipped"),
    "matplotlib": ("matplotlib", "no plots, the tables stay"),
    "av": ("PyAV", "shard sets cannot be made here; the reference loader needs decord"),
    "decord": ("decord", "the reference loader decodes with PyAV"),
    "cv2": ("OpenCV", "the GPU tests' reference decoder is PyAV or decord only"),
    "nvidia.dali": ("DALI", "the gpu_tests, loader and e2e parts cannot run"),
}


@dataclass
class Part:
    name: str                                  # also the stem of the JSON it writes
    budget_s: int                              # its own wall-clock limit
    argv: Callable[[Path], list[str]]          # the command, built when the part starts (out folder → argv)
    needs_dali: bool = False                   # DALI must be importable
    sample_utilisation: bool = False           # sample GPU / NVDEC use with nvidia-smi while it runs
    requires: tuple[str, ...] = ()             # files in the report folder that earlier parts must have written
    needs_modules: tuple[str, ...] = ()        # optional packages the part cannot run without
    extra: dict = field(default_factory=dict)  # recorded beside the outcome


def python_m(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def options_of(module: str) -> set[str]:
    """The long options a module's CLI lists in --help (to call another bench by its current flags)."""
    try:
        out = subprocess.run(python_m(module, "--help"), capture_output=True, text=True, timeout=120, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return set()
    return {word.split("=")[0].rstrip(",") for word in out.stdout.split() if word.startswith("--")}


def loader_argv(shards: Path, dry_run: bool, supported: set[str], dropped: list[str]) -> list[str]:
    """bench.loader for H.264 shards at 320p short side, 16×224 clips, stride 4, num_sample 4, batch 32.

    Flags bench.loader does not list are left out (and recorded), so a change of its CLI shows in
    the report instead of failing the run.
    """
    if dry_run:
        wanted = {"--codecs": "vp9", "--data": str(shards / "vp9-bench"), "--videos": "4", "--short-side": "64",
                  "--video-frames": "24", "--num-frames": "8", "--img-size": "64", "--stride": "2",
                  "--num-sample": "2", "--batch-size": "2", "--threads": "1", "--batches": "1", "--warmup": "1",
                  "--repeats": "1"}
    else:
        wanted = {"--codecs": "h264", "--data": str(shards / "h264-320p"), "--videos": "48", "--short-side": "320",
                  "--video-frames": "64", "--num-frames": "16", "--img-size": "224", "--stride": "4",
                  "--num-sample": "4", "--batch-size": "32", "--batches": "10", "--warmup": "2", "--repeats": "3"}
    args = []
    for flag, value in wanted.items():
        if flag in supported or not supported:
            args += [flag, value]
        else:
            dropped.append(flag)
    return args


def plan(shards: Path, dry_run: bool) -> list[Part]:
    """The parts in run order, sized for a GPU (about 525 s in all) or, with dry_run, for a CPU."""
    test_file = str(ROOT / "tests" / "test_gpu.py")
    if dry_run:
        toy = ["--presets", "tiny", "--model", "img_size=32", "--model", "num_frames=8", "--batch", "2",
               "--warmup", "1"]
        step = [*toy, "--ratios", "0,0.5", "--repeats", "2"]
        big = [*toy, "--ratios", "0.5", "--repeats", "1"]
        distill = [*toy, "--distill-teacher", "tiny", "--repeats", "2"]
        e2e = ["--data", str(shards / "vp9-bench"), "--preset", "tiny", "--steps", "4", "--set", "model.img_size=32",
               "--set", "batch_videos_per_gpu=1", "--set", "num_sample=2", "--set", "loader_threads=1"]
    else:
        step = ["--presets", "vit_b,vit_l", "--ratios", "0,0.5", "--batch", "128", "--warmup", "3", "--repeats", "5"]
        big = ["--presets", "vit_g", "--ratios", "0.5", "--batch", "32", "--warmup", "1", "--repeats", "2"]
        # a ViT-g K710 teacher (710 classes, 16x224x224) and a ViT-B student, the B K710 row's 32 clips per GPU
        distill = ["--presets", "vit_b", "--distill-teacher", "vit_g", "--classes", "710", "--batch", "32",
                   "--warmup", "1", "--repeats", "3"]
        e2e = ["--data", str(shards / "h264-320p"), "--preset", "vit_b", "--steps", "40",
               "--set", "batch_videos_per_gpu=32", "--set", "loader_threads=8"]
    dropped: list[str] = []
    loader_flags: list[str] = []

    def loader(out: Path) -> list[str]:
        loader_flags[:] = loader_argv(shards, dry_run, options_of("bench.loader"), dropped)
        return python_m("bench.loader", *loader_flags, "--json", str(out / "loader.json"))

    def epoch(out: Path) -> list[str]:
        args = ["--step", str(out / "step.json"), "--json", str(out / "epoch.json")]
        for name in ("loader", "e2e"):
            if (out / f"{name}.json").is_file():
                args += [f"--{name}", str(out / f"{name}.json")]
        return python_m("bench.epoch", *args)

    return [
        Part("gpu_tests", 140, lambda out: python_m(
            "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", test_file,
            f"--junitxml={out / 'gpu_tests.xml'}"), needs_dali=True, needs_modules=("pytest",)),
        Part("step", 90, lambda out: python_m(
            "bench.step", *step, "--compile", "off", "--checkpointing", "off", "--no-max-batch",
            "--json", str(out / "step.json"))),
        Part("step_vit_g", 75, lambda out: python_m(
            "bench.step", *big, "--compile", "off", "--checkpointing", "on", "--fsdp", "--no-max-batch",
            "--json", str(out / "step_vit_g.json"))),
        Part("step_distill", 45, lambda out: python_m(
            "bench.step", *distill, "--compile", "off", "--checkpointing", "off", "--json",
            str(out / "step_distill.json"))),
        Part("loader", 75, loader, needs_dali=True, sample_utilisation=True,
             extra={"flags_not_supported": dropped}),
        Part("e2e", 80, lambda out: python_m("bench.e2e", *e2e, "--json", str(out / "e2e.json")),
             needs_dali=True, sample_utilisation=True),
        Part("epoch", 20, epoch, requires=("step.json",)),
    ]


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def package_versions() -> dict[str, str | None]:
    """Version of each optional package (OPTIONAL_PACKAGES) in this Python, None where it is missing."""
    versions = {}
    for module in OPTIONAL_PACKAGES:
        try:
            versions[module] = str(getattr(importlib.import_module(module), "__version__", "unknown"))
        except Exception:  # an absent or broken optional package is recorded as absent
            versions[module] = None
    return versions


def packages_note(versions: dict[str, str | None]) -> str:
    """One line for the report: which optional packages were there and what the missing ones cost."""
    present = [f"{OPTIONAL_PACKAGES[m][0]} {v}" for m, v in versions.items() if v is not None]
    missing = [f"{OPTIONAL_PACKAGES[m][0]} ({OPTIONAL_PACKAGES[m][1]})"
               for m, v in versions.items() if v is None]
    return ("Optional packages here: " + (", ".join(present) or "none")
            + ("; missing: " + "; ".join(missing) if missing else "") + ".")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_part(part: Part, out: Path, limit_s: float, env_vars: dict) -> dict:
    """Run one part under `limit_s`; returns its row for gpu_run.json."""
    from bench.e2e import UtilisationSampler

    argv = part.argv(out)
    row = {"part": part.name, "budget_s": part.budget_s, "limit_s": round(limit_s, 1),
           "command": " ".join(a if a != sys.executable else "python" for a in argv), "log": f"{part.name}.log"}
    log_path = out / f"{part.name}.log"
    cpu0, start = _children_cpu_s(), time.perf_counter()
    sampler = UtilisationSampler() if part.sample_utilisation else None
    with open(log_path, "w") as log:
        if sampler is not None:
            sampler.__enter__()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                                env={**os.environ, **env_vars})
        try:
            returncode = proc.wait(timeout=limit_s)
            row["status"] = "ok" if returncode == 0 else "failed"
            row["returncode"] = returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # the part and everything it started
            proc.wait()
            row["status"], row["returncode"] = "timed out", None
        finally:
            if sampler is not None:
                sampler.__exit__(None, None, None)
    row["wall_s"] = round(time.perf_counter() - start, 1)
    row["cpu_cores_busy"] = round((_children_cpu_s() - cpu0) / max(row["wall_s"], 1e-9), 2)
    if sampler is not None:
        row.update(sampler.summary())
    row.update({k: v for k, v in part.extra.items() if v})
    if row["status"] == "failed":
        row["reason"] = last_error_line(log_path)
    return row


def last_error_line(log_path: Path) -> str:
    """The last line of a log that reads like an error (else its last line), to quote in the report."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if any(word in line for word in ("Error", "error:", "FAILED", "Exception")):
            return line[:300]
    return lines[-1][:300] if lines else ""


def junit_rows(xml_path: Path) -> list[dict]:
    """One row per test case of a pytest junit XML file: outcome, seconds, message."""
    rows = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
                break
        rows.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                     "message": message})
    return rows


def write_test_results(out: Path, env: dict, row: dict) -> None:
    """gpu_tests.json from pytest's junit XML (the XML stays beside it)."""
    xml_path = out / "gpu_tests.xml"
    rows = junit_rows(xml_path) if xml_path.is_file() else []
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "failed", "error", "skipped")}
    write_json(out / "gpu_tests.json", {"bench": "gpu_tests", "env": env, "counts": counts, "rows": rows,
                                        "part_status": row["status"]})


def run_all(out: Path, shards: Path, parts: list[str] | None, budget_s: float, dry_run: bool,
            echo=print) -> dict:
    """Run the chosen parts (all when None) into `out` and write gpu_run.json; returns its payload."""
    out, shards = Path(out).resolve(), Path(shards).resolve()   # the parts run from the repository root
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    chosen = [p for p in plan(shards, dry_run) if parts is None or p.name in parts]
    deadline = time.perf_counter() + budget_s
    env_vars = {"VMAE2_GPU_SHARDS": str(shards), "PYTHONUNBUFFERED": "1"}
    previous = json.loads((out / RUN_RECORD).read_text()) if (out / RUN_RECORD).is_file() else {}
    # rows of an earlier call are kept only when that call measured the same way (both dry or both not)
    rows = {r["part"]: r for r in previous.get("rows", [])} if previous.get("dry_run") == dry_run else {}
    for i, part in enumerate(chosen):
        left = deadline - time.perf_counter() - (REPORT_RESERVE_S if i < len(chosen) - 1 else 0)
        limit = min(part.budget_s, left)
        missing = [name for name in part.requires if not (out / name).is_file()]
        if missing:
            rows[part.name] = {"part": part.name, "budget_s": part.budget_s, "status": "skipped",
                               "reason": f"needs {', '.join(missing)} from an earlier part"}
            echo(f"[{part.name}] skipped: needs {', '.join(missing)}")
            continue
        absent = [module for module in part.needs_modules if not importable(module)]
        if absent:
            reason = (f"needs {', '.join(absent)}, which this Python cannot import: "
                      f"pip install {' '.join(absent)}")
            rows[part.name] = {"part": part.name, "budget_s": part.budget_s, "status": "skipped",
                               "reason": reason, "missing_packages": absent}
            echo(f"[{part.name}] skipped: {reason}")
            continue
        if left < min(5, part.budget_s):   # too little left to start a Python process and do anything
            rows[part.name] = {"part": part.name, "budget_s": part.budget_s, "status": "skipped",
                               "reason": f"the total budget of {budget_s:.0f} s was spent"}
            echo(f"[{part.name}] skipped: total budget spent")
            continue
        echo(f"[{part.name}] running (limit {limit:.0f} s) ...")
        row = run_part(part, out, limit, env_vars)
        if part.name == "gpu_tests":
            write_test_results(out, env, row)
        rows[part.name] = row
        reason = f": {row['reason']}" if row.get("reason") else ""
        echo(f"[{part.name}] {row['status']} in {row['wall_s']} s{reason}")
    order = [p.name for p in plan(shards, dry_run)]
    packages = package_versions()
    payload = {"bench": "gpu_run", "env": env, "dry_run": dry_run, "budget_s": budget_s, "shards": str(shards),
               "packages": packages, "notes": packages_note(packages),
               "shard_sets": [{"name": name, **spec} for name, spec in
                              ((read_shard_record(shards) or {}).get("sets") or {}).items()],
               "rows": sorted(rows.values(), key=lambda r: order.index(r["part"]) if r["part"] in order else 99)}
    write_json(out / RUN_RECORD, payload)
    return payload


def read_shard_record(shards: Path) -> dict | None:
    from bench.gpu.shards import read_record

    return read_record(shards)
