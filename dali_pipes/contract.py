"""What every loader gives the trainer: the one contract between dali_pipes and vmae2.

A loader (dali_pipes.pretrain_loader, dali_pipes.classify.finetune_loader, a MixtureLoader, or a test's
in-memory stand-in) is an iterable over the rest of the current epoch, with

    len(loader)              batches per epoch on this rank
    loader.state_dict()      plain data (numbers, strings, bytes, lists, dicts) to continue right
    loader.load_state_dict() after the last batch handed out, exactly

and batches that are dicts of

    video   uint8 (B·N, T, S, S, 3) on the device; B videos decoded per step, N clips of each
    masks   {"visible_idx", "query_idx", "loss_idx"}: int64 (B·N, count) index tensors (pre-training)
    label   int64 (B·N,) on the device, −1 for an unlabeled sample
    keys    list of B·N sample keys, aligned with the clips

and, from the DALI loaders (optional for a stand-in; dali_pipes.bad_samples):

    bad_samples   list of {key, shard, reason, detail} met since the previous batch, usually empty:
                  samples whose video failed its checksum or did not decode. Their rows hold another
                  sample of the same batch instead, so no clip of theirs is in any batch.
    loader.bad_samples(), loader.samples_read()   the tally so far, kept in state_dict()

tests/test_dali_model_contract.py feeds a real batch straight into the model.
"""
from __future__ import annotations


def forever(loader):
    """Batches across epochs; the loader's own state says where an interrupted epoch stands."""
    while True:
        yield from loader
