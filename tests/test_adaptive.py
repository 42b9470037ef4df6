"""Adaptive classification: calibrated cascades over Matryoshka sizes."""

import numpy as np
import pytest
import torch

from mrl_text import AdaptiveClassifier, MatryoshkaConfig, MatryoshkaForSequenceClassification

DIMS = [32, 16, 8, 4]


def nested_classes(n, dim=32, classes=4, seed=0):
    """Class means whose early coordinates separate the classes best (as in an MRL embedding): small prefixes are
    right for most samples, the full size for nearly all."""
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(np.arange(1, dim + 1))
    means = 1.5 * rng.standard_normal((classes, dim)) * scale
    labels = rng.integers(classes, size=n)
    embeddings = means[labels] + rng.standard_normal((n, dim)) * scale
    return embeddings.astype(np.float32), np.asarray(["abcdefgh"[c] for c in labels])


@pytest.fixture(scope="module")
def splits():
    x, y = nested_classes(1200)
    return (x[:500], y[:500]), (x[500:850], y[500:850]), (x[850:], y[850:])


@pytest.fixture(scope="module")
def fitted(splits):
    train, val, _ = splits
    return AdaptiveClassifier.fit(None, train, val, dims=DIMS, tolerance=0.01, max_iter=200)


@pytest.mark.slow
def test_cascade_keeps_accuracy_with_fewer_dimensions(fitted, splits):
    report = fitted.report
    assert report["accuracy"] >= report["full_size_accuracy"] - 0.01
    assert report["expected_dims"] < max(DIMS)  # the point of the cascade
    assert abs(sum(report["exit_fractions"].values()) - 1) < 1e-9
    assert report["per_size_accuracy"][4] < report["per_size_accuracy"][32]
    _, _, (x_test, y_test) = splits
    result = fitted.evaluate(x_test, y_test)
    assert result["accuracy"] >= result["full_size_accuracy"] - 0.05
    labels, used = fitted.predict(x_test, return_dims=True)
    # predict (which runs each size only on what the smaller sizes passed on) agrees with evaluate.
    assert np.mean(labels == y_test) == pytest.approx(result["accuracy"])
    assert used.mean() == pytest.approx(result["expected_dims"])
    assert set(used) <= set(DIMS) and set(labels) <= set("abcd")


def test_stricter_tolerance_never_uses_fewer_dimensions(fitted, splits):
    val = splits[1]
    expected = []
    for tolerance in (0.2, 0.05, 0.02, 0.01, 0.0):
        report = fitted.calibrate(val, tolerance=tolerance).report
        assert report["accuracy"] >= report["target_accuracy"] - 1e-12
        expected.append(report["expected_dims"])
    fitted.calibrate(val, tolerance=0.01)
    assert expected == sorted(expected) and expected[0] < expected[-1]


def test_raising_a_threshold_sends_more_samples_to_larger_sizes(fitted, splits):
    x_val = splits[1][0]
    base = dict(fitted.thresholds)
    used_sizes = []
    for value in (0.0, 0.5, 0.8, 0.95, 1.01):
        fitted.thresholds = {**base, 4: value}
        used_sizes.append(fitted.predict(x_val, return_dims=True)[1].mean())
    fitted.thresholds = base
    assert used_sizes == sorted(used_sizes) and used_sizes[0] == 4 == min(DIMS)


def test_target_accuracy_above_full_size_falls_back_to_full_size(fitted, splits):
    with pytest.warns(UserWarning, match="No thresholds reach the target accuracy"):
        report = fitted.calibrate(splits[1], target_accuracy=1.01).report
    fitted.calibrate(splits[1], tolerance=0.01)
    assert report["expected_dims"] == max(DIMS)


@pytest.mark.slow
def test_fit_from_a_model_encodes_texts(make_model, sentences):
    model = make_model(matryoshka_dimensions=(32, 16, 8))
    texts = sentences * 4
    labels = [i % 2 for i in range(len(texts))]
    clf = AdaptiveClassifier.fit(model, (texts, labels), (texts, labels), max_iter=200)
    assert clf.dims == [8, 16, 32]
    assert len(clf.predict(sentences)) == len(sentences)
    with pytest.raises(ValueError, match=r"\[12\] are not sizes the model was trained with"):
        AdaptiveClassifier.fit(model, (texts, labels), (texts, labels), dims=[12, 32])


@pytest.mark.slow
def test_fit_wraps_the_heads_of_a_sequence_classification_model(tiny_tokenizer, sentences):
    from tests.conftest import tiny_bert_config

    torch.manual_seed(0)
    config = MatryoshkaConfig(encoder=tiny_bert_config(vocab_size=len(tiny_tokenizer)), matryoshka_dimensions=[32, 8],
                              num_labels=2)
    model = MatryoshkaForSequenceClassification(config).eval()
    model.tokenizer = tiny_tokenizer
    labels = [0, 1, 0, 1, 0]
    clf = AdaptiveClassifier.fit(model, None, (sentences, labels), tolerance=0.0)
    inputs = tiny_tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs, dim=32).logits.argmax(-1).numpy()
    assert clf.report["per_size_accuracy"][32] == pytest.approx(np.mean(expected == labels))
    labels_out, used = clf.predict(sentences, return_dims=True)
    np.testing.assert_array_equal(labels_out[used == 32], expected[used == 32])


def test_fit_with_one_class_says_what_and_why_before_encoding(make_model, sentences, monkeypatch):
    model = make_model(matryoshka_dimensions=(32, 16, 8))
    monkeypatch.setattr(model, "encode", lambda *a, **k: pytest.fail("encoded before refusing one class"))
    with pytest.raises(ValueError, match=r"train has one class only \('spam' in all 5 labels\).*at least two"):
        AdaptiveClassifier.fit(model, (sentences, ["spam"] * 5), (sentences, ["spam"] * 5))


@pytest.mark.slow
def test_clear_errors(splits):
    train, val, _ = splits
    with pytest.raises(ValueError, match="Pass dims"):
        AdaptiveClassifier.fit(None, train, val)
    with pytest.raises(ValueError, match="one label per input"):
        AdaptiveClassifier.fit(None, (train[0], train[1][:10]), val, dims=DIMS)
    with pytest.raises(ValueError, match="columns"):
        AdaptiveClassifier.fit(None, {"sentence": ["x"], "label": [0]}, val, dims=DIMS)
    with pytest.raises(ValueError, match="smaller than the largest size 32"):
        AdaptiveClassifier.fit(None, train, (val[0][:, :16], val[1]), dims=DIMS)
    with pytest.raises(ValueError, match="tolerance"):
        AdaptiveClassifier.fit(None, train, val, dims=DIMS, tolerance=5, max_iter=50)


@pytest.mark.slow
def test_fit_reports_progress_per_size_and_the_bar_can_be_turned_off(make_model, sentences, capsys):
    model = make_model(matryoshka_dimensions=(32, 16, 8))
    texts = sentences * 4
    labels = [i % 2 for i in range(len(texts))]
    AdaptiveClassifier.fit(model, (texts, labels), (texts, labels), max_iter=50, show_progress_bar=True)
    shown = capsys.readouterr().err
    assert "Fitting probes" in shown and "3/3" in shown and "dim=32" in shown  # one step per size, the last is 32
    assert "Encoding" in shown
    AdaptiveClassifier.fit(model, (texts, labels), (texts, labels), max_iter=50, show_progress_bar=False)
    assert capsys.readouterr().err == ""
    # The default draws bars only where someone watches: stderr here is captured, not a terminal.
    AdaptiveClassifier.fit(model, (texts, labels), (texts, labels), max_iter=50)
    assert "Fitting probes" not in capsys.readouterr().err


def test_progress_default_follows_the_terminal_and_the_global_switch(monkeypatch):
    import io

    from transformers.utils import logging

    from mrl_text.progress import progress_enabled

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert progress_enabled(None) is True and progress_enabled(False) is False
    logging.disable_progress_bar()
    try:
        assert progress_enabled(None) is False and progress_enabled(True) is True
    finally:
        logging.enable_progress_bar()
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file or a pipe
    assert progress_enabled(None) is False
