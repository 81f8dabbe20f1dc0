"""`vmae2-shard pack --ray local`: the same bytes as a process-pool pack, and a run killed
mid-way (every process of it, Ray's included) resumes to those bytes.

Starting Ray takes seconds, so one test covers both: the killed run and its rerun each start a
local Ray instance with 2 CPUs.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_shard_pack import make_clip, out_files
from test_shard_sources import make_frame_folder

from shard_tools.pack import pack

pytest.importorskip("ray", reason='Ray is optional: pip install "vmae2[ray]"')

OPTIONS = {"codec": "vp9", "gop": 4, "shard_size": 20_000, "seed": 5, "fps": 12}


@pytest.fixture(scope="module")
def mixed_list(tmp_path_factory):
    """A list file of videos and frame folders, some bad, enough entries to kill a run midway."""
    root = tmp_path_factory.mktemp("raysrc")
    lines = []
    for i in range(8):
        make_clip(root / f"clip{i}.webm", num_frames=10 + i, seed=i)
        lines.append(f"clip{i}.webm {i % 3}")
    for i in range(6):
        make_frame_folder(root / f"frames{i}", i, 8 + i)
        lines.append(f"frames{i} {8 + i} {i % 3}")
    lines.append("gone.webm 1")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def test_ray_local_pack_is_byte_identical_and_resumes_after_sigkill(mixed_list, tmp_path):
    pack(mixed_list / "train.csv", tmp_path / "ref", root=str(mixed_list), workers=2,
         progress=False, **OPTIONS)
    reference = out_files(tmp_path / "ref")
    assert b"missing" in reference["skipped.jsonl"] and len(reference) >= 4
    command = [sys.executable, "-m", "shard_tools.cli", "pack", str(mixed_list / "train.csv"),
               str(tmp_path / "run"), "--data-root", str(mixed_list), "--codec", "vp9",
               "--gop", "4", "--shard-size", "20000", "--seed", "5", "--fps", "12",
               "--no-progress", "--ray", "local", "--workers", "2"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    # A session of its own, so the kill takes Ray's processes too, as a node failure would.
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    items = tmp_path / "run" / ".staging" / "items"
    deadline, killed_with = time.monotonic() + 300, None
    while process.poll() is None and time.monotonic() < deadline:
        staged = len(list(items.glob("*.json"))) if items.is_dir() else 0
        if staged >= 2:
            os.killpg(process.pid, signal.SIGKILL)
            killed_with = staged
            break
        time.sleep(0.002)
    process.wait()
    assert killed_with is not None, f"the Ray run ended (code {process.returncode}) before it " \
                                    f"had staged two entries"
    assert not (tmp_path / "run" / "manifest.json").exists()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "packed 14 samples" in rerun.stdout and "missing 1" in rerun.stdout
    assert out_files(tmp_path / "run") == reference
