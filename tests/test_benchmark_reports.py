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
