"""dali_pipes: vmae2-shard datasets → pre-training batches on the device (one DALI engine)."""
from .loader import PretrainLoader, pretrain_loader
from .manifest import DatasetError

__all__ = ["pretrain_loader", "PretrainLoader", "DatasetError"]
