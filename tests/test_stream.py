"""The batch stream behind the keras and sklearn engines: mixing, coverage, prefetch bounds."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from conftest import toy_config

from hepdask import load_config
from hepdask.dataset import open_dataset
from hepdask.features import Features, Layout, SplitArrays, build_features, make_layout
from hepdask.specs import compute_specs
from hepdask.stream import BatchStream, Transform

PLAIN = Transform(indicators=(), class_scale=(), use_weights=True)


def id_features(sizes: dict[str, list[int]], labels: dict[str, int]) -> Features:
    """Features whose single column is a unique event id; one block per listed size."""
    blocks, samples, next_id = [], [], 0
    for sample, block_sizes in sizes.items():
        for n in block_sizes:
            ids = np.arange(next_id, next_id + n, dtype=np.float32)
            next_id += n
            blocks.append(np.column_stack([ids, np.full(n, labels[sample], np.float32),
                                           np.ones(n, np.float32)]))
            samples.append(sample)
    matrix = da.concatenate([da.from_array(b, chunks=b.shape) for b in blocks if len(b)])
    empty = SplitArrays(matrix[:0])
    layout = Layout(columns=(), names=("id",), sentinel=None, normalize="none")
    train = SplitArrays(matrix, tuple(s for s, b in zip(samples, blocks, strict=True) if len(b)))
    return Features(layout, train, empty, empty)


def test_batches_mix_classes_in_the_global_ratio_when_each_file_holds_one_class(tmp_path, toy_data,
                                                                                 client):
    config = load_config(toy_config(tmp_path, toy_data["dir"]), ["data.step_size=700"])
    dataset = open_dataset(config)
    specs = compute_specs(dataset, client=client)
    features = build_features(dataset, make_layout(dataset, specs, config.features), specs)
    stream = BatchStream(client, features, "train", PLAIN, batch_size=200, prefetch=2, seed=3)
    y_all = np.concatenate([y for _, y, _ in stream.epoch(0)])
    share = y_all.mean()
    assert len(y_all) == len(features.train)
    for index in range(len(stream) - 1):  # the last batch may be short
        _, y, _ = stream.batch(0, index)
        assert 199 <= len(y) <= 201
        assert abs(y.mean() - share) <= 2 / len(y), f"batch {index}: {y.mean():.3f} vs {share:.3f}"


@pytest.fixture(scope="module")
def ids():
    sizes = {"signal": [300, 250, 10, 400], "background": [1000, 700, 0, 900, 333]}
    return id_features(sizes, {"signal": 1, "background": 0}), sum(map(sum, sizes.values()))


def test_every_event_once_per_epoch_and_a_new_order_each_epoch(client, ids):
    features, n = ids
    stream = BatchStream(client, features, "train", PLAIN, batch_size=128, prefetch=3, seed=11)
    orders = []
    for epoch in range(3):
        seen = np.concatenate([X[:, 0] for X, _, _ in stream.epoch(epoch)]).astype(np.int64)
        assert len(seen) == n and np.array_equal(np.sort(seen), np.arange(n))
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


def test_batches_depend_only_on_seed_epoch_and_index(client, ids):
    features, _ = ids
    one = BatchStream(client, features, "train", PLAIN, batch_size=100, prefetch=2, seed=5)
    two = BatchStream(client, features, "train", PLAIN, batch_size=100, prefetch=2, seed=5)
    sequential = [X[:, 0] for X, _, _ in one.epoch(1)]
    for index in reversed(range(len(two))):  # random access, backwards
        np.testing.assert_array_equal(two.batch(1, index)[0][:, 0], sequential[index])
    other = BatchStream(client, features, "train", PLAIN, batch_size=100, prefetch=2, seed=6)
    assert not np.array_equal(other.batch(1, 0)[0][:, 0], sequential[0])


def test_prefetch_keeps_a_bounded_window(client, ids):
    features, _ = ids
    stream = BatchStream(client, features, "train", PLAIN, batch_size=50, prefetch=2, seed=1)
    peak = 0
    for index in range(len(stream)):
        stream.batch(0, index)
        peak = max(peak, len(stream._held))
    assert 2 <= peak <= 2 + 2  # prefetch + one active block per sample
    stream.release()
    assert not stream._held


def test_transform_fills_missing_values_flags_them_and_scales_weights():
    block = np.array([[1.0, np.nan, 1, 2.0], [np.nan, 3.0, 0, 4.0]], dtype=np.float32)
    X, y, w = Transform(indicators=(0,), class_scale=((0, 10.0), (1, 0.5)), use_weights=True)(block)
    np.testing.assert_array_equal(X, [[1, 0, 0], [0, 3, 1]])
    np.testing.assert_array_equal(y, [1, 0])
    np.testing.assert_array_equal(w, [1.0, 40.0])
