"""The benchmarks' shared report writer (benchmarks/_report.py) and the front-page figure drawn from results files."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import load_module

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return load_module(BENCHMARKS / f"{name}.py")


@pytest.fixture(scope="module")
def report_module():
    return load("_report")


def test_write_results_writes_the_pair_in_one_format(report_module, tmp_path):
    stem = tmp_path / "results" / "speed"
    markdown = report_module.write_results(stem, {"ratio": np.float32(1.5), "sizes": np.arange(2)}, ["# T", "", "x"])
    assert markdown == "# T\n\nx\n"
    assert (tmp_path / "results" / "speed.md").read_text() == "# T\n\nx\n"
    text = (tmp_path / "results" / "speed.json").read_text()
    assert text == json.dumps({"ratio": 1.5, "sizes": [0, 1]}, indent=2) + "\n"
    # a suffix given by mistake names the same pair
    assert report_module.results_paths(tmp_path / "speed.json") == (tmp_path / "speed.json", tmp_path / "speed.md")


def test_write_results_keeps_the_old_pair_when_the_report_cannot_be_written(report_module, tmp_path):
    stem = tmp_path / "speed"
    report_module.write_results(stem, {"ratio": 1.0}, ["old"])
    with pytest.raises(TypeError, match="not JSON serializable"):
        report_module.write_results(stem, {"ratio": object()}, ["new"])
    assert json.loads((tmp_path / "speed.json").read_text()) == {"ratio": 1.0}
    assert (tmp_path / "speed.md").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speed.json", "speed.md"]  # no temp file left behind


def scifact_means(runs, method):
    """Independently of the script: {size: mean over seeds x100} of `method`'s SciFact scores."""
    picked = [run["values"]["scifact"] for run in runs if run["method"] == method]
    return {int(d): 100 * float(np.mean([values[d] for values in picked])) for d in picked[0]}


def test_front_page_figure_draws_the_results_files_values(tmp_path):
    plot = load("plot_quality_vs_size")
    out = tmp_path / "figure.png"
    figure = plot.main(["--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = BENCHMARKS / "results"
    runs = {name: json.loads((results / f"quality_{name}.json").read_text())["runs"]
            for name in ("classification", "retrieval", "adaptor", "adaptor_split_disjoint")}
    datasets = ("banking77", "trec", "emotion")

    def classification_means(method, table):
        seeds = sorted({run["seed"] for run in runs["classification"] if run["method"] == method})
        cell = {(run["dataset"], run["seed"]): run[table] for run in runs["classification"]
                if run["method"] == method and run["size"] is None}
        sizes = cell[(datasets[0], seeds[0])]
        return {int(d): 100 * float(np.mean([np.mean([cell[(ds, s)][d] for ds in datasets]) for s in seeds]))
                for d in sizes}

    expected = [
        [classification_means("mrl", "head"), classification_means("plain", "probe")],
        [scifact_means(runs["retrieval"], "mrl"), scifact_means(runs["retrieval"], "plain")],
        [scifact_means(runs["adaptor_split_disjoint"], "adaptor_supervised"),
         *(scifact_means(runs["adaptor"], m) for m in ("adaptor", "truncation"))],
    ]
    assert len(figure.axes) == len(expected)
    for axes, wanted in zip(figure.axes, expected):
        lines = axes.get_lines()
        assert len(lines) == len(wanted)
        for line, values in zip(lines, wanted):
            sizes = sorted(values, reverse=True)
            assert list(line.get_xdata()) == sizes
            np.testing.assert_allclose(line.get_ydata(), [values[d] for d in sizes], rtol=0, atol=1e-9)
    # the figures the README's classification table quotes: 92.12 at 8 dims with MRL, 76.98 truncating plain
    assert round(expected[0][0][8], 2) == 92.12 and round(expected[0][1][8], 2) == 76.98
