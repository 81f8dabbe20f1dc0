"""Mixtures: batches drawn from several shard sets, each with a sampling weight and its own frame stride.

VideoMAE V2 pre-trains on UnlabeledHybrid (K710, SSv2 at stride 2, AVA, WebVid, Instagram at stride 4)
and post-pre-trains on K710 (K400 ∪ K600 ∪ K700 under one label map). A mixture file
(shard_tools.mixture) names the datasets; this loader keeps one loader per dataset (each with its own
stride, sharded by rank, resumable) and draws, batch by batch, which dataset the next batch comes from:

- the draw for batch k on rank r is `default_rng([seed, r, k]).choice(shares)`: deterministic under
  the seed, independent of how the run was interrupted, and every rank draws its own share;
- a batch holds videos of one dataset (their clips share a decode pipeline and a stride);
- one epoch of the mixture is as many batches as the datasets' own epochs together (the sum of their
  batches per epoch), so with weights proportional to the datasets' sizes an epoch shows each video
  once in expectation; the datasets' own epochs turn over independently;
- `source_counts()` gives the videos drawn from each dataset so far (the trainer logs it);
- `bad_samples()` and `samples_read()` add up the datasets' loaders' (dali_pipes.bad_samples);
- labels of a labeled mixture are mapped into one label space given by a label map file (one class name
  per line: the K710 union), and a class that maps nowhere is an error naming it and its dataset.

Exact resume: the state holds the number of batches drawn and every dataset loader's own state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shard_tools.format import read_manifest
from shard_tools.mixture import is_mixture_file, mixture_entries, read_mixture
from shard_tools.sources import read_label_map

from .bad_samples import merge_records
from .contract import forever
from .shards import DatasetError

__all__ = ["MixtureLoader", "is_mixture", "mixture_loader"]


def is_mixture(data) -> bool:
    """A mixture: a list of {path, weight, stride} entries, or a mixture file (not a manifest.json)."""
    return isinstance(data, (list, tuple)) or is_mixture_file(data)


def label_remaps(sources: list[dict], label_map) -> list[torch.Tensor | None]:
    """Per dataset: its label index -> the label map's index (None where the dataset is unlabeled)."""
    names = read_label_map(label_map) if label_map else None
    remaps, first = [], None
    for source in sources:
        labels = read_manifest(source["path"])["labels"]
        if not labels:
            remaps.append(None)
            continue
        if names is None:            # no label map: the labeled datasets must share one label space
            if first is not None and labels != first:
                raise DatasetError(f"{source['path']}: its labels differ from another dataset of the mixture; "
                                   f"give a label map of the union (one class name per line) as label_map")
            first = labels
            remaps.append(None)
            continue
        index = {name: i for i, name in enumerate(names)}
        missing = [name for name in labels if name not in index]
        if missing:
            raise DatasetError(f"{source['path']}: classes {missing[:5]}{' ...' if len(missing) > 5 else ''} are "
                               f"not in the label map {label_map}; add them to it or repack without them")
        remaps.append(torch.tensor([index[name] for name in labels], dtype=torch.int64))
    return remaps


class MixtureLoader:
    """Iterable of batches from several dataset loaders (see the module doc); the loader contract."""

    def __init__(self, sources: list[dict], loaders: list, *, seed: int = 0, rank: int = 0, label_map=None):
        if len(sources) != len(loaders) or not loaders:
            raise ValueError("a mixture needs one loader per dataset")
        self.sources, self.loaders, self.seed, self.rank = sources, loaders, seed, rank
        self.shares = np.array([s["share"] for s in sources], dtype=np.float64)
        self.remaps = label_remaps(sources, label_map)
        self.batches_per_epoch = sum(len(loader) for loader in loaders)
        self._batches_done = 0
        self._videos = [0] * len(loaders)
        self._streams = [forever(loader) for loader in loaders]

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self._batches_done // self.batches_per_epoch

    def source_of(self, batch_index: int) -> int:
        """The dataset that batch `batch_index` (over all epochs) of this rank comes from."""
        rng = np.random.default_rng([self.seed, self.rank, batch_index])
        return int(rng.choice(len(self.shares), p=self.shares))

    def __iter__(self):
        remaining = self.batches_per_epoch - self._batches_done % self.batches_per_epoch
        for _ in range(remaining):
            i = self.source_of(self._batches_done)
            batch = next(self._streams[i])
            if self.remaps[i] is not None and "label" in batch:
                label = batch["label"]
                if self.remaps[i].device != label.device:      # once: no copy per batch
                    self.remaps[i] = self.remaps[i].to(label.device)
                batch["label"] = torch.where(label >= 0, self.remaps[i][label.clamp(min=0)], label)
            batch["source"] = i
            self._videos[i] += self.loaders[i].batch_size
            self._batches_done += 1
            yield batch

    def source_counts(self) -> dict[str, int]:
        """Videos drawn from each dataset so far (by the dataset folder's name)."""
        return {Path(s["path"]).name: n for s, n in zip(self.sources, self._videos)}

    def bad_samples(self) -> list[dict]:
        """Bad samples met so far in every dataset's batches (each dataset's shard paths name it)."""
        return merge_records(loader.bad_samples() for loader in self.loaders if hasattr(loader, "bad_samples"))

    def samples_read(self) -> int:
        return sum(loader.samples_read() for loader in self.loaders if hasattr(loader, "samples_read"))

    def state_dict(self) -> dict:
        return {"batches_done": self._batches_done, "videos": list(self._videos),
                "sources": [loader.state_dict() for loader in self.loaders],
                "paths": [str(s["path"]) for s in self.sources], "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        if state["paths"] != [str(s["path"]) for s in self.sources] or (state["seed"], state["rank"]) != (
                self.seed, self.rank):
            raise ValueError("mixture loader state was saved for other datasets, seed or rank; build the loader "
                             "with the mixture file and arguments of the saved run")
        for loader, sub in zip(self.loaders, state["sources"]):
            loader.load_state_dict(sub)
        self._batches_done, self._videos = state["batches_done"], list(state["videos"])
        self._streams = [forever(loader) for loader in self.loaders]

    def close(self) -> None:
        for loader in self.loaders:
            if hasattr(loader, "close"):
                loader.close()



def mixture_loader(data, build, *, seed: int = 0, rank: int = 0, label_map=None) -> MixtureLoader:
    """A MixtureLoader over the datasets of a mixture file, or of a list of {path, weight, stride} entries
    (relative paths from the working folder).

    build(data, stride or None, seed) -> a loader for one dataset; the stride is the entry's own (None: the
    run's). Each dataset's loader gets its own seed, so their shuffles and draws are independent.
    """
    sources = mixture_entries(list(data), Path.cwd()) if isinstance(data, (list, tuple)) else read_mixture(data)
    loaders = [build(str(s["path"]), s["stride"], seed + 7919 * i) for i, s in enumerate(sources)]
    return MixtureLoader(sources, loaders, seed=seed, rank=rank, label_map=label_map)

