"""hf://OWNER/REPO[@REVISION][/FILE]: weights on the Hugging Face Hub, as a local path.

Fetched through huggingface_hub, so its cache, token (`hf auth login`, HF_TOKEN) and HF_HUB_OFFLINE apply;
offline, or without network, the cached snapshot is used. vmae2.weights reads the path like any other.
"""
from __future__ import annotations

import json
from pathlib import Path

HUB_PREFIX = "hf://"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")   # in the order a folder's single file is picked


def parse_hub_uri(uri: str) -> tuple[str, str | None, str | None]:
    """hf://OWNER/REPO[@REVISION][/FILE] -> (repo_id, revision, file or None)."""
    parts = uri[len(HUB_PREFIX):].strip("/").split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"{uri}: expected hf://OWNER/REPO or hf://OWNER/REPO/FILE (e.g. "
                         f"hf://OpenGVLab/VideoMAEv2-Base or hf://OWNER/REPO/vit_b_k710_dl_from_giant.pth)")
    repo, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{repo}", revision or None, "/".join(parts[2:]) or None


def hub_path(uri: str) -> Path:
    """A local file or snapshot folder for hf://OWNER/REPO[/FILE], via huggingface_hub and its cache.

    With FILE, that file (and a config.json beside it, if the repo has one). Without, the repo's single
    weights file (.safetensors first, then .pth/.pt, then .bin) and config.json. Offline (HF_HUB_OFFLINE=1
    or no network) the cached snapshot is used.
    """
    from huggingface_hub import constants, hf_hub_download, list_repo_files, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, revision, filename = parse_hub_uri(uri)
    offline_fix = ("it is not in the local cache " f"({constants.HF_HUB_CACHE}); run once with network access "
                   "(HF_HUB_OFFLINE unset) or point HF_HOME / HF_HUB_CACHE at a cache that holds it")
    try:
        files = None if constants.HF_HUB_OFFLINE else _list_or_none(list_repo_files, repo_id, revision)
        if files is None:                                    # offline: whatever the cache holds
            folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
            path = folder / filename if filename else folder
            if not path.exists():
                raise FileNotFoundError(f"{uri}: {filename} is not in the cached snapshot {folder}; "
                                        f"found {sorted(p.name for p in folder.iterdir())[:8]}")
            return path
        if filename is None:
            filename = _pick_hub_file(files, uri)
        path = Path(hf_hub_download(repo_id, filename, revision=revision))
        if filename.endswith(".index.json"):                 # sharded: fetch the shards beside the index
            for shard in dict.fromkeys(json.loads(path.read_text())["weight_map"].values()):
                hf_hub_download(repo_id, str(Path(filename).parent / shard), revision=revision)
        config = str(Path(filename).parent / "config.json") if "/" in filename else "config.json"
        if config in files:
            hf_hub_download(repo_id, config, revision=revision)   # lands beside the weights in the snapshot
        return path
    except GatedRepoError:
        raise ValueError(f"{uri}: the repository is gated; accept its terms on huggingface.co and log in "
                         f"(`hf auth login`) or set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{uri}: no such repository (or it is private: log in with `hf auth login` "
                                f"or set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"{uri}: {offline_fix}") from None
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"{uri}: the hub refused ({str(err).splitlines()[0]}); check OWNER/REPO and FILE "
                                f"(hf://OWNER/REPO/FILE)") from None


def _list_or_none(list_repo_files, repo_id: str, revision: str | None) -> list[str] | None:
    """The repo's files, or None when the hub cannot be reached (then the cache decides)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return list_repo_files(repo_id, revision=revision)
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError):
        raise
    except Exception:  # no network: connection errors differ by HTTP backend and version
        return None


def pick_weights_file(names: list[str]) -> str | None:
    """The one weights file among file names (a sharded safetensors index first, then .safetensors, .pth/.pt,
    .bin); None when there is none; ValueError naming them when a kind has several."""
    if "model.safetensors.index.json" in names:
        return "model.safetensors.index.json"
    for suffixes in ((".safetensors",), (".pth", ".pt"), (".bin",)):
        found = [f for f in names if f.endswith(suffixes)]
        if len(found) > 1:
            raise ValueError(f"several weights files {found[:8]}")
        if found:
            return found[0]
    return None


def _pick_hub_file(files: list[str], uri: str) -> str:
    try:
        picked = pick_weights_file([f for f in files if "/" not in f])
    except ValueError as err:
        raise ValueError(f"{uri}: the repository holds {err}; pick one with {uri.rstrip('/')}/FILE") from None
    if picked is None:
        raise FileNotFoundError(f"{uri}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) at the top of the "
                                f"repository; found {files[:8]}; pass hf://OWNER/REPO/PATH/TO/FILE")
    return picked
