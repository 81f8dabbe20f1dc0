"""dali_pipes: vmae2-shard datasets → batches on the device (DALI engines).

Importing the package is cheap: the DALI pipelines, torch and the loader are imported on first use
of the names below, so numpy-only modules such as `dali_pipes.masking` (the token grid and the dual
masks, shared with the model) and `dali_pipes.sampling` can be imported without DALI installed.
"""
from __future__ import annotations

import importlib

_LAZY = {"pretrain_loader": "pretrain", "PretrainRecipe": "pretrain", "ClipLoader": "loader",
         "SamplingConfig": "sampling", "open_shards": "shards", "ShardSet": "shards", "DatasetError": "shards",
         "finetune_loader": "classify", "test_loader": "classify", "MixtureLoader": "mixture"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
