"""The (layers, dims, precision) grid: one encoding pass per layer count, cells that agree with the plain evaluators
and the quantization module, results that keep the grid, the best cell per budget."""

import collections

import pytest
import torch

from mrl_text.evaluation import (
    ClassificationEvaluator,
    Results,
    RetrievalEvaluator,
    STSEvaluator,
    evaluate,
    evaluate_grid,
)
from mrl_text.models.quantization import quantize

# A metric computed twice from float32 embeddings encoded in different batches (see the first use below).
FLOAT32_METRIC = 1e-5
WORDS = "man woman dog cat guitar piano bread park music song car bike rain sun bank card money house".split()


def sentence(i):
    """Distinct for i < 324 (its first two words spell i in base 18): no ties between documents."""
    return f"{WORDS[i % 18]} {WORDS[(i // 18) % 18]} {WORDS[(i * 7) % 18]}"


@pytest.fixture
def tasks():
    sts = STSEvaluator([sentence(i) for i in range(12)], [sentence(i + 5) for i in range(12)],
                       [float(i % 5) for i in range(12)], name="sts")
    corpus = {f"d{i}": sentence(i + 20) for i in range(30)}
    queries = {f"q{i}": sentence(i + 21) for i in range(6)}
    retrieval = RetrievalEvaluator(corpus, queries, {f"q{i}": {f"d{i + 1}": 1} for i in range(6)}, name="retrieval",
                                   chunk_size=7, device="cpu")
    classification = ClassificationEvaluator([sentence(i) for i in range(20)], [i % 2 for i in range(20)],
                                             [sentence(i + 40) for i in range(8)], [i % 2 for i in range(8)],
                                             name="classification")
    return [sts, retrieval, classification]


def counting(model):
    """Record, per layer count, every text `model.encode` is asked for (the depth option comes from `layers=`)."""
    seen = collections.defaultdict(list)
    original = model.encode

    def encode(texts, layers=None, **kwargs):
        seen[layers].extend(texts)
        return original(texts, **kwargs)

    model.encode = encode
    return seen


@pytest.mark.slow
def test_one_encoding_pass_per_layer_count(make_model, tasks):
    model = make_model(matryoshka_dimensions=(32, 16, 8))
    seen = counting(model)
    results = evaluate_grid(model, tasks, layers=[None, 1], batch_size=1000)
    distinct = {text for task in tasks for group in (
        [task.sentences1, task.sentences2] if isinstance(task, STSEvaluator) else
        [task.query_texts, task.doc_texts] if isinstance(task, RetrievalEvaluator) else
        [task.train_texts, task.test_texts]) for text in group}
    # every distinct text of every task encoded exactly once per layer count (batch_size covers all: one call each)
    assert set(seen) == {None, 1}
    for texts in seen.values():
        assert sorted(texts) == sorted(distinct)
    cells = {(c["layers"], c["precision"]) for c in results.grid}
    assert {(None, "float32"), (1, "int8"), (1, "binary"), (None, "binary+rescore")} <= cells
    assert len(results.cells("sts")) == 2 * 3 * 3  # layers x precisions x sizes


@pytest.mark.slow
def test_float_cells_equal_the_plain_evaluators_and_rows_stay_the_same(make_model, tasks):
    model = make_model(matryoshka_dimensions=(32, 16, 8))
    grid = evaluate_grid(model, tasks, rescore=None)
    plain = evaluate(model, tasks)
    assert len(grid.rows) == len(plain.rows)
    for row in plain.rows:
        # The grid and `evaluate` encode in different batches, so BLAS sums in a different order (and differently
        # for 1 and 2 threads): float32 cosines differ by ~1e-7 and a correlation by up to a few 1e-6 (1.07e-6 seen
        # with OMP_NUM_THREADS=1). 1e-5 still tells the same computation from any other (another size, precision
        # or depth moves these values by more than 1e-3).
        assert grid.value(row["task"], row["metric"], row["dim"]) == pytest.approx(row["value"], abs=FLOAT32_METRIC)
    assert not any(c["precision"].endswith("+rescore") for c in grid.grid)


@pytest.mark.slow
def test_quantized_cells_use_the_models_calibrated_ranges(make_model, tasks):
    from mrl_text import metrics

    model = make_model(matryoshka_dimensions=(32, 16, 8))
    model.calibrate_quantization([sentence(i) for i in range(60, 90)])
    sts = tasks[0]
    results = evaluate_grid(model, [sts], precisions=["int8"], dims=[16])
    ranges = torch.tensor(model.config.quantization_ranges["16"])
    codes = [quantize(model.encode(s, dim=16), "int8", ranges) for s in (sts.sentences1, sts.sentences2)]
    from mrl_text.models.quantization import dequantize

    a, b = (torch.nn.functional.normalize(dequantize(c, "int8", ranges), dim=-1) for c in codes)
    expected = metrics.spearman((a * b).sum(-1).tolist(), sts.scores)
    got = [c["value"] for c in results.cells("sts") if c["precision"] == "int8"]
    assert got == [pytest.approx(expected, abs=FLOAT32_METRIC)]


@pytest.mark.slow
def test_quantized_cells_at_a_depth_use_that_depths_ranges(make_model, tasks):
    from mrl_text import metrics
    from mrl_text.models.quantization import dequantize

    model = make_model(matryoshka_dimensions=(32, 16, 8), matryoshka_layers=[2, 1])
    measured = model.calibrate_quantization([sentence(i) for i in range(60, 90)])
    sts = tasks[0]
    results = evaluate_grid(model, [sts], precisions=["int8"], dims=[16], layers=[None, 1])
    for layers, ranges in ((None, measured[16]), (1, measured[1, 16])):
        codes = [
            quantize(model.encode(s, dim=16, layers=layers), "int8", ranges) for s in (sts.sentences1, sts.sentences2)
        ]
        a, b = (torch.nn.functional.normalize(dequantize(c, "int8", ranges), dim=-1) for c in codes)
        expected = metrics.spearman((a * b).sum(-1).tolist(), sts.scores)
        got = [c["value"] for c in results.cells("sts") if c["layers"] == layers]
        assert got == [pytest.approx(expected, abs=FLOAT32_METRIC)], layers


@pytest.mark.slow
def test_rescoring_everything_gives_the_float_ranking(make_model, tasks):
    model = make_model(matryoshka_dimensions=(32, 16, 8))
    results = evaluate_grid(model, [tasks[1]], precisions=["float32", "binary"], rescore=30)  # the whole corpus
    for metric in ("ndcg@10", "mrr@10"):
        by = {(c["dim"], c["precision"]): c["value"] for c in results.cells("retrieval", metric)}
        for dim in (32, 16, 8):
            assert by[dim, "binary+rescore"] == pytest.approx(by[dim, "float32"])


@pytest.mark.slow
def test_grid_results_round_trip_and_front(make_model, tasks, tmp_path):
    results = evaluate_grid(make_model(matryoshka_dimensions=(32, 16, 8)), tasks[:1])
    results.to_json(tmp_path / "results.json")
    again = Results.from_json(tmp_path / "results.json")
    assert again.grid == results.grid and again.rows == results.rows
    front = again.pareto_front("sts")
    assert [c["bytes"] for c in front] == sorted(c["bytes"] for c in front)
    assert all(b["value"] > a["value"] for a, b in zip(front, front[1:]))
    best = max(again.cells("sts"), key=lambda c: c["value"])
    assert front[-1]["value"] == best["value"]
    assert {c["bytes"] for c in again.cells("sts")} >= {128, 32, 4, 1}  # float32 32-d ... binary 8-d
    markdown = again.to_markdown()
    assert "Best per budget" in markdown and "| int8 |" in markdown
    assert again.plot_budget(tmp_path / "budget.png")[:4] == b"\x89PNG"
    # results without a grid still read, and their rows serve as full-depth float32 cells
    old = Results([{"model": "m", "task": "sts", "metric": "spearman", "dim": 8, "value": 0.5}])
    assert old.cells("sts") == [{"layers": None, "dim": 8, "precision": "float32", "value": 0.5, "bytes": 32,
                                 "seconds_per_text": None}]
    assert Results.concat([old, results]).grid == results.grid


def test_grid_bad_input(make_model, tasks):
    model = make_model(matryoshka_dimensions=(32, 16, 8, 4))
    with pytest.raises(ValueError, match=r"sizes \[4\] are not multiples of 8"):
        evaluate_grid(model, tasks[:1])
    with pytest.raises(ValueError, match="precision='int3'"):
        evaluate_grid(model, tasks[:1], precisions=["int3"], dims=[32])
    with pytest.raises(ValueError, match="layers=0"):
        evaluate_grid(model, tasks[:1], dims=[32], layers=[0])
    seen = counting(model)
    with pytest.raises(ValueError, match="layers=3 is out of range"):
        evaluate_grid(model, tasks[:1], dims=[32], layers=[None, 3])
    with pytest.raises(ValueError, match="rescore=0"):
        evaluate_grid(model, tasks[:1], dims=[32], rescore=0)
    assert not seen  # bad input fails before anything is encoded
    evaluate_grid(model, tasks[:1], dims=[32], layers=[None, 2])  # the full depth, however named, is one pass
    assert list(seen) == [None]


@pytest.mark.slow
def test_card_plots_quality_against_bytes(make_model, tasks, tmp_path):
    from mrl_text.cards.card import BUDGET_PLOT_FILENAME, save_with_card

    model = make_model(matryoshka_dimensions=(32, 16, 8))
    results = evaluate_grid(model, tasks[:1], precisions=["float32", "binary"])
    save_with_card(model, tmp_path / "model", results, results_model=results.models[0])
    card = (tmp_path / "model" / "README.md").read_text()
    assert (tmp_path / "model" / BUDGET_PLOT_FILENAME).read_bytes()[:4] == b"\x89PNG"
    assert f"]({BUDGET_PLOT_FILENAME})" in card and "Best per budget" in card


def png_height(png):
    return int.from_bytes(png[20:24], "big")  # the IHDR chunk: width at 16..20, height at 20..24


@pytest.mark.slow
def test_encode_time_per_layer_count_and_its_budget(make_model, tasks, tmp_path):
    model = make_model(matryoshka_dimensions=(32, 16, 8), matryoshka_layers=[2, 1])
    results = evaluate_grid(model, tasks[:2], precisions=["float32", "binary"], layers=[None, 1], rescore=None)
    times = {}
    for cell in results.grid:
        assert cell["seconds_per_text"] > 0
        times.setdefault(cell["layers"], set()).add(cell["seconds_per_text"])
    assert sorted(times, key=str) == [1, None] and all(len(t) == 1 for t in times.values())  # one pass per count
    assert not any("seconds_per_text" in row for row in results.rows)  # rows are as they were
    results.to_json(tmp_path / "results.json")
    again = Results.from_json(tmp_path / "results.json")
    assert again.grid == results.grid
    front = again.pareto_front("sts", cost="seconds_per_text")
    assert [c["seconds_per_text"] for c in front] == sorted(c["seconds_per_text"] for c in front)
    assert all(b["value"] > a["value"] for a, b in zip(front, front[1:]))
    assert front[-1]["value"] == max(c["value"] for c in again.cells("sts"))
    with pytest.raises(ValueError, match="cost='ms'"):
        again.pareto_front("sts", cost="ms")
    markdown = again.grid_markdown()
    assert "| ms / text |" in markdown and "Best per encode-time budget" in markdown
    # a second row of panels (quality against encode time) only when times of several layer counts exist
    untimed = Results(grid=[{k: v for k, v in c.items() if k != "seconds_per_text"} for c in results.grid])
    assert "ms / text" not in untimed.grid_markdown()
    assert untimed.pareto_front("sts", cost="seconds_per_text") == []
    assert png_height(again.plot_budget()) > 1.5 * png_height(untimed.plot_budget())


@pytest.mark.slow
def test_depth_cells_of_a_model_with_an_adaptor_are_its_encode_at_that_depth(make_model, tasks):
    from mrl_text import metrics
    from mrl_text.models.modeling_matryoshka_adaptor import MatryoshkaAdaptor, MatryoshkaAdaptorConfig

    model = make_model(matryoshka_dimensions=(32, 16, 8), matryoshka_layers=[2, 1])
    torch.manual_seed(0)
    adaptor = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(32, [32, 16, 8], hidden_size=16, adapted_dimensions=[16]))
    torch.nn.init.normal_(adaptor.mlp[-1].weight, std=0.5)
    model.set_adaptor(adaptor.eval())
    sts = tasks[0]
    results = evaluate_grid(model, [sts], precisions=["float32"], dims=[16], layers=[1])
    a, b = (model.encode(s, dim=16, layers=1) for s in (sts.sentences1, sts.sentences2))
    expected = metrics.spearman((a * b).sum(-1).tolist(), sts.scores)
    assert [c["value"] for c in results.cells("sts")] == [pytest.approx(expected, abs=FLOAT32_METRIC)]
