"""Training towers with the recall objective through the one training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coarserank.config import DatOptions, RecallConfig, StudentConfig
from coarserank.data.schema import Field, Schema
from coarserank.distill.families import mimic_loss
from coarserank.distill.recall import PairView, RecallFields, check_recall_inputs, fit_recall
from coarserank.distill.tensors import TensorTable, make_table
from coarserank.distill.train import FitSettings
from coarserank.errors import ConfigError, DataError, SchemaError
from coarserank.ranking_eval.retrieval import UserItems, evaluate_retrieval, popularity_item_vectors
from coarserank.student import build_student
from coarserank.student.multi_interest import build_multi_interest

USERS, ITEMS, CLUSTERS, HIST = 150, 240, 12, 8
FIELDS = RecallFields(item="item_id", user="user_id")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one intra-op thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _schema(sequence: bool) -> Schema:
    fields = [Field("user_id", "user", "categorical", size=USERS + 2)]
    if sequence:
        fields.append(Field("hist", "user", "sequence", size=ITEMS + 2, max_len=HIST, of="item_id"))
    fields += [Field("item_id", "item", "categorical", size=ITEMS + 2),
               Field("cluster", "item", "categorical", size=CLUSTERS + 2)]
    return Schema(tuple(fields))


def _log(rng: np.random.Generator, rows: int, sequence: bool):
    """Users like two clusters; half the exposures come from them (click 0.7), half by popularity
    (click 0.05). Returns the rows in time order per user and each item's cluster."""
    cluster = rng.integers(0, CLUSTERS, ITEMS)
    likes = np.stack([rng.choice(CLUSTERS, 2, replace=False) for _ in range(USERS)])
    pop = 1.0 / np.arange(1, ITEMS + 1) ** 0.8
    pop /= pop.sum()
    user = rng.integers(0, USERS, rows)
    liked = rng.random(rows) < 0.5
    fav = likes[user, rng.integers(0, 2, rows)]
    pool = [np.flatnonzero(cluster == c) for c in range(CLUSTERS)]
    item = np.where(liked, [rng.choice(pool[c]) for c in fav], rng.choice(ITEMS, rows, p=pop))
    label = (rng.random(rows) < np.where(np.isin(cluster[item], likes[user]) & liked, 0.7, 0.05)).astype(np.float32)
    order = np.lexsort((np.arange(rows), user))
    user, item, label = user[order], item[order], label[order]
    inputs = {"user_id": user + 2, "item_id": item + 2, "cluster": cluster[item] + 2}
    if sequence:  # earlier positives of the same user, most recent first
        hist = np.zeros((rows, HIST), dtype=np.int64)
        for r in range(1, rows):
            if user[r] == user[r - 1]:
                prev = hist[r - 1]
                hist[r] = np.concatenate([[item[r - 1] + 2], prev[:-1]]) if label[r - 1] else prev
        inputs["hist"] = hist
    return inputs, label, cluster


def _split(inputs, label, frac: float = 0.8):
    user = inputs["user_id"]
    rank = np.zeros(len(user))
    for u in np.unique(user):
        m = np.flatnonzero(user == u)
        rank[m] = np.arange(m.size) / m.size
    train, test = rank < frac, rank >= frac

    def take(m):
        return {k: v[m] for k, v in inputs.items()}, label[m]

    return take(train), take(test)


def _table(inputs, label) -> TensorTable:
    return make_table(inputs, label, inputs["user_id"])


def _retrieval(model, train_in, train_y, test_in, test_y, k: int = 20) -> float:
    """Recall@k over all items for test users (user vectors from each user's latest test row)."""
    with torch.no_grad():
        model.eval()
        cat = {"item_id": torch.arange(2, ITEMS + 2), "cluster": torch.from_numpy(train_in["cluster"][:0])}
        clusters = np.zeros(ITEMS + 2, dtype=np.int64)
        clusters[train_in["item_id"]] = train_in["cluster"]
        clusters[test_in["item_id"]] = test_in["cluster"]
        cat["cluster"] = torch.from_numpy(clusters[2:])
        items = model.item_tower(cat).numpy()
        last = {u: i for i, u in enumerate(test_in["user_id"])}
        rows = np.array(list(last.values()))
        users = model.user_tower({f: torch.from_numpy(v[rows]) for f, v in test_in.items()}).numpy()
    ids = test_in["user_id"][rows]
    pos = {u: p for p, u in enumerate(ids)}
    held = test_y > 0
    heldout = UserItems.from_pairs(np.array([pos[u] for u in test_in["user_id"][held]]),
                                   test_in["item_id"][held] - 2, len(ids), ITEMS)
    seen = np.isin(train_in["user_id"], ids)
    exclude = UserItems.from_pairs(np.array([pos[u] for u in train_in["user_id"][seen]]),
                                   train_in["item_id"][seen] - 2, len(ids), ITEMS)
    counts = np.bincount(train_in["item_id"] - 2, minlength=ITEMS)
    model_recall = evaluate_retrieval(users, items, heldout, exclude, (k,), counts).recall[k]
    pop_recall = evaluate_retrieval(np.ones((len(ids), 1), np.float32), popularity_item_vectors(counts), heldout,
                                    exclude, (k,), counts).recall[k]
    return model_recall - pop_recall


SETTINGS = FitSettings(lr=5e-3, batch_size=256, epochs=4, patience=4, seed=0)


def _gain_over_popularity(rng, cfg: StudentConfig, sequence: bool) -> float:
    """Train ``cfg``'s model with the recall objective on a fresh log; Recall@20 minus popularity's."""
    inputs, label, _ = _log(rng, 6000, sequence=sequence)
    (tr_in, tr_y), (te_in, te_y) = _split(inputs, label)
    train, valid = _table(tr_in, tr_y), _table(te_in, te_y)
    torch.manual_seed(0)
    model = build_multi_interest(_schema(True), cfg) if sequence else build_student(_schema(False), cfg)
    fit_recall(model, train, valid, _schema(sequence), cfg, FIELDS, settings=SETTINGS)
    return _retrieval(model, tr_in, tr_y, te_in, te_y)


@pytest.mark.parametrize("extra", [0, 64])
def test_sampled_softmax_two_tower_beats_popularity_over_the_catalogue(rng, extra):
    cfg = StudentConfig(dim=16, embed_dim=8, hidden=(32,), objective="sampled_softmax", softmax_temperature=0.1,
                        extra_negatives=extra, batch_size=256)
    assert _gain_over_popularity(rng, cfg, sequence=False) > 0.1


def test_multi_interest_model_trains_with_label_aware_attention_and_beats_popularity(rng):
    cfg = RecallConfig(dim=16, embed_dim=8, hidden=(32,), interests=2, softmax_temperature=0.1, batch_size=256,
                       logq="streaming")
    assert _gain_over_popularity(rng, cfg, sequence=True) > 0.1


def test_pair_view_gives_vectors_in_training_and_scores_in_evaluation(rng):
    inputs, label, _ = _log(rng, 300, sequence=False)
    batch = _table(inputs, label).inputs
    model = build_student(_schema(False), StudentConfig(dim=8, embed_dim=4, hidden=(8,)))
    view = PairView(model).train()
    pair = view(batch)
    assert torch.equal(pair[:, 0], model.user_tower(batch)) and torch.equal(pair[:, 1], model.item_tower(batch))
    assert torch.equal(view.eval()(batch), model(batch))


def _tiny_table(label: np.ndarray) -> TensorTable:
    n = label.size
    return make_table({"user_id": np.arange(n) % 7 + 2, "item_id": np.arange(n) % 5 + 2,
                       "cluster": np.full(n, 2)}, label.astype(np.float32), np.arange(n) % 7)


def test_a_training_split_without_positives_is_a_data_error():
    with pytest.raises(DataError, match="the training split has none"):
        check_recall_inputs(_schema(False), _tiny_table(np.zeros(50)), StudentConfig(), FIELDS, "recall")


def test_batches_too_small_to_hold_a_positive_are_a_config_error():
    label = np.zeros(1000)
    label[::400] = 1
    with pytest.raises(ConfigError, match="recall.batch_size = 64 holds 0.19 positive rows per batch.*at least 334"):
        check_recall_inputs(_schema(False), _tiny_table(label), StudentConfig(batch_size=64), FIELDS, "recall")


def test_a_recall_model_without_an_item_id_field_is_a_schema_error():
    schema = Schema(tuple(f for f in _schema(False).fields if f.name != "item_id"))
    with pytest.raises(SchemaError, match="declare 'item_id' \\(data.item_col\\) as an item-side categorical"):
        check_recall_inputs(schema, _tiny_table(np.ones(10)), StudentConfig(), FIELDS, "student")


def test_a_recall_model_without_item_features_is_a_schema_error():
    schema = Schema(tuple(f for f in _schema(False).fields if f.side != "item"))
    with pytest.raises(SchemaError, match="needs an item id or item features"):
        check_recall_inputs(schema, _tiny_table(np.ones(10)), StudentConfig(), FIELDS, "recall")


@pytest.mark.parametrize("family", ["senet", "shortcut", "parallel", "dat"])
def test_sampled_softmax_trains_every_tower_family_to_beat_popularity(rng, family):
    cfg = StudentConfig(dim=16, embed_dim=8, hidden=(32,), objective="sampled_softmax", softmax_temperature=0.1,
                        batch_size=256, family=family)
    assert _gain_over_popularity(rng, cfg, sequence=False) > 0.05  # untrained towers: below popularity


def test_the_sampled_softmax_of_a_dat_student_adds_its_mimic_loss(rng):
    """One full batch, a learning rate too small to move the weights: the epoch losses differ by exactly
    ``mimic_weight * mimic_loss`` of the untrained model."""
    inputs, label, _ = _log(rng, 400, sequence=False)
    table = _table(inputs, label)
    settings = FitSettings(lr=1e-30, batch_size=len(table), epochs=1, patience=1, seed=0)
    losses, mimic = {}, None
    for weight in (0.0, 2.0):
        cfg = StudentConfig(dim=8, embed_dim=4, hidden=(8,), family="dat", objective="sampled_softmax",
                            dat=DatOptions(mimic_weight=weight))
        torch.manual_seed(0)
        model = build_student(_schema(False), cfg)
        if mimic is None:
            mimic = mimic_loss(model.train(), table.inputs, table.label).item()
        losses[weight] = fit_recall(model, table, table, _schema(False), cfg, FIELDS,
                                    settings=settings).history[0].train_loss
    assert mimic > 0
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * mimic, rel=1e-4)
