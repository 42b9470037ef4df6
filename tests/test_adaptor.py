"""The Matryoshka adaptor on synthetic embeddings: identity at start, exact full-size similarities under the
orthogonal part, the validation gate, save/load, and clear errors for bad input."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mrl_text.adaptor import fit, pca_rotation
from mrl_text.adaptor import fitting as adaptor_lib
from mrl_text.adaptor.metrics import closest_pairs, correlation_gain_bound, similarity_correlation
from mrl_text.models.modeling_matryoshka import truncate_embeddings
from mrl_text.models.modeling_matryoshka_adaptor import (
    MatryoshkaAdaptor,
    MatryoshkaAdaptorConfig,
)

DIMS = [32, 16, 8, 4]
QUICK = dict(epochs=2, supervised_epochs=2, batch_size=64, negatives=16, show_progress_bar=False)
# The objective's own tests fit the MLP alone; "auto" (the default) also tries a PCA rotation (tested on its own).
FAST = {**QUICK, "rotation": None}
# Tests of what the gate adapts hold out 100 of the 400 rows: on 40 closest pairs the order gain's bootstrap bound
# rarely clears zero, so the gate keeps truncation everywhere (as it should on so little evidence).
HELD_OUT = {"validation_fraction": 0.25}


def clustered(n=400, size=32, seed=0):
    """Unit embeddings whose cluster structure lives mostly in the *last* coordinates, so plain truncation is poor
    and a rotation/adaptor has something to gain at small sizes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(8, size)
    centres[:, size // 2 :] = torch.randn(8, size - size // 2, generator=g) * 3
    labels = torch.randint(8, (n,), generator=g)
    return F.normalize(centres[labels] + torch.randn(n, size, generator=g), dim=-1), labels


def test_new_adaptor_is_the_identity():
    x, _ = clustered()
    plain = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(32, DIMS, hidden_size=16, num_layers=2))
    assert torch.equal(plain(x), x)
    rotated = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(32, DIMS, rotation="pca"))
    assert torch.allclose(rotated(x), x, atol=1e-6)  # the rotation starts as the identity matrix too
    assert np.allclose(plain.transform(x.numpy(), dim=8), truncate_embeddings(x.numpy(), 8), atol=1e-6)


def test_orthogonal_part_keeps_every_full_size_similarity():
    x, _ = clustered()
    adaptor = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(32, DIMS, num_layers=0, rotation="pca"))
    adaptor.rotation.copy_(pca_rotation(x))
    out = adaptor.transform(x)
    assert not torch.allclose(out, x, atol=1e-3)  # it did rotate...
    assert torch.allclose(out @ out.T, x @ x.T, atol=1e-5)  # ...and kept every full-size cosine


@pytest.mark.slow
def test_fit_gate_never_worse_than_truncation_on_validation():
    x, _ = clustered()
    adaptor = fit(x, DIMS, **FAST, **HELD_OUT)
    summary = adaptor.config.fit_summary["validation"]
    assert set(summary) == {str(d) for d in DIMS}
    for dim in DIMS:
        scores = summary[str(dim)]
        assert scores["adapted"] == (dim in adaptor.config.adapted_dimensions)
        assert scores["adapted"] == passes_gate(scores)
        if not scores["adapted"]:  # gated off: exactly plain truncation of the original embeddings
            assert torch.allclose(adaptor.transform(x, dim=dim), truncate_embeddings(x, dim), atol=1e-6)
    # The full size can only tie plain truncation on neighbour recall, so it stays the identity...
    assert 32 not in adaptor.config.adapted_dimensions
    # ...while the small sizes, whose structure truncation cuts away, gain.
    assert 4 in adaptor.config.adapted_dimensions
    assert summary["4"]["adaptor"] > summary["4"]["truncation"]


@pytest.mark.slow
def test_gate_refuses_a_size_whose_similarity_order_drops(monkeypatch):
    # Neighbour recall alone let a PCA rotation through that cost STS-B 5.9 points at 16 dims: a size must also keep
    # the order of held-out pairs' similarities. Here every adapted size scrambles that order (as scored), so even the
    # sizes whose recall rises stay plain truncation.
    def scrambled(original, candidate, dim, pairs):
        return 0.9 if torch.equal(candidate, original) else 0.5

    x, _ = clustered()
    assert 4 in fit(x, DIMS, **FAST, **HELD_OUT).config.adapted_dimensions  # recall rises at 4 (the order holds)...
    monkeypatch.setattr(adaptor_lib, "similarity_correlation", scrambled)
    adaptor = fit(x, DIMS, **FAST, **HELD_OUT)
    assert adaptor.config.adapted_dimensions == []  # ...but with the order scrambled no size is adapted
    assert torch.allclose(adaptor.transform(x, dim=4), truncate_embeddings(x, 4), atol=1e-6)


def test_similarity_correlation_sees_a_scrambled_order():
    x, _ = clustered()
    pairs = closest_pairs(x, torch.arange(0, 400, 4), k=3)
    assert similarity_correlation(x, x, 32, pairs) == pytest.approx(1.0)
    shuffled = x[:, torch.randperm(32, generator=torch.Generator().manual_seed(0))]
    assert similarity_correlation(x, shuffled, 32, pairs) == pytest.approx(1.0)  # full size: any order of axes
    assert similarity_correlation(x, x, 4, pairs) < 0.9  # the first 4 axes lose much of the order...
    assert similarity_correlation(x, x @ pca_rotation(x).T, 4, pairs) > similarity_correlation(x, x, 4, pairs)


def test_order_gain_bound_is_below_the_gain_and_sees_a_lost_order():
    x, _ = clustered()
    pairs = closest_pairs(x, torch.arange(0, 400, 2))
    assert correlation_gain_bound(x, x, x, 4, pairs) == 0.0  # the same map: no gain on any resample
    rotated = x @ pca_rotation(x).T  # raises the order at 16 dims on every resample here...
    gain = similarity_correlation(x, rotated, 16, pairs) - similarity_correlation(x, x, 16, pairs)
    assert 0 < correlation_gain_bound(x, rotated, x, 16, pairs) < gain
    assert correlation_gain_bound(x, rotated, x, 16, pairs, quantile=0.5) == pytest.approx(gain, abs=0.05)
    unrelated = F.normalize(torch.randn(400, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert correlation_gain_bound(x, unrelated, x, 16, pairs) < 0  # ...a map that loses the order is caught


def test_gate_needs_the_order_gain_to_hold_on_resamples():
    # PCA at 16 dims on one split of 8,000 sentences: recall +25 points, order +1.5 on the sample but not on 95% of its
    # resamples; it cost STS-B 7 points on other sentences. The MLP's smaller gains hold.
    noisy = {"recall": (0.45, 0.20), "correlation": (0.757, 0.742, -0.022)}
    steady = {"recall": (0.26, 0.20), "correlation": (0.812, 0.742, 0.045)}
    assert not adaptor_lib.beats_truncation(noisy) and adaptor_lib.gated_gain(noisy) == 0.0
    assert adaptor_lib.beats_truncation(steady)
    assert adaptor_lib.gated_gain(steady) == pytest.approx(0.06 + 0.07)  # the bound gates; it is not a gain
    assert adaptor_lib.beats_truncation({"recall": (0.45, 0.20), "correlation": (0.757, 0.742)})  # no bound given
    fits = with_mean_gains({"pca": {"scores": {16: noisy}}, "mlp": {"scores": {16: steady}}})
    assert adaptor_lib.choose_per_size(fits) == {16: "mlp"}
    assert adaptor_lib.validation_row(noisy)["correlation_gain_lower_bound"] == -0.022


def low_rank(n=400, size=32, rank=4, seed=0):
    """Unit embeddings spanned by `rank` directions of the last coordinates (plus faint noise): a rotation to the
    principal axes puts everything, fine order included, into the first few coordinates."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.zeros(rank, size)
    basis[:, size // 2 :] = torch.randn(rank, size - size // 2, generator=g)
    return F.normalize(torch.randn(n, rank, generator=g) @ basis + 0.02 * torch.randn(n, size, generator=g), dim=-1)


def passes_gate(row):
    return (row["adaptor"] > row["truncation"] and row["correlation_adaptor"] >= row["correlation_truncation"]
            and row["correlation_gain_lower_bound"] >= 0)


def scores(**by_candidate):
    """`fits` as `fit_candidates` returns them, from `{candidate: {dim: (recall gain, correlation gain)}}` over a
    truncation baseline of recall 0.2 and correlation 0.7 (only the scores matter to the choice)."""
    fits = {name: {"scores": {dim: {"recall": (0.2 + r, 0.2), "correlation": (0.7 + c, 0.7)}
                              for dim, (r, c) in gains.items()}}
            for name, gains in by_candidate.items()}
    return with_mean_gains(fits)


def with_mean_gains(fits):
    for fit_ in fits.values():
        fit_["mean_gain"] = float(np.mean([adaptor_lib.gated_gain(m) for m in fit_["scores"].values()]))
    return fits


def test_choice_keeps_the_gate_and_truncation():
    fits = scores(pca={16: (0.30, -0.001), 8: (0.0, 0.05), 4: (0.1, 0.1)},
                  mlp={16: (0.01, 0.01), 8: (-0.01, 0.02), 4: (0.1, -0.01)})
    # 16: PCA loses order (fails the gate) however large its recall gain; 8: neither raises recall; 4: PCA only.
    assert adaptor_lib.choose_per_size(fits) == {16: "mlp", 4: "pca"}
    # Without the gate every size goes to the largest summed gain, passing or not.
    assert adaptor_lib.choose_per_size(fits, gate=False) == {16: "pca", 8: "pca", 4: "pca"}


def test_choice_ranks_by_summed_gains_ties_go_to_the_best_candidate_overall():
    # The recall gain counts as much as the order gain: on the fit corpus's own tasks (a Banking77 probe, SciFact
    # claims) the PCA rotation's large recall gain is what pays, though its order gain is the smaller one.
    fits = scores(pca={16: (0.30, 0.01), 8: (0.20, 0.02)}, mlp={16: (0.05, 0.04), 8: (0.03, 0.01)})
    assert adaptor_lib.choose_per_size(fits) == {16: "pca", 8: "pca"}
    fits = scores(learned={16: (0.1, 0.050), 8: (0.1, 0.060)}, mlp={16: (0.1, 0.051), 8: (0.1, 0.010)})
    assert adaptor_lib.choose_per_size(fits) == {16: "learned", 8: "learned"}  # 0.001 apart at 16: a tie
    assert adaptor_lib.choose_per_size(fits, tolerance=0.0) == {16: "mlp", 8: "learned"}
    supervised = {name: {"scores": {16: {"ndcg": (0.3 + gain, 0.3)}}} for name, gain in (("pca", 0.02), ("mlp", 0.05))}
    assert adaptor_lib.choose_per_size(with_mean_gains(supervised)) == {16: "mlp"}


@pytest.mark.slow
def test_auto_keeps_per_size_the_candidate_that_validates_best():
    x, _ = clustered()
    adaptor = fit(x, DIMS, **QUICK, **HELD_OUT)  # rotation="auto" is the default
    summary = adaptor.config.fit_summary
    candidates = summary["candidates"]
    assert set(candidates) == {"mlp", "pca", "learned"}
    for dim in DIMS:
        rows = {name: c["validation"][str(dim)] for name, c in candidates.items()}
        gains = {name: r["adaptor"] - r["truncation"] + r["correlation_adaptor"] - r["correlation_truncation"]
                 for name, r in rows.items() if passes_gate(r)}
        kept = summary["validation"][str(dim)]["candidate"]
        assert (kept is None) == (not gains) and (not gains or gains[kept] >= max(gains.values()) - 0.002)
        assert (dim in adaptor.config.adapted_dimensions) == bool(gains)
    # Here the PCA rotation wins at 16, the learned one at 8 and the MLP at 4: one adaptor holds the three maps...
    assert adaptor.config.chosen == {"16": "pca", "8": "learned", "4": "mlp"}
    # ...and each size returns exactly what that candidate fit alone (same split, same seed) returns there.
    alone = {name: fit(x, DIMS, rotation=name, num_layers=0, **QUICK, **HELD_OUT) for name in ("pca", "learned")}
    alone["mlp"] = fit(x, DIMS, **FAST, **HELD_OUT)
    for dim, name in adaptor.config.chosen.items():
        assert torch.allclose(adaptor.transform(x, dim=int(dim)), alone[name].transform(x, dim=int(dim)), atol=1e-6)
    assert torch.allclose(adaptor.transform(x, dim=32), truncate_embeddings(x, 32), atol=1e-6)
    assert FAST["rotation"] is None and alone["mlp"].config.fit_summary["candidates"] is None  # one candidate


@pytest.mark.slow
def test_one_winning_candidate_saves_a_single_map():
    x = low_rank()  # the structure lives in a few of the last axes: a rotation wins every small size
    adaptor = fit(x, DIMS, rotation="auto", **QUICK)
    assert adaptor.config.candidates is None and adaptor.config.rotation in ("pca", "learned")
    assert adaptor.config.num_layers == 0 and adaptor.mlp is None  # a rotation candidate is the rotation alone
    assert adaptor.config.adapted_dimensions == [16, 8, 4]


def test_per_size_config_is_checked_and_old_configs_load(tmp_path):
    legacy = {"embedding_size": 32, "matryoshka_dimensions": DIMS, "hidden_size": 16, "num_layers": 1,
              "rotation": None, "adapted_dimensions": [16], "fit_summary": {}, "model_type": "matryoshka_adaptor"}
    config = MatryoshkaAdaptorConfig.from_dict(legacy)  # written before the per-size choice existed
    assert config.candidates is None and MatryoshkaAdaptor(config).map_at(16).mlp is not None
    spec = {"rotation": "pca", "hidden_size": 16, "num_layers": 0}
    with pytest.raises(ValueError, match=r"adapted_dimensions are \[16, 4\]"):
        MatryoshkaAdaptorConfig(32, DIMS, adapted_dimensions=[16, 4], candidates={"pca": spec}, chosen={"16": "pca"})
    with pytest.raises(ValueError, match="'mlp'"):
        MatryoshkaAdaptorConfig(32, DIMS, adapted_dimensions=[16], candidates={"pca": spec}, chosen={"16": "mlp"})
    with pytest.raises(ValueError, match="needs `candidates`"):
        MatryoshkaAdaptorConfig(32, DIMS, chosen={"16": "pca"})
    adaptor = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(32, DIMS, adapted_dimensions=[8], candidates={"pca": spec},
                                                        chosen={8: "pca"}))
    adaptor.save_pretrained(tmp_path)
    loaded = MatryoshkaAdaptor.from_pretrained(tmp_path)
    assert loaded.config.chosen == {"8": "pca"} and loaded.map_at(8) is loaded.candidates["pca"]
    assert loaded.map_at(16) is None  # not adapted: plain truncation
    with pytest.raises(ValueError, match="per size"):
        loaded.adapt(torch.zeros(2, 32))


@pytest.mark.slow
def test_listwise_term_alone_teaches_the_small_sizes():
    x, _ = clustered()
    adaptor = fit(x, DIMS, pair_weight=0.0, topk_weight=0.0, listwise_weight=1.0, **FAST, **HELD_OUT)
    summary = adaptor.config.fit_summary["validation"]
    assert 4 in adaptor.config.adapted_dimensions and summary["4"]["adaptor"] > summary["4"]["truncation"]
    untrained = fit(x, DIMS, pair_weight=0.0, topk_weight=0.0, listwise_weight=0.0, **FAST)
    assert untrained.config.adapted_dimensions == []  # reconstruction alone keeps the identity: nothing to gain


@pytest.mark.slow
def test_gate_off_adapts_every_size():
    x, _ = clustered()
    adaptor = fit(x, DIMS, gate=False, **FAST)
    assert adaptor.config.adapted_dimensions == DIMS


@pytest.mark.slow
def test_supervised_fit_from_qrels_then_from_arrays(tmp_path):
    x, labels = clustered(n=300)
    queries = F.normalize(x[:60] + 0.3 * torch.randn(60, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(60)}
    adaptor = fit(x, DIMS, qrels, query_embeddings=queries, query_ids=list(qrels),
                  corpus_ids=[f"d{i}" for i in range(300)], **FAST)
    assert adaptor.config.fit_summary["objective"] == "both"
    assert adaptor.config.fit_summary["validation_metric"].startswith("nDCG@10")
    again = fit(x, pairs=(queries.numpy(), x[:60].numpy()), objective="supervised", adaptor=adaptor, **FAST)
    assert again is adaptor


@pytest.mark.slow
def test_save_load_round_trip(tmp_path):
    x, _ = clustered()
    adaptor = fit(x, DIMS, rotation="learned", **QUICK)
    adaptor.save_pretrained(tmp_path / "adaptor")
    assert (tmp_path / "adaptor" / "model.safetensors").is_file()
    card = (tmp_path / "adaptor" / "README.md").read_text()
    assert "| 4 |" in card and "recall@10" in card  # validation figures at every size, and what they measure
    loaded = MatryoshkaAdaptor.from_pretrained(tmp_path / "adaptor")
    assert loaded.config == adaptor.config
    for dim in [None, *DIMS]:
        assert np.array_equal(loaded.transform(x.numpy(), dim=dim), adaptor.transform(x.numpy(), dim=dim))
    rotation = loaded.rotation
    assert torch.allclose(rotation @ rotation.T, torch.eye(32), atol=1e-5)  # a learned rotation stays orthogonal


def test_bad_input_names_the_value():
    x, _ = clustered()
    adaptor = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(32, DIMS))
    with pytest.raises(ValueError, match="size 64"):
        fit(torch.randn(100, 64), adaptor=adaptor, **FAST)
    with pytest.raises(ValueError, match="size 32"):
        adaptor.transform(torch.randn(3, 64))
    broken = x.clone()
    broken[7, 3] = float("nan")
    with pytest.raises(ValueError, match=r"corpus_embeddings .*NaN.*rows \[7\]"):
        fit(broken, DIMS, **FAST)
    with pytest.raises(ValueError, match=r"NaN.*\[7\]"):
        adaptor.transform(broken)
    with pytest.raises(ValueError, match="empty"):
        fit(np.zeros((0, 32), dtype=np.float32), DIMS, **FAST)
    with pytest.raises(ValueError, match="dim=12"):
        adaptor.transform(x, dim=12)
    with pytest.raises(ValueError, match="'nope'"):
        fit(x, DIMS, [("q0", "nope")], query_embeddings=x[:2], query_ids=["q0", "q1"],
            corpus_ids=[str(i) for i in range(len(x))], **FAST)
    with pytest.raises(ValueError, match="epoch"):
        fit(x, DIMS, epoch=3)


@pytest.mark.slow
def test_failed_fit_leaves_the_adaptor_as_it_was(monkeypatch):
    x, _ = clustered()
    adaptor = fit(x, DIMS, **FAST)
    before = {k: v.clone() for k, v in adaptor.state_dict().items()}
    config_before = adaptor.config.to_dict()

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    # Fails in the supervised stage, after the unsupervised stage has already changed the working copy.
    monkeypatch.setattr(adaptor_lib.MatryoshkaLoss, "forward", explode)
    with pytest.raises(RuntimeError, match="boom"):
        fit(x, pairs=(x[:50], x[50:100]), adaptor=adaptor, objective="both", **FAST)
    assert all(torch.equal(before[k], v) for k, v in adaptor.state_dict().items())
    assert adaptor.config.to_dict() == config_before


def test_fitting_bar_total_counts_the_epochs_that_run(monkeypatch):
    """"auto" fits the MLP (epochs run) and the PCA rotation alone (nothing to train): the bar ends full."""
    from tqdm import auto as tqdm_auto

    bars = []

    class Recording(tqdm_auto.tqdm):
        def close(self):
            bars.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm_auto, "tqdm", Recording)
    x, _ = clustered()
    fit(x, DIMS, rotation="auto", **{**QUICK, "show_progress_bar": True})
    assert bars and all(n == total for n, total in bars), bars


def test_adapt_table_names_and_prints_both_gate_metrics():
    """An unsupervised fit's gate reads recall and the similarity correlation: `mrl-text adapt` prints both."""
    from mrl_text.cli import adapt_table

    x, _ = clustered()
    summary = fit(x, DIMS, **FAST).config.fit_summary
    printed = adapt_table(summary)
    assert "recall@10 trunc." in printed and "correlation adaptor" in printed
    assert summary["validation_metric"] in printed
    for dim in DIMS:
        row = next(line.split() for line in printed.splitlines() if line.split()[:1] == [str(dim)])
        scores = summary["validation"][str(dim)]
        numbers = [scores[k] for k in ("truncation", "adaptor", "correlation_truncation", "correlation_adaptor")]
        assert [float(v) for v in row[1:5]] == pytest.approx(numbers, abs=1e-4)
        assert row[5:] == ([scores["candidate"], "adaptor"] if scores["adapted"] else ["plain", "truncation"])
    assert printed.splitlines()[1].split()[-1] == "kept"  # the column naming the candidate map kept per size


def test_transfer_benchmark_rebuilds_its_committed_targets_and_page():
    """benchmarks/adaptor_transfer.py's targets and results page, recomputed from its committed JSON."""
    import json
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        import adaptor_transfer
    finally:
        sys.path.remove(str(benchmarks))
    stem = benchmarks / "results" / "adaptor_transfer"
    report = json.loads(stem.with_suffix(".json").read_text())
    for result in report["results"]:
        assert adaptor_transfer.targets(result) == result["targets"]
        assert not any(task.startswith(adaptor_transfer.IN_DOMAIN) for task in result["targets"])  # held-out only
    page = "\n".join(adaptor_transfer.markdown(report)).rstrip("\n") + "\n"  # as _report.write_results writes it
    assert page == stem.with_suffix(".md").read_text()
    # The seeds' summary: its rows and page, rebuilt from the per-seed reports it names (the default now and before).
    results = stem.parent
    summary = json.loads((results / "adaptor_transfer_seeds.json").read_text())
    now = [json.loads((results / f"adaptor_transfer{s}.json").read_text()) for s in ("", "_seed1", "_seed2")]
    before = [json.loads((results / f"adaptor_transfer_before{s}.json").read_text()) for s in ("", "_seed1", "_seed2")]
    assert adaptor_transfer.summary(now, before) == summary["rows"]
    page = "\n".join(adaptor_transfer.summary_markdown(summary)).rstrip("\n") + "\n"
    assert page == (results / "adaptor_transfer_seeds.md").read_text()


def test_supervised_validation_holds_out_answers_not_only_queries():
    """Queries 0-39 all point at document 0, queries 40-59 each at their own: whichever of them are held out, no
    training pair may point at a held-out query's document (the gate would judge answers the fit was taught)."""
    corpus = F.normalize(torch.randn(200, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    queries = F.normalize(torch.randn(60, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    relevant = [[0]] * 40 + [[i] for i in range(40, 60)]
    data = adaptor_lib._Data(corpus, 0.2, torch.Generator().manual_seed(2), pairs=(queries, relevant, None))
    held_out_answers = {d for q in data.val_queries for d in relevant[q]}
    trained = {q for q, _ in data.train_pairs}
    assert trained and not trained & set(data.val_queries)
    assert not {d for _, d in data.train_pairs} & held_out_answers
    kept = [q for q in range(60) if q not in data.val_queries and not set(relevant[q]) & held_out_answers]
    assert sorted(trained) == kept  # only the sharing queries are dropped

    with pytest.raises(ValueError, match="validation_fraction"):  # every query shares the one answer
        adaptor_lib._Data(corpus, 0.2, torch.Generator().manual_seed(2), pairs=(queries, [[0]] * 60, None))
