"""The training benchmark's own logic: the shared batch order and the target checks (no training here)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "train_quality.py"


@pytest.fixture(scope="module")
def train_quality():
    spec = importlib.util.spec_from_file_location("train_quality", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batch_order_is_homogeneous_complete_and_seeded(train_quality):
    order = train_quality.batch_order([70, 33], batch_size=8, seed=3, epochs=2)
    # 8 full batches of the first source and 4 of the second per epoch; remainders dropped.
    assert len(order) == 2 * (70 // 8 + 33 // 8)
    for source, rows in order:
        assert len(rows) == 8 and all(0 <= i < (70, 33)[source] for i in rows)
    first_epoch = order[: len(order) // 2]
    for source, size in ((0, 70), (1, 33)):
        seen = [i for s, rows in first_epoch if s == source for i in rows]
        assert len(seen) == len(set(seen)) == (size // 8) * 8  # no row twice within an epoch
    assert {s for s, _ in first_epoch} == {0, 1}
    assert order == train_quality.batch_order([70, 33], batch_size=8, seed=3, epochs=2)
    assert order != train_quality.batch_order([70, 33], batch_size=8, seed=4, epochs=2)


def test_targets_compare_the_three_task_average(train_quality):
    sizes = train_quality.SIZES
    plain = {d: {"avg": 70.0} for d in sizes}
    mrl = {d: {"avg": 71.5 if d <= 64 else 69.8} for d in sizes}
    st = {d: {"avg": 71.0} for d in sizes}
    checks = {name: ok for name, _, ok in train_quality.targets({"plain": plain, "mrl": mrl, "st": st})}
    assert checks["mrl >= plain + 1.0 at 16"] and checks["mrl >= plain + 1.0 at 64"]
    assert checks["mrl >= plain - 0.3 at 384"]
    assert checks["mrl >= st at 32"] and not checks["mrl >= st at 384"]
    mrl[384]["avg"] = 69.6
    checks = {name: ok for name, _, ok in train_quality.targets({"plain": plain, "mrl": mrl})}
    assert not checks["mrl >= plain - 0.3 at 384"] and not any("st" in name for name in checks)


def test_rerun_keeps_the_hand_written_notes(train_quality, tmp_path):
    results = tmp_path / "train_quality.md"
    assert train_quality.kept_notes(results) == ""
    results.write_text("# old figures\n\n" + train_quality.NOTES_MARKER + "\n## Settings tried\n| kd1 | 76.21 |\n")
    notes = train_quality.kept_notes(results)
    assert notes.startswith(train_quality.NOTES_MARKER) and "| kd1 | 76.21 |" in notes and "old figures" not in notes
