"""The quality suite (benchmarks/quality.py and its regime modules quality_*.py): its helpers, and every regime end to
end on a tiny random model and a tiny data folder built here, so a long GPU run cannot fail on a bug."""

import json
import sys
from pathlib import Path

import pytest
import torch

from .conftest import WORDS, build_tokenizer, load_module, tiny_bert_config

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    sys.path.insert(0, str(BENCHMARKS))
    return load_module(BENCHMARKS / f"{name}.py")


@pytest.fixture(scope="module")
def quality():
    return load("quality")


@pytest.fixture(scope="module")
def common():
    return load("_quality_common")


def sentence(rng, n=6):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, data folder): a 32-d random BERT with its tokenizer, and every dataset the suite reads."""
    import random

    from transformers import BertModel

    root = tmp_path_factory.mktemp("quality")
    build_tokenizer(root / "model")  # writes vocab.txt, which from_encoder and sentence-transformers read
    vocab_size = len((root / "model" / "vocab.txt").read_text().split())
    BertModel(tiny_bert_config(vocab_size=vocab_size)).save_pretrained(root / "model")
    rng, data = random.Random(0), root / "data"
    for name, classes in (
        ("banking77", ["card", "bank", "money"]),
        ("trec", ["DESC", "HUM"]),
        ("emotion", ["joy", "sad"]),
    ):
        for split, n in (("train", 90), ("test", 30)):
            write_tsv(
                data / name / f"{split}.tsv",
                ["text", "label"],
                [(sentence(rng), classes[i % len(classes)]) for i in range(n)],
            )
    docs = [{"_id": f"d{i}", "title": sentence(rng, 2), "text": sentence(rng, 12)} for i in range(40)]
    (data / "scifact").mkdir()
    (data / "scifact" / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (data / "scifact" / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": sentence(rng)}) + "\n" for i in range(40))
    )
    for split, queries in (("train", range(30)), ("test", range(30, 40))):
        write_tsv(
            data / "scifact" / "qrels" / f"{split}.tsv",
            ["query-id", "corpus-id", "score"],
            [(f"q{i}", f"d{i}", 1) for i in queries],
        )
    for split in ("dev", "test"):
        premises = [f"{split} {i} " + sentence(rng) for i in range(20)]
        write_tsv(data / "snli" / f"{split}.tsv", ["premise", "hypothesis", "label"],
                  [(p, sentence(rng), label) for p in premises for label in ("entailment", "contradiction")])
    for split in ("train", "test"):
        write_tsv(
            data / "mrpc" / f"{split}.tsv",
            ["sentence1", "sentence2", "label"],
            [(sentence(rng), sentence(rng), i % 2) for i in range(40)],
        )
    write_tsv(
        data / "stsb" / "test.tsv",
        ["sentence1", "sentence2", "score"],
        [(sentence(rng), sentence(rng), i % 5) for i in range(30)],
    )
    return root / "model", data


def run(quality, tiny, tmp_path, regime, *extra, name=None):
    model, data = tiny
    argv = [regime, "--model", str(model), "--data", str(data), "--results", str(tmp_path),
            "--out", str(tmp_path / "out"), "--sizes", "32,16,8", "--batch-size", "8", "--limit-train", "64",
            "--limit-eval", "20", *extra]
    report = quality.main(argv)
    markdown = (tmp_path / f"quality_{name or regime}.md").read_text()
    command = json.loads((tmp_path / f"quality_{name or regime}.json").read_text())["command"]
    assert command.endswith(" ".join(argv[-4:]))
    assert "Machine:" in markdown and "Subsampled: training rows subsampled to 64" in markdown
    return report, markdown


def test_classification_runs_every_method_and_reports_heads_and_probes(quality, tiny, tmp_path):
    report, markdown = run(quality, tiny, tmp_path, "classification", "--datasets", "banking77,trec", "--seeds", "2")
    runs = report["runs"]
    assert len(runs) == 2 * 2 * (3 + 2)  # seeds x datasets x (mrl, mrl_e, plain, FF-16, FF-8)
    mrl = next(r for r in runs if r["method"] == "mrl")
    assert set(mrl["head"]) == set(mrl["probe"]) == {32, 16, 8}
    plain = next(r for r in runs if r["method"] == "plain")
    assert set(plain["head"]) == {32} and set(plain["svd_probe"]) == {32, 16, 8}
    assert {r["size"] for r in runs if r["method"] == "ff"} == {16, 8}
    for row in ("MRL head", "MRL-E head", "FF-d head", "plain SVD + probe (e)"):
        assert f"| {row} |" in markdown
    assert " ± " in markdown  # two seeds: mean and spread
    assert any(name.startswith("MRL head >= FF-d head - 0.5 at 32") for name, _, _ in report["targets"])


def test_adaptive_uses_the_mrl_heads(quality, tiny, tmp_path):
    report, markdown = run(quality, tiny, tmp_path, "adaptive")
    (cascades,) = [r["adaptive"] for r in report["runs"]]
    assert [c["tolerance"] for c in cascades] == list(quality.quality_classification.TOLERANCES)
    assert all(8 <= c["expected_dims"] <= 32 for c in cascades)
    assert "expected dims" in markdown


def test_retrieval_and_finished_train_every_method(quality, tiny, tmp_path):
    report, markdown = run(
        quality, tiny, tmp_path, "retrieval", "--methods", "plain,mrl,mrl_paper,st,ff16", "--epochs", "1"
    )
    values = {r["method"]: r["values"]["scifact"] for r in report["runs"]}
    assert set(values["mrl"]) == set(values["st"]) == {32, 16, 8} and set(values["ff16"]) == {16}
    assert "| ff16 | - | " in markdown
    report, markdown = run(quality, tiny, tmp_path, "finished", "--methods", "plain,mrl,st")
    assert {r["method"] for r in report["runs"]} == {"plain", "mrl", "st"}
    assert "3-task average" in markdown and "stsb (spearman)" in markdown


def test_plain_adaptor_trains_plain_once_and_fits_the_adaptor_on_a_disjoint_split(quality, tiny, tmp_path):
    """A SciFact folder of 450 abstracts (the adaptor holds out a tenth of its corpus) where training query q0 shares
    its relevant abstract with test query q60: the disjoint split drops q0, plain trains once for both rows."""
    import random
    import shutil

    model, data = tiny
    shutil.copytree(data, tmp_path / "data")
    scifact, rng = tmp_path / "data" / "scifact", random.Random(1)
    docs = [{"_id": f"d{i}", "title": "", "text": sentence(rng, 12)} for i in range(450)]
    (scifact / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (scifact / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": sentence(rng)}) + "\n" for i in range(70)))
    header = ["query-id", "corpus-id", "score"]
    write_tsv(scifact / "qrels" / "train.tsv", header, [("q0", "d60", 1)] + [(f"q{i}", f"d{i}", 1) for i in range(60)])
    write_tsv(scifact / "qrels" / "test.tsv", header, [(f"q{i}", f"d{i}", 1) for i in range(60, 70)])
    argv = ["retrieval", "--model", str(model), "--data", str(tmp_path / "data"), "--results", str(tmp_path),
            "--out", str(tmp_path / "out"), "--sizes", "32,16,8", "--batch-size", "8", "--epochs", "1",
            "--methods", "plain,plain_adaptor", "--scifact-split", "disjoint", "--adaptor-epochs", "2"]
    report = quality.main(argv)
    markdown = (tmp_path / "quality_retrieval.md").read_text()
    (plain,), (adapted,) = ([r for r in report["runs"] if r["method"] == m] for m in ("plain", "plain_adaptor"))
    assert plain["from"] == "plain_adaptor" and plain["values"] == adapted["encoder_values"]  # one training
    assert plain["steps"] == 59 // 8  # q0's two pairs dropped: 59 pairs
    assert set(adapted["values"]["scifact"]) == {32, 16, 8} and set(adapted["fit_summary"]["validation"]) == {
        "16", "8"}  # the sizes below the full one
    assert adapted["values"]["scifact"][32] == plain["values"]["scifact"][32]  # the full size stays plain's
    assert "| plain_adaptor |" in markdown and "59 of 60 training queries, 10 of 10 test queries kept" in markdown
    assert "plain + adaptor >= plain at 32" in {name for name, _, _ in report["targets"]}


def test_batch_order_is_homogeneous_complete_and_seeded(quality):
    order = quality.quality_retrieval.batch_order([70, 33], batch_size=8, seed=3, epochs=2)
    assert len(order) == 2 * (70 // 8 + 33 // 8)  # full batches only
    for source, rows in order:
        assert len(rows) == 8 and all(0 <= i < (70, 33)[source] for i in rows)
    first_epoch = order[: len(order) // 2]
    for source, size in ((0, 70), (1, 33)):
        seen = [i for s, rows in first_epoch if s == source for i in rows]
        assert len(seen) == len(set(seen)) == (size // 8) * 8  # no row twice within an epoch
    assert order == quality.quality_retrieval.batch_order([70, 33], batch_size=8, seed=3, epochs=2)
    assert order != quality.quality_retrieval.batch_order([70, 33], batch_size=8, seed=4, epochs=2)


def test_sizes_must_decrease(quality, tiny):
    with pytest.raises(SystemExit, match="must be distinct, positive and decreasing"):
        quality.parse_args(["classification", "--model", str(tiny[0]), "--sizes", "8,16,32"])


def test_pca_baseline_centres_and_orders_axes_by_variance(common):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=generator) * torch.tensor([0.1, 0.1, 3.0, 0.1, 1.0, 0.1]) + 5.0
    rotated = common.pca_baseline(x)(x)
    variances = rotated.var(0)
    assert rotated.shape == (200, 6) and torch.all(variances[:-1] >= variances[1:] - 1e-6)
    assert rotated.mean(0).abs().max() < 1e-5  # centred by the training mean
    unit = torch.nn.functional.normalize(x, dim=-1)
    centred = unit - unit.mean(0)  # an orthogonal map of the centred unit vectors: their inner products are kept
    assert torch.allclose(rotated @ rotated.T, centred @ centred.T, atol=1e-5)


def test_retrieval_validation_compares_variants_on_held_out_queries(quality, tiny, tmp_path):
    options = ("--trainable-layers", "1", "--epochs", "2", "--lr", "1e-2", "--val-corpus", "10", "--seeds", "2")
    report, markdown = run(quality, tiny, tmp_path / "rv", "retrieval-val", *options,
                           "--variants", "none,plain,mrl,mrl_distill,mrl_w4_ramp50", name="retrieval_validation")
    runs = {(r["variant"], r["seed"]): r["values"] for r in report["runs"]}
    assert sorted(runs) == sorted(
        [("none", 0)] + [(v, s) for s in (0, 1) for v in ("plain", "mrl", "mrl_distill", "mrl_w4_ramp50")]
    )
    assert runs["none", 0] != runs["plain", 0]  # training moved the encoder
    assert runs["mrl", 0] != runs["mrl", 1]  # seeds draw their own batch order
    assert all(set(values) == {32, 16, 8} for values in runs.values())
    assert "6 held out" in report["setup"] and "2 seed(s)" in report["setup"]
    assert "Difference from plain" in markdown and " ± " in markdown
    # Runs are kept under --out: a second study naming more variants reuses them exactly and trains only the new one.
    again, _ = run(quality, tiny, tmp_path / "rv", "retrieval-val", *options, "--variants", "plain,mrl_w4_tail25",
                   name="retrieval_validation")
    assert {(r["variant"], r["seed"]): r["values"] for r in again["runs"] if r["variant"] == "plain"} == {
        k: v for k, v in runs.items() if k[0] == "plain"}
    assert len(list((tmp_path / "rv" / "out" / "runs").glob("*.json"))) == 9 + 2
    with pytest.raises(SystemExit, match=r"--variants names \['mrl_x'\]"):
        run(quality, tiny, tmp_path / "bad", "retrieval-val", "--variants", "plain,mrl_x", name="retrieval_validation")


def test_retrieval_variants_are_library_losses_and_size_schedules(quality):
    """The study's variants: MatryoshkaLoss options, and SizeSchedules that give the full size alone first (sched) or
    last (tail) and ramp the others in linearly."""
    from types import SimpleNamespace

    from mrl_text import SizeSchedule
    from mrl_text.losses import MatryoshkaLoss

    study = quality.quality_retrieval_validation
    args = SimpleNamespace(sizes=[32, 16, 8])
    loss, schedule = study.variant_training(args, {"full_weight": 4.0, "ramp_fraction": 0.5})
    assert isinstance(loss, MatryoshkaLoss) and list(loss.matryoshka_weights) == [4.0, 1.0, 1.0]
    assert isinstance(schedule, SizeSchedule) and [schedule.scale_at(s, 8) for s in (0, 2, 5)] == [0.25, 0.75, 1.0]
    _, tail = study.variant_training(args, {"full_only_tail": 0.25})  # the full size alone from step 6 of 8
    assert [tail.scale_at(s, 8) for s in (0, 5, 6, 7)] == [1.0, 1.0, 0.0, 0.0]
    _, sched = study.variant_training(args, {"full_only_fraction": 0.5})
    assert [sched.scale_at(s, 8) for s in (3, 4)] == [0.0, 1.0]
    plain, none = study.variant_training(args, None)
    assert plain.matryoshka_dimensions == [32] and none is None
    loss, schedule = study.variant_training(args, {"n_dims_per_step": 3})
    assert loss.n_dims_per_step == 3 and schedule is None


@pytest.mark.parametrize("sizes, message", [
    ("64,32,8", "starts with 64, but the encoder's embedding size is 32"),  # larger than the encoder
    ("16,8", "starts with 16"),
    ("32,x", "comma-separated integers"),
    ("32,8,0", "distinct, positive and decreasing"),
])
def test_sizes_must_fit_the_encoder(quality, tiny, sizes, message):
    with pytest.raises(SystemExit, match=message):
        quality.parse_args(["classification", "--model", str(tiny[0]), "--sizes", sizes])


@pytest.mark.parametrize("method", ["ff64", "ffx", "ff0", "mlr"])
def test_retrieval_methods_are_checked(quality, tiny, method):
    with pytest.raises(SystemExit, match=f"--methods names '{method}'.*ffN with N in 1..32"):
        quality.parse_args(["retrieval", "--model", str(tiny[0]), "--sizes", "32,16", "--methods", f"plain,{method}"])


def test_retrieval_default_mrl_recipe_and_its_checks(quality, tiny):
    """The default MRL recipe is the one chosen on validation (quality_retrieval_validation_full.md)."""
    args = quality.parse_args(["retrieval", "--model", str(tiny[0]), "--sizes", "32,16", "--methods", "plain,mrl"])
    assert (args.mrl_full_weight, args.smaller_sizes_warmup_fraction, args.full_size_only_fraction) == (4.0, 0.5, 0.0)
    assert quality.common.size_schedule(args).smaller_sizes_warmup_fraction == 0.5  # the SizeSchedule it trains with
    # the paper's recipe, a row next to the default
    paper, method = quality.quality_retrieval.method_recipe(args, "mrl_paper")
    assert method == "mrl" and (paper.mrl_full_weight, paper.smaller_sizes_warmup_fraction) == (1.0, 0.0)
    assert quality.common.size_schedule(paper) is None  # every size from the first step
    assert quality.quality_retrieval.method_recipe(args, "mrl") == (args, "mrl") and args.mrl_full_weight == 4.0
    with pytest.raises(SystemExit, match="--smaller-sizes-warmup-fraction 1.5 must be a share of the steps"):
        quality.parse_args(["retrieval", "--model", str(tiny[0]), "--sizes", "32,16", "--methods", "mrl",
                           "--smaller-sizes-warmup-fraction", "1.5"])


def test_classification_labels_ids_with_gaps_and_unknown_test_labels(quality, tiny, tmp_path):
    data = tmp_path / "data"
    write_tsv(data / "gaps" / "train.tsv", ["text", "label"], [(f"t{i}", (0, 3, 10)[i % 3]) for i in range(30)])
    write_tsv(data / "gaps" / "test.tsv", ["text", "label"], [(f"s{i}", (0, 3, 10)[i % 3]) for i in range(6)])
    args = quality.parse_args(["classification", "--model", str(tiny[0]), "--data", str(data), "--sizes", "32,8"])
    task = quality.quality_classification.load_task(args, "gaps")
    assert task["classes"] == [0, 3, 10] and set(task["train"][1]) == {0, 1, 2}  # renumbered in order
    assert list(task["test"][1][:3]) == [0, 1, 2]
    write_tsv(data / "gaps" / "test.tsv", ["text", "label"], [("s", 0), ("s", 7)])
    with pytest.raises(ValueError, match=r"labels \[7\] never occur in train.tsv"):
        quality.quality_classification.load_task(args, "gaps")


def test_finished_posthoc_rows_fit_on_cached_embeddings(quality, tiny, tmp_path, monkeypatch):
    """Post-hoc rows (truncation, PCA, the adaptor unsupervised and supervised) next to trained rows reused from an
    earlier results file; the frozen model's embeddings are cached, so a second run never loads the model."""
    import random
    import shutil

    model, data = tiny
    big, rng, labels = tmp_path / "data", random.Random(1), ["card", "bank", "money"]
    shutil.copytree(data, big)  # the fits need a few hundred texts per task
    write_tsv(
        big / "stsb" / "train.tsv",
        ["sentence1", "sentence2", "score"],
        [(sentence(rng), sentence(rng), i % 5) for i in range(80)],
    )
    write_tsv(big / "banking77" / "train.tsv", ["text", "label"], [(sentence(rng), labels[i % 3]) for i in range(150)])
    docs = [{"_id": f"d{i}", "title": sentence(rng, 2), "text": sentence(rng, 12)} for i in range(150)]
    (big / "scifact" / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    earlier = tmp_path / "earlier.json"
    plain = {t: {"32": 0.5, "16": 0.4, "8": 0.3} for t in ("stsb", "scifact", "banking77")}
    earlier.write_text(json.dumps({"setup": "trained on the GPU", "machine": "a GPU",
                                   "runs": [{"method": "plain", "seed": 0, "values": plain}]}))
    argv = ["finished", "--model", str(model), "--data", str(big), "--results", str(tmp_path),
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--sizes", "32,16,8",
            "--adaptor-epochs", "2", "--methods", "truncation,pca,adaptor,adaptor_supervised",
            "--reuse-runs", str(earlier)]
    report = quality.main(argv)
    values = {r["method"]: r["values"] for r in report["runs"]}
    assert set(values) == {"plain", "truncation", "pca", "adaptor", "adaptor_supervised"}
    assert values["plain"]["stsb"] == {32: 0.5, 16: 0.4, 8: 0.3}  # reused as they were
    assert set(values["adaptor"]["scifact"]) == set(values["adaptor_supervised"]["scifact"]) == {32, 16, 8}
    assert values["adaptor_supervised"]["stsb"] == {}  # supervised only where there are qrels
    for task in ("stsb", "scifact", "banking77"):  # full size: every map keeps it (PCA is orthogonal, gates hold 32)
        # the rotation's float32 matmul sums in an order that depends on the thread count: ~1e-7 per coordinate
        assert values["pca"][task][32] == pytest.approx(values["truncation"][task][32], abs=1e-5)
    finished = (tmp_path / "quality_finished.md").read_text()
    assert "reused from" in finished and "| plain | 50.00 |" in finished and "| adaptor_supervised |" in finished
    adaptor_md = (tmp_path / "quality_adaptor.md").read_text()
    assert "stsb adaptor >= truncation - 0.2 at 8" in adaptor_md and "Sizes each adaptor fit adapted" in adaptor_md
    embedding_cache = sys.modules["embedding_cache"]

    def no_model(*unused):
        raise AssertionError("the cached embeddings should have been used")

    monkeypatch.setattr(embedding_cache, "load_model", no_model)
    again = quality.main(argv[:-6] + ["--methods", "truncation,adaptor", "--tasks", "stsb", "--adaptor-epochs", "2"])
    truncation = [r["values"]["stsb"] for r in again["runs"] if r["method"] == "truncation"]
    assert truncation == [values["truncation"]["stsb"]]
    assert "scifact" not in (tmp_path / "quality_adaptor.md").read_text()  # one task: only its rows and targets


def test_depth_benchmark_scores_every_task_precision_and_depth_of_every_method(tiny, tmp_path):
    """benchmarks/depth.py end to end: each trained model (ours with and without the depth option, the
    Matryoshka2dLoss peer) gets the whole (task, precision, layers, dims) grid, and the report compares them."""
    model, data = tiny
    depth = load("depth")
    report = depth.main(["--model", str(model), "--data", str(data), "--results", str(tmp_path), "--sizes", "32,16,8",
                         "--layers", "2,1", "--depths", "2,1", "--batch-size", "8", "--limit-train", "32",
                         "--limit-eval", "20", "--skip-throughput", "--skip-base", "--name", "grid"])
    runs = report["quality"]["runs"]
    assert set(runs) == {"depth", "st2d", "mrl"}
    for run in runs.values():
        assert set(run["grid"]) == {"stsb", "scifact", "banking77"}
        assert set(run["grid"]["scifact"]) == {"float32", "int8", "binary", "int8+rescore", "binary+rescore"}
        assert set(run["grid"]["stsb"]) == {"float32", "int8", "binary"}
        assert all(set(layers) == {2, 1} and all(set(dims) == {32, 16, 8} for dims in layers.values())
                   for layers in run["grid"]["banking77"].values())
    markdown = (tmp_path / "grid.md").read_text()
    assert "## SciFact nDCG@10 x100" in markdown and "`depth` - `st2d`" in markdown
    assert "| 1 | binary+rescore |" in markdown  # precision costs at the shallow depth too
    targets = [name for name, _, _ in report["targets"]]
    assert any(name.startswith("Banking77 probe accuracy: depth >= peer at every cell") for name in targets)
    assert any(name.startswith("SciFact nDCG@10: depth model, int8 within 0.5") for name in targets)
