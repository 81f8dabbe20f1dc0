"""Mixture files: several packed datasets drawn from with weights, each at its own stride.

A mixture file is a JSON or YAML list, one entry per packed dataset:

    - {path: k710, weight: 0.6, stride: 4}      # a folder written by `vmae2-shard pack`
    - {path: ssv2/manifest.json, weight: 0.4, stride: 2}

`path` (required) is a dataset folder or its manifest.json, relative to the mixture file's
folder unless absolute; `weight` (default 1) is a positive number, normalised over the entries
to the share of samples drawn from that dataset; `stride` (default: the run's own) is the
temporal stride in source frames for that dataset. `read_mixture` checks all of this and is
what loaders read mixtures with.
"""

import json
import math
from pathlib import Path

from shard_tools.format import MANIFEST_NAME

MIXTURE_SUFFIXES = (".json", ".yaml", ".yml")
MIXTURE_KEYS = ("path", "weight", "stride")


class MixtureError(ValueError):
    """A mixture file that cannot be read or breaks the format above."""


def is_mixture_file(path):
    """A JSON/YAML file that is not a dataset's own manifest.json."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in MIXTURE_SUFFIXES and path.name != MANIFEST_NAME


def _load(path):
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as err:
            raise MixtureError(f"{path}: not valid JSON ({err})") from err
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MixtureError(f"{path}: not valid YAML ({err})") from err


def read_mixture(path):
    """[{"path": dataset folder (absolute str), "weight": float as written, "share": weight
    normalised to sum 1, "stride": int or None}] of the mixture file at `path`."""
    path = Path(path)
    if not path.is_file():
        raise MixtureError(f"{path}: no such mixture file")
    return mixture_entries(_load(path), path.parent, str(path), noun="mixture file")


def mixture_entries(entries, folder, where="mixture", noun="mixture"):
    """The checked entries of a mixture given as a Python list (relative paths from `folder`)."""
    example = '[{"path": "k710", "weight": 0.6, "stride": 4}, ...]'
    if not isinstance(entries, list) or not entries:
        raise MixtureError(f"{where}: a {noun} holds a non-empty list of datasets, like "
                           f"{example}; found {type(entries).__name__}")
    sources = [_entry(folder, n, entry, where) for n, entry in enumerate(entries)]
    total = sum(s["weight"] for s in sources)
    return [s | {"share": s["weight"] / total} for s in sources]


def _entry(base, n, entry, name):
    where = f"{name}: entry {n}"
    if not isinstance(entry, dict):
        raise MixtureError(f"{where} is {entry!r}; write each entry as {{path, weight, stride}}")
    unknown = sorted(set(entry) - set(MIXTURE_KEYS))
    if unknown:
        raise MixtureError(f"{where} has unknown keys {unknown}; an entry takes "
                           f"{', '.join(MIXTURE_KEYS)}")
    data = entry.get("path")
    if not isinstance(data, str) or not data:
        raise MixtureError(f"{where} has no path; give the dataset folder (or its manifest.json)")
    folder = (Path(base) / data).resolve()
    if folder.name == MANIFEST_NAME:
        folder = folder.parent
    if not (folder / MANIFEST_NAME).is_file():
        raise MixtureError(f"{where} (path {data!r}): no {MANIFEST_NAME} in {folder}; paths are "
                           f"relative to the mixture file's folder, and the dataset must be "
                           f"packed (vmae2-shard pack)")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
            math.isfinite(weight) and weight > 0):
        raise MixtureError(f"{where} (path {data!r}): weight {weight!r} must be a positive number")
    stride = entry.get("stride")
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int)
                               or stride < 1):
        raise MixtureError(f"{where} (path {data!r}): stride {stride!r} must be an integer of at "
                           f"least 1 (source frames between sampled frames), or left out")
    return {"path": str(folder), "weight": float(weight), "stride": stride}
