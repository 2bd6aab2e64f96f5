"""Warm-started retraining: a new model over a changed catalogue starts from the registry's current one; items both
know keep their rows, new items get fresh ones, items that left are dropped; the schedule of full retrains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.config import Gru4RecConfig, SasRecConfig, TrainingConfig
from seqrec.models.gru4rec import GRU4Rec
from seqrec.models.sasrec import SASRec
from seqrec.sequences import ItemVocab, SessionDataset


def vocab(ids) -> ItemVocab:
    return ItemVocab(np.array(["<pad>"] + [str(i) for i in ids], dtype=object))


def data(v: ItemVocab, n: int = 200) -> SessionDataset:
    items = (np.arange(n * 4) % v.size + 1).astype(np.int64)
    return SessionDataset(v, np.arange(0, n * 4 + 1, 4), items, np.arange(n * 4), np.arange(n))


MODELS = {"gru4rec": lambda seed: GRU4Rec(Gru4RecConfig(hidden=8, epochs=1, batch_size=8, n_sample=8),
                                          TrainingConfig(device="cpu", progress=False, seed=seed)),
          "sasrec": lambda seed: SASRec(SasRecConfig(dim=8, ffn=16, epochs=1, max_len=8, batch_size=16),
                                        TrainingConfig(device="cpu", progress=False, seed=seed))}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_items_both_know_keep_their_rows_new_ones_are_fresh_and_the_rest_is_copied(name):
    old_vocab, new_vocab = vocab(range(0, 40)), vocab(range(10, 50))  # 0-9 left, 40-49 arrived, 10-39 stay
    previous = MODELS[name](0).fit(data(old_vocab))
    fresh = MODELS[name](1)
    fresh.build_net(new_vocab)
    untouched = {k: v.clone() for k, v in fresh.net.state_dict().items()}
    model = MODELS[name](1)
    counts = model.init_from_model(previous, new_vocab)
    assert counts == {"kept": 30, "new": 10, "dropped": 10}
    old, mine = previous.net.state_dict(), model.net.state_dict()
    item_keys = [k for k, v in mine.items() if v.ndim and v.shape[0] == 41]
    assert item_keys  # the item rows exist under some weight
    for key, value in mine.items():
        if key in item_keys:
            assert torch.equal(value[1:31], old[key][11:41])  # items 10..39: rows 11..40 before, 1..30 now
            assert torch.equal(value[31:], untouched[key][31:])  # items 40..49: this model's own seeded rows
        else:
            assert torch.equal(value, old[key])
    model.fit(data(new_vocab))  # and it trains from there


def test_changed_sizes_are_refused_naming_the_weight():
    small = MODELS["gru4rec"](0).fit(data(vocab(range(20))))
    bigger = GRU4Rec(Gru4RecConfig(hidden=16, epochs=1), TrainingConfig(device="cpu", progress=False))
    with pytest.raises(ValueError, match=r"weight .* has shape .* sizes changed"):
        bigger.init_from_model(small, vocab(range(20)))
