"""Tests for cnncodes.evaluation: the labelled-data check, the held-out split, the metrics."""

from __future__ import annotations

import pytest
from cnncodes.evaluation import check_labelled, classification_metrics, stratified_split


def test_classification_metrics():
    m = classification_metrics(["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"])
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    # Recall: a 1/2, b 2/2, c 0/1 -> balanced accuracy is their mean.
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert m["per_class"]["c"]["precision"] == 0.0  # never predicted: 0, no warning
    assert m["labels"] == ["a", "b", "c"]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_stratified_split_holds_out_each_class_in_input_order():
    paths = [f"{c}{i}.png" for c in "abc" for i in range(5)]
    labels = [p[0] for p in paths]
    train, train_labels, test, test_labels = stratified_split(paths, labels, 0.2, seed=0)
    assert sorted(test_labels) == ["a", "b", "c"] and len(train) == 12
    assert train == sorted(train) and test == sorted(test)  # input order kept
    assert sorted(train + test) == paths
    assert [p[0] for p in train] == train_labels and [p[0] for p in test] == test_labels
    assert stratified_split(paths, labels, 0.2, seed=0)[2] == test
    assert any(stratified_split(paths, labels, 0.2, seed=s)[2] != test for s in range(1, 5))


@pytest.mark.parametrize(
    ("n_per_class", "test_size", "match"),
    [
        (5, 0, r"test_size=0: expected a fraction between 0 and 1"),
        (5, 1.0, r"test_size=1.0: expected a fraction between 0 and 1"),
        (5, 0.05, r"1 test image\(s\) cannot hold one of each of the 3 classes"),
        (2, 0.5, r"class\(es\) 'a', 'b', 'c' have fewer than 3 images"),
        (5, 0.7, r"leaves 4 training image\(s\) for 3 classes.*hold out a smaller fraction"),
    ],
)
def test_stratified_split_refuses_a_split_it_cannot_make(n_per_class, test_size, match):
    paths = [f"{c}{i}.png" for c in "abc" for i in range(n_per_class)]
    with pytest.raises(ValueError, match=match):
        stratified_split(paths, [p[0] for p in paths], test_size, seed=0)


def test_check_labelled_names_the_data():
    check_labelled(["a.png", "b.png"], ["x", "y"], "training data")
    with pytest.raises(ValueError, match=r"^test data: the images have no labels; use class"):
        check_labelled(["a.png"], None, "test data")
    with pytest.raises(ValueError, match=r"^training data: 2 images but 1 labels$"):
        check_labelled(["a.png", "b.png"], ["x"], "training data")
