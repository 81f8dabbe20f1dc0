"""What a task reads off a dataset before it builds a loader: that it is there, and how many classes it has.

Below vmae2.tasks and vmae2.evaluate, which both ask.
"""
from __future__ import annotations

from pathlib import Path


def check_data(path: str, name: str = "data") -> None:
    if not path or not Path(path).exists():
        raise FileNotFoundError(f"{name}={path!r}: no such shard folder, manifest.json or mixture file; pack videos "
                                f"with `vmae2-shard pack` or make a synthetic set with `vmae2-shard synth OUT`")


def dataset_num_classes(data: str, label_map: str = "") -> int:
    """Classes of a labeled shard set (its manifest's label map), or of a mixture's label map file."""
    check_data(data)
    from dali_pipes.mixture import is_mixture
    from dali_pipes.shards import open_shards
    from shard_tools.format import read_manifest
    from shard_tools.mixture import read_mixture
    from shard_tools.sources import read_label_map

    if label_map:
        return len(read_label_map(label_map))
    root = read_mixture(data)[0]["path"] if is_mixture(data) else open_shards(data).root
    labels = read_manifest(root)["labels"]
    if not labels:
        raise ValueError(f"{data}: the dataset has no labels (manifest 'labels' is empty); fine-tuning needs a "
                         f"labeled set (vmae2-shard pack with class folders or a `path label` list, or synth)")
    return len(labels)
