"""What every report records beside its numbers, and how reports are written.

    environment()            hardware, versions, git commit (and whether the tree was dirty), command line
    git_commit(), git_dirty()
    write_json(path, obj)    a bench's JSON, atomically
    write_report(path, text) a generated markdown report; the hand-written notes below NOTES_MARK survive reruns
    write_json_and_report    both, the markdown beside the JSON

A report measured on a tree with uncommitted changes cannot name the code it measured: environment()
records `git_dirty: true`, and bench.report flags such a section with DIRTY_WARNING (it never prints
a commit with a "+dirty" suffix as if it named the code).

Where there is no git checkout (a GPU host receives a copy of the working tree without .git), the
environment variables VMAE2_GIT_COMMIT (the commit the copy was made from) and VMAE2_GIT_DIRTY
(0 or 1) stand in for git; bench/gpu/README.md passes them with every device call.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from shard_tools.files import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
NOTES_MARK = "<!-- notes: kept by reruns -->"
DIRTY_WARNING = ("> **Warning: measured on a working tree with uncommitted changes**; the commit below does not "
                 "name the code that ran. Rerun from a clean checkout before committing these numbers.")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


COMMIT_VAR, DIRTY_VAR = "VMAE2_GIT_COMMIT", "VMAE2_GIT_DIRTY"


def git_commit() -> str:
    """Short hash of HEAD of this checkout (never with a '+dirty' suffix).

    Outside git (no git program, or a copy of the tree without .git): $VMAE2_GIT_COMMIT, else 'unknown'.
    """
    return _git("rev-parse", "--short", "HEAD") or os.environ.get(COMMIT_VAR) or "unknown"


def git_dirty() -> bool | None:
    """True when tracked files differ from HEAD (untracked files do not count).

    Outside git: $VMAE2_GIT_DIRTY (0 = clean, 1 = dirty), else None (unknown).
    """
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        return bool(status)
    value = os.environ.get(DIRTY_VAR)
    if value is None:
        return None
    if value not in ("0", "1"):
        # a typo must not pass for a clean tree: reports treat an unknown state as clean
        raise ValueError(f"{DIRTY_VAR}={value!r}: set it to 0 (the copy is a clean checkout of "
                         f"${COMMIT_VAR}) or 1 (it has uncommitted changes)")
    return value == "1"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line() -> str:
    """The command as typed: `python -m bench.NAME ...` for modules, else argv."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return " ".join(["python", "-m", spec.name.removesuffix(".__main__")] + sys.argv[1:])
    return " ".join(sys.argv)


def _version(module: str) -> str | None:
    import importlib

    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # an absent or broken optional library is recorded as absent
        return None


def environment() -> dict:
    """Hardware and library versions of this process's machine, the git commit and the command line."""
    import numpy
    import torch

    env = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "command": command_line(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "dali": _version("nvidia.dali"),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device="cuda", gpu=props.name, gpu_count=torch.cuda.device_count(),
                   gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = None
    return env


def is_dirty(env: dict | None) -> bool:
    """Whether a recorded environment came from a dirty tree (also older JSON with a '+dirty' commit)."""
    return bool(env) and (bool(env.get("git_dirty")) or str(env.get("git_commit", "")).endswith("+dirty"))


def device_label(env: dict) -> str:
    """Folder name for a device's reports: 'cpu' or e.g. 'nvidia-h100-80gb-hbm3'."""
    if env.get("device") != "cuda":
        return "cpu"
    return "".join(c if c.isalnum() else "-" for c in env["gpu"].lower()).strip("-")


def write_json(path, payload: dict) -> None:
    """A report's JSON, written atomically (shard_tools.files); parent folders are made."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload, sort_keys=False)


def kept_notes(path) -> str:
    """The hand-written part of an existing report: from the NOTES_MARK line to the end ('' if none)."""
    try:
        old = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    lines = old.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip() == NOTES_MARK:
            return "".join(lines[i:])
    return ""


def write_report(path, text: str) -> str:
    """Write a generated markdown report atomically, keeping its hand-written notes.

    Everything from the line NOTES_MARK on in the existing file is kept below the new text; a new
    report ends with the marker, so there is a place to write notes that the next rerun keeps.
    Returns what was written.
    """
    if NOTES_MARK in text:
        raise ValueError(f"generated text for {path} must not contain the notes marker {NOTES_MARK!r}")
    notes = kept_notes(path) or NOTES_MARK + "\n"
    full = text.rstrip("\n") + "\n\n" + notes
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, full)
    return full


def write_json_and_report(json_path, payload: dict, text: str) -> str:
    """A bench's JSON at json_path and its markdown beside it (.md), the notes kept; returns the markdown."""
    write_json(json_path, payload)
    return write_report(Path(json_path).with_suffix(".md"), text)
