"""Write one shard: a plain, deterministic POSIX tar and its DALI index, both atomically.

Tar members carry fixed metadata (mtime 0, uid/gid 0, no user names, mode 0644) and appear in
the planned order, video member then json member per sample, so the same plan always gives the
same bytes. USTAR headers only (keys are short), so every header is exactly 512 bytes.
"""

import contextlib
import hashlib
import io
import json
import os
import tarfile

from shard_tools.files import open_atomic, write_text_atomic
from shard_tools.index import format_index

TAR_BLOCK = 512


def member_bytes(size):
    """Bytes a member of `size` occupies in the tar: header plus data padded to 512."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def sample_json(meta):
    """The sample's `json` member: sorted keys and UTF-8, so equal metadata gives equal bytes."""
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _tarinfo(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def file_sha256(path, chunk=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_shard(samples, tar_path, idx_path):
    """Write `samples` ([(key, ext, video_bytes_or_path, meta_dict)]) to tar_path + idx_path.

    Both files are written under `*.tmp` names and renamed when complete; returns
    {"bytes", "sha256", "index_sha256", "num_samples"} of the finished shard.
    """
    members = []
    # The tar is streamed (a shard can be a gigabyte); the index is written first, because the
    # tar's appearance is what marks the shard present.
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open_atomic(tar_path))
        with tarfile.open(fileobj=raw, mode="w:", format=tarfile.USTAR_FORMAT) as tar:
            for key, ext, video, meta in samples:
                if not isinstance(video, bytes):
                    with open(video, "rb") as f:
                        video = f.read()
                for name, data in ((f"{key}.{ext}", video), (f"{key}.json", sample_json(meta))):
                    members.append((name, tar.offset + TAR_BLOCK, len(data)))
                    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        index_text = format_index(members)
        write_text_atomic(idx_path, index_text)
    return {"bytes": os.path.getsize(tar_path), "sha256": file_sha256(tar_path),
            "index_sha256": hashlib.sha256(index_text.encode("utf-8")).hexdigest(),
            "num_samples": len(samples)}
