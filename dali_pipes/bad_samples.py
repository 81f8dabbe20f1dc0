"""Bad samples: a video that is not what was packed, or that the decoder cannot read.

A run of days should neither train on such a sample unnoticed nor die of one. FFmpeg decodes on
through most damage: 4 kB overwritten in the middle of a VP9 video gives DALI no error, only wrong
frames (garbage, or the last frame the demuxer reached repeated by `pad_mode="edge"`), and DALI's
video decoder reports no frame count to compare. So the loaders (loader.py) find bad samples two ways:

    checksum   the video's bytes against the CRC-32 its json records (`video_crc32`, FORMAT.md),
               on the sampler thread, which holds every sample's encoded bytes anyway
    decode     the clip pipeline raising on a batch: each of its samples is decoded alone, and
               those that fail alone are the bad ones

A bad sample is replaced in its batch by a good sample of the same batch (its encoded bytes and
every array drawn for it), so batch shapes stay fixed and batch k stays a function of what the
reader gave; a batch with no good sample is dropped. Each bad sample is recorded as
{key, shard, reason, detail, count}; the trainer stops once more than `max_bad_sample_fraction`
of the samples read were bad (check_bad_fraction), and a loader stops by itself when a whole
epoch of batches held no good sample.

Imports numpy and shard_tools only (no DALI, no torch).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from shard_tools.format import checksum_mismatch
from shard_tools.mixture import is_mixture_file, read_mixture

from .shards import DatasetError, open_shards

SHOWN = 5  # bad keys named per shard in a message; the rest are counted


class BadDataError(DatasetError):
    """Too many samples of a dataset are bad to go on (or its shards differ from the manifest)."""


def sample_key(source_info: str) -> tuple[str, str]:
    """(sample key, shard path) from the reader's source info "shard.tar:offset:key.json"."""
    shard, _, member = source_info.rsplit(":", 2)
    return member.split(".", 1)[0], shard


def bad_record(source_info: str, reason: str, detail: str) -> dict:
    key, shard = sample_key(source_info)
    return {"key": key, "shard": shard, "reason": reason, "detail": detail}


def checksum_failures(encoded, metas: list[dict], map_rows=map) -> dict[int, str]:
    """{row: why} for the samples whose encoded bytes differ from the checksum their json records.

    map_rows: how the rows are mapped; a thread pool's map hashes several videos at once (zlib lets go
    of the GIL while it hashes).
    """
    whys = map_rows(lambda row: checksum_mismatch(np.asarray(encoded[row]), metas[row]), range(len(metas)))
    return {row: why for row, why in enumerate(whys) if why}


def replacement_rows(num_rows: int, bad_rows) -> list[int]:
    """For each row of a batch, the row whose data it takes: itself when good, else the next good
    row after it (wrapping round). Needs at least one good row."""
    good = [row for row in range(num_rows) if row not in bad_rows]
    if not good:
        raise ValueError("a batch with no good sample has nothing to replace its bad ones with")
    return [row if row not in bad_rows else next((g for g in good if g > row), good[0]) for row in range(num_rows)]


def merge_records(record_lists) -> list[dict]:
    """Records of several loaders or ranks as one list, counts of the same key added."""
    merged = {}
    for records in record_lists:
        for record in records:
            kept = merged.setdefault(record["key"], {**record, "count": 0})
            kept["count"] += record.get("count", 1)
    return list(merged.values())


class BadSampleTally:
    """What a loader has handed out so far: samples read, and each bad sample with how often it was met."""

    def __init__(self):
        self.samples_read = 0
        self.records: dict[str, dict] = {}

    def add(self, samples_read: int, records: list[dict]) -> None:
        self.samples_read += samples_read
        for record in records:
            kept = self.records.setdefault(record["key"], {**record, "count": 0})
            kept["count"] += 1

    def bad_samples(self) -> list[dict]:
        return [dict(r) for r in self.records.values()]

    def state_dict(self) -> dict:
        return {"samples_read": self.samples_read, "bad_samples": self.bad_samples()}

    def load_state_dict(self, state: dict) -> None:
        """From a state_dict(); a state saved before bad samples were tracked starts the tally at zero."""
        self.samples_read = int(state.get("samples_read", 0))
        self.records = {r["key"]: dict(r) for r in state.get("bad_samples", [])}


def describe(records: list[dict]) -> str:
    """Bad samples grouped by shard: "a.tar: k1 (checksum), k2 (decode); b.tar: k3 (checksum)"."""
    by_shard = defaultdict(list)
    for record in records:
        by_shard[record["shard"]].append(f"{record['key']} ({record['reason']})")
    parts = []
    for shard, named in by_shard.items():
        more = f" and {len(named) - SHOWN} more" if len(named) > SHOWN else ""
        parts.append(f"{shard}: {', '.join(named[:SHOWN])}{more}")
    return "; ".join(parts)


def _fix(records: list[dict]) -> str:
    roots = sorted({str(Path(r["shard"]).parent) for r in records})
    checks = " and ".join(f"`vmae2-shard verify {root} --full`" for root in roots)
    return f"check the data with {checks}, then repack or restore those shards"


def check_bad_fraction(records: list[dict], samples_read: int, max_fraction: float) -> None:
    """BadDataError when more than max_fraction of the samples read were bad.

    Judged only from 1 / max_fraction samples read on (100 at 0.01), so one bad video among the
    first batches does not stop a run; 0 stops at the first bad sample, 1 never stops.
    """
    bad = sum(r.get("count", 1) for r in records)
    min_read = math.ceil(1 / max_fraction) if max_fraction > 0 else 0
    if bad == 0 or samples_read < min_read or bad <= max_fraction * samples_read:
        return
    raise BadDataError(f"{bad} of {samples_read} samples read were bad ({bad / samples_read:.1%}), more than "
                       f"max_bad_sample_fraction={max_fraction}: {describe(records)}; {_fix(records)}, or raise "
                       f"max_bad_sample_fraction")


def no_good_sample_error(records: list[dict], num_batches: int) -> BadDataError:
    """The loader's own stop: a whole epoch of batches read and not one good sample among them."""
    return BadDataError(f"no good sample in {num_batches} batches in a row (a whole epoch): every video read was "
                        f"bad: {describe(merge_records([records]))}; {_fix(records)}")


def dataset_roots(data) -> list[Path]:
    """The dataset folders behind a data argument: a folder, a manifest.json, a mixture file or entries."""
    if isinstance(data, (list, tuple)):
        return [open_shards(entry["path"] if isinstance(entry, dict) else entry).root for entry in data]
    if is_mixture_file(data):
        return [open_shards(source["path"]).root for source in read_mixture(data)]
    return [open_shards(data).root]


def verify_datasets(data_args, rank: int = 0, world_size: int = 1) -> None:
    """Every shard's size and sha256 against its manifest (`--verify-data`), before a run reads them.

    The processes of a job share the shards (rank r hashes shards r, r + world_size, ...); a mismatch
    is a BadDataError naming the shard and the fix.
    """
    from shard_tools.verify import check_digests  # imports PyAV, which a loader does not need

    problems, roots = [], []
    for data in data_args:
        if data:
            roots += dataset_roots(data)
    for root in dict.fromkeys(roots):
        problems += check_digests(root, rank, world_size)
    if problems:
        shown = "; ".join(problems[:SHOWN]) + (f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")
        checks = " and ".join(f"`vmae2-shard verify {root}`" for root in dict.fromkeys(roots))
        raise BadDataError(f"--verify-data: {len(problems)} shard(s) differ from their manifest: {shown}. Run {checks} "
                           f"for the details, then repack or restore those shards")
