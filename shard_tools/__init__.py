"""vmae2-shard: pack video collections into DALI-ready WebDataset shards (see FORMAT.md)."""

from shard_tools.format import TOOL_VERSION as __version__  # noqa: F401
