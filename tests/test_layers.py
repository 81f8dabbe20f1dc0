"""Data flows one way: the data engine does not import the trainer, and its numpy pieces import numpy only."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    """Top-level packages in sys.modules after `statement` runs in a fresh interpreter."""
    code = f"import sys, json; {statement}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("statement", ["import dali_pipes", "import dali_pipes.masking", "import dali_pipes.views",
                                       "import dali_pipes.contract", "import dali_pipes.shards"])
def test_numpy_pieces_of_the_engine_import_no_torch_dali_or_trainer(statement):
    modules = imported_after(statement)
    assert not modules & {"torch", "nvidia", "vmae2", "timm"}, modules & {"torch", "nvidia", "vmae2", "timm"}


def test_the_engine_imports_no_model_stack():
    """The DALI loaders use torch for DLPack, but never the trainer package or timm."""
    modules = imported_after("import dali_pipes.pretrain, dali_pipes.classify, dali_pipes.mixture")
    assert "nvidia" in modules and "torch" in modules
    assert not modules & {"vmae2", "timm"}


def test_the_model_needs_no_dali():
    """The model, its masks and its config import without the data engine's DALI (the GPU host's benches)."""
    modules = imported_after("import vmae2.model, vmae2.config, vmae2.flops, vmae2.weights")
    assert "nvidia" not in modules
