"""`mrl_text.data.disjoint_qrels`: train/test qrels with no relevant document in common."""

import pytest

from mrl_text.data import disjoint_qrels, load_beir

from .conftest import SHARED_DATA

# t1 shares d1 with the test query q1; t2's d9 is judged irrelevant (0) in the test split only, which is no overlap;
# t3 shares nothing.
TRAIN = {"t1": {"d1": 1, "d2": 1}, "t2": {"d3": 1}, "t3": {"d4": 1, "d1": 0}}
TEST = {"q1": {"d1": 1}, "q2": {"d5": 1, "d3": 0}, "q3": {"d3": 2, "d6": 1}}


def relevant_documents(qrels):
    return {d for docs in qrels.values() for d, r in docs.items() if r > 0}


def assert_disjoint(train, test):
    assert not relevant_documents(train) & relevant_documents(test)


def test_dropping_training_queries_keeps_every_test_query():
    train, test = disjoint_qrels(TRAIN, TEST)
    assert_disjoint(train, test)
    assert test == TEST
    # t1 (d1 is relevant to q1) and t2 (d3 is relevant to q3) go; t3's d1 is judged irrelevant to it, so it stays
    assert train == {"t3": {"d4": 1, "d1": 0}}


def test_dropping_test_queries_keeps_the_training_split():
    train, test = disjoint_qrels(TRAIN, TEST, drop="test")
    assert_disjoint(train, test)
    assert train == TRAIN
    # q2's d3 is relevant to t2 but judged irrelevant to q2: no overlap, and q2 keeps that judgement
    assert test == {"q2": {"d5": 1, "d3": 0}}


def test_inputs_are_not_changed_and_results_are_copies():
    train, test = disjoint_qrels(TRAIN, TEST)
    test["q1"]["d1"] = 0
    assert TEST["q1"] == {"d1": 1}


def test_unknown_drop_names_the_choices():
    with pytest.raises(ValueError, match=r"drop='both'.*'train'.*'test'"):
        disjoint_qrels(TRAIN, TEST, drop="both")


@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason="../shared/data/scifact is absent")
def test_scifact_splits_share_abstracts_and_the_disjoint_ones_do_not():
    _, _, train = load_beir(SHARED_DATA / "scifact", "train")
    _, _, test = load_beir(SHARED_DATA / "scifact", "test")
    assert relevant_documents(train) & relevant_documents(test)  # why the option exists
    kept_train, all_test = disjoint_qrels(train, test)
    assert_disjoint(kept_train, all_test)
    assert all_test == test and 0 < len(kept_train) < len(train)
    all_train, kept_test = disjoint_qrels(train, test, drop="test")
    assert_disjoint(all_train, kept_test)
    assert all_train == train and 0 < len(kept_test) < len(test)
    # the figures the benchmarks' reports state (SciFact as BEIR ships it)
    assert (len(kept_train), len(train), len(kept_test), len(test)) == (537, 809, 104, 300)
