"""Quality where Matryoshka training matters: the paper's comparisons on text, one subcommand per regime.

From all-MiniLM-L6-v2 (`--model`), on the shared data folder (`--data`):

- `classification`: fine-tune on Banking77, TREC (6 coarse classes) and emotion; test accuracy at every size of
  (a) MRL (nested heads, Matryoshka cross-entropy), (b) MRL-E (weight-tied heads), (c) FF-d (encoder -> projection
  to d -> one head, one model per size), (d) plain fine-tuning + a probe on the first d re-normalized
  coordinates, (e) the plain model + SVD to d + the probe. Each model's own heads and the probe on its features.
- `adaptive`: the MRL classifier of `classification` on Banking77, its own heads in an `AdaptiveClassifier`
  cascade calibrated on a validation split held out from train: accuracy against expected dimensions.
- `retrieval`: SciFact's training queries -> SciFact test nDCG@10: plain InfoNCE, MRL (the recipe chosen on
  validation by `retrieval-val`: weight 4 on the full size, the smaller sizes ramped in over training), MRL with the
  paper's recipe (`mrl_paper`), sentence-transformers' MatryoshkaLoss (the peer), FF-64 and FF-32; same batches and
  steps for all.
- `finished`: the finished-model setting: training rows (plain, MRL, sentence-transformers' MatryoshkaLoss on SNLI
  triplets + MRPC pairs) next to post-hoc rows on the frozen model's cached embeddings (plain truncation, a PCA
  rotation, the Matryoshka adaptor fit without labels, and fit on SciFact's training qrels); STS-B, SciFact and a
  Banking77 probe. `--reuse-runs FILE` takes the training rows from an earlier results file (CPU).
- `heads`, `retrieval-val`: recipe studies on validation splits held out from train (CPU-sized): how nested heads
  train, and MRL loss variants (size weights, a full-size-only phase, a ramp of the smaller sizes, sampled sizes,
  distilled prefixes) against plain, over seeds (finished runs are kept under --out and reused).

Every run uses the library's trainer with `mrl_text.training.optimization.build_optimizer` (heads and projections at
`--head-lr`), seeds 0..N-1 (`--seeds`), mean and spread over seeds. Results: `<--results>/quality_<regime>.json` and
`.md`, headed by the command and the machine; any subsampling is stated there. Model choices were made on a validation
split held out from the training set (`--eval-split val`), never on test.

    python benchmarks/quality.py classification --limit-train 2000 --limit-eval 500      # CPU, subsampled
    python benchmarks/quality.py retrieval --device cuda --bf16 --seeds 3 --workers 6    # a GPU
    python benchmarks/quality.py finished --methods truncation,pca,adaptor,adaptor_supervised \
        --reuse-runs benchmarks/results/quality_finished_h200.json                         # CPU: post-hoc rows only
"""

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _quality_common as common
import _quality_mlm

CLASSIFICATION_DATASETS = ("banking77", "trec", "emotion")
CLASSIFICATION_METHODS = ("mrl", "mrl_e", "ff", "plain")
TOLERANCES = (0.0, 0.005, 0.01, 0.02)


# ---------------------------------------------------------------------------------------------------------------
# Classification


def load_task(args, name):
    """{"train", "val", "test": (texts, label ids), "classes"}: val is held out from train (seeded), never test."""
    from mrl_text.data import load_classification

    folder = Path(args.data) / name
    texts, labels = load_classification(folder / "train.tsv")
    test_texts, test_labels = load_classification(folder / "test.tsv")
    classes = sorted(set(labels), key=lambda c: (isinstance(c, str), c))  # ids with gaps become 0..n-1 in order
    unknown = sorted(set(test_labels) - set(classes), key=str)
    if unknown:
        raise ValueError(f"{folder / 'test.tsv'}: labels {unknown[:5]} never occur in train.tsv.")
    index = {c: i for i, c in enumerate(classes)}
    rows = list(zip(texts, (index[c] for c in labels)))
    random.Random(0).shuffle(rows)
    n_val = round(args.val_fraction * len(rows))
    val, train = rows[:n_val], rows[n_val:]
    test = list(zip(test_texts, (index[c] for c in test_labels)))
    split = {
        "train": common.subsample(train, args.limit_train),
        "val": common.subsample(val, args.limit_eval),
        "test": common.subsample(test, args.limit_eval),
    }
    task = {key: ([t for t, _ in part], np.array([y for _, y in part])) for key, part in split.items()}
    task["classes"] = classes
    return task


def build_classifier(args, method, size, num_labels):
    """A MatryoshkaForSequenceClassification around the starting encoder for one method (and FF size)."""
    from mrl_text import MatryoshkaForSequenceClassification, MatryoshkaModel

    dims = {"mrl": args.sizes, "mrl_e": args.sizes, "plain": args.sizes[:1], "ff": [size]}[method]
    base = MatryoshkaModel.from_encoder(
        args.model, matryoshka_dimensions=dims, projection_dim=size if method == "ff" else None
    )
    config = base.config
    config.num_labels = num_labels
    config.efficient_heads = method == "mrl_e"
    config.scale_head_inputs = method == "mrl_e" and args.tied_head_inputs == "scaled"
    model = MatryoshkaForSequenceClassification(config, encoder=base.encoder)
    model.tokenizer = base.tokenizer
    return model


def head_accuracies(model, features, labels):
    """{d: accuracy of the model's own head of size d} on precomputed full pooled features."""
    model.eval()
    with torch.inference_mode():
        device_features = features.to(model.device)
        return {
            d: float((model.classifier(device_features, dim=d).argmax(-1).cpu().numpy() == labels).mean())
            for d in model.config.matryoshka_dimensions
        }


def classification_job(job):
    """Train one model (method, FF size, seed) on one dataset; its head and probe accuracies on the eval split."""
    args, name, method, size, seed = job["args"], job["dataset"], job["method"], job["size"], job["seed"]
    timings = {}
    task = load_task(args, name)
    (train_texts, train_y), (eval_texts, eval_y) = task["train"], task[args.eval_split]
    torch.manual_seed(seed)
    model = build_classifier(args, method, size, len(task["classes"]))
    rows = [{"text": t, "label": int(y)} for t, y in zip(train_texts, train_y)]
    label = f"{name}/{method}{size or ''}/seed{seed}"
    with tempfile.TemporaryDirectory() as scratch, common.phase(f"{label} train", timings):
        common.train(model, rows, args, scratch, seed, "cross_entropy", head_lr=args.head_lr,
                     scale_heads_by_size=args.head_lr_rule == "scaled")
    with common.phase(f"{label} features", timings):
        train_x = common.pooled_features(model, train_texts, args.eval_max_seq_length)
        eval_x = common.pooled_features(model, eval_texts, args.eval_max_seq_length)
    result = {
        "dataset": name,
        "method": method,
        "size": size,
        "seed": seed,
        "head": head_accuracies(model, eval_x, eval_y),
    }
    with common.phase(f"{label} probes", timings):
        dims = [size] if method == "ff" else args.sizes
        result["probe"] = {d: common.probe_accuracy(train_x, train_y, eval_x, eval_y, d) for d in dims}
        if method == "plain":
            rotate = common.svd_rotation(train_x)
            result["svd_probe"] = {
                d: common.probe_accuracy(rotate(train_x), train_y, rotate(eval_x), eval_y, d) for d in args.sizes
            }
        if job.get("adaptive") and method == "mrl" and args.eval_split == "test":
            val_texts, val_y = task["val"]
            result["adaptive"] = adaptive_cascades(
                model, common.pooled_features(model, val_texts, args.eval_max_seq_length), val_y, eval_x, eval_y
            )
    result["timings"] = timings
    return result


def adaptive_cascades(model, val_x, val_y, test_x, test_y):
    """The model's own heads as an AdaptiveClassifier cascade, calibrated on val at each tolerance, tested on test."""
    from mrl_text import AdaptiveClassifier

    clf = AdaptiveClassifier.fit(model, None, (val_x, val_y), tolerance=TOLERANCES[0])
    cascades = []
    for tolerance in TOLERANCES:
        clf.calibrate((val_x, val_y), tolerance=tolerance)
        test = clf.evaluate(test_x, test_y)
        cascades.append({"tolerance": tolerance, "thresholds": clf.thresholds, **{k: test[k] for k in (
            "accuracy", "full_size_accuracy", "expected_dims", "exit_fractions", "per_size_accuracy")}})
    return cascades


def classification_jobs(args, methods, datasets, adaptive=False):
    jobs = []
    for seed in range(args.seeds):
        for name in datasets:
            for method in methods:
                sizes = args.sizes[1:] if method == "ff" else [None]  # FF at full size is plain fine-tuning
                jobs += [{"args": args, "dataset": name, "method": method, "size": s, "seed": seed,
                          "adaptive": adaptive} for s in sizes]
    return jobs


def classification_rows(results, sizes):
    """{row name: {size: [value per (dataset, seed)]}} plus the per-dataset breakdown: the tables' raw cells."""
    rows = {}

    def add(row, dataset, seed, dim, value):
        rows.setdefault(row, {}).setdefault(dataset, {}).setdefault(dim, {})[seed] = value

    names = {"mrl": "MRL", "mrl_e": "MRL-E", "ff": "FF-d", "plain": "plain"}
    for r in results:
        base = names[r["method"]]
        for dim, value in r["head"].items():
            add(f"{base} head", r["dataset"], r["seed"], int(dim), value)
        probe_name = "plain probe on first d (d)" if r["method"] == "plain" else f"{base} probe"
        for dim, value in r["probe"].items():
            add(probe_name, r["dataset"], r["seed"], int(dim), value)
        for dim, value in r.get("svd_probe", {}).items():
            add("plain SVD + probe (e)", r["dataset"], r["seed"], int(dim), value)
    # FF at full size is the plain model: the same run gives both rows' 384 cell.
    for dataset, cells in rows.get("plain head", {}).items():
        rows.setdefault("FF-d head", {}).setdefault(dataset, {}).update(cells)
    for dataset, cells in rows.get("plain probe on first d (d)", {}).items():
        if sizes[0] in cells:
            rows.setdefault("FF-d probe", {}).setdefault(dataset, {})[sizes[0]] = cells[sizes[0]]
    return rows


def averaged(cells_by_dataset, dim, datasets):
    """Per seed, the mean over datasets at `dim` (only seeds every dataset has); [] when a dataset lacks it."""
    per_dataset = [cells_by_dataset.get(d, {}).get(dim, {}) for d in datasets]
    seeds = set.intersection(*(set(c) for c in per_dataset)) if per_dataset else set()
    return [sum(c[s] for c in per_dataset) / len(per_dataset) for s in sorted(seeds)]


ROW_ORDER = ("MRL head", "MRL-E head", "FF-d head", "plain head", "MRL probe", "MRL-E probe", "FF-d probe",
             "plain probe on first d (d)", "plain SVD + probe (e)")


def classification_table(rows, sizes, datasets):
    lines = ["| run | " + " | ".join(map(str, sizes)) + " |", "|---|" + "---|" * len(sizes)]
    for name in ROW_ORDER:
        if name in rows:
            lines.append(
                f"| {name} | " + " | ".join(common.cell(averaged(rows[name], d, datasets)) for d in sizes) + " |"
            )
    return lines


def classification_targets(rows, sizes, datasets):
    def mean(name, dim):
        return common.mean_of(averaged(rows.get(name, {}), dim, datasets))

    checks = []

    def check(text, difference):
        if not np.isnan(difference):
            checks.append((text, difference, difference >= 0))

    for d in sizes:
        check(f"MRL head within 1.0 of its probe at {d}", mean("MRL head", d) - mean("MRL probe", d) + 1.0)
    for d in sizes:
        check(f"MRL head >= FF-d head - 0.5 at {d}", mean("MRL head", d) - mean("FF-d head", d) + 0.5)
    for d, margin in ((sizes[-1], -1.0), (sizes[-2], 0.0)):
        best = max(mean("plain probe on first d (d)", d), mean("plain SVD + probe (e)", d))
        check(f"MRL head >= best of (d), (e) {'+ 1.0' if margin else ''} at {d}", mean("MRL head", d) - best + margin)
    for d in sizes:
        check(f"MRL-E head within 1.0 of MRL head at {d}", 1.0 - abs(mean("MRL-E head", d) - mean("MRL head", d)))
    check(
        f"MRL head >= plain head - 0.3 at {sizes[0]}", mean("MRL head", sizes[0]) - mean("plain head", sizes[0]) + 0.3
    )
    return checks


def run_classification(args, argv):
    datasets = args.datasets.split(",")
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(CLASSIFICATION_METHODS)) + sorted(set(datasets) - set(CLASSIFICATION_DATASETS))
    if unknown:
        raise SystemExit(
            f"unknown method/dataset {unknown}; methods {CLASSIFICATION_METHODS}, datasets {CLASSIFICATION_DATASETS}"
        )
    timings = {}
    with common.phase("classification runs", timings):
        results = common.run_jobs(
            classification_job, classification_jobs(args, methods, datasets), args.workers, args.device
        )
    rows = classification_rows(results, args.sizes)
    setup = (
        f"From {common.model_name(args)}; {', '.join(datasets)}; {args.epochs} epoch(s), batch {args.batch_size}, lr "
        f"{args.lr} (heads: {args.head_lr or args.lr}, {args.head_lr_rule} by size; MRL-E heads read "
        f"{args.tied_head_inputs} prefixes), warmup {args.warmup_ratio}, {args.max_seq_length} tokens; {args.seeds} "
        f"seed(s) (mean ± sd over seeds of the dataset average); validation = {args.val_fraction:.0%} of train held "
        f"out (seeded); scored on the {args.eval_split} split. "
        + common.subsampling_note(args)
    )
    report = {**common.report_head(argv, setup), "timings": timings, "runs": results,
              "targets": classification_targets(rows, args.sizes, datasets)}
    body = [f"Accuracy x100, average over {', '.join(datasets)} ({args.eval_split}):", ""]
    body += classification_table(rows, args.sizes, datasets)
    for name in datasets if len(datasets) > 1 else []:
        body += ["", f"{name}:", ""] + classification_table(rows, args.sizes, [name])
    body += common.targets_lines(report["targets"])
    body += ["", "Wall time per phase: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())]
    common.write_report(args, args.report_name, report, "Quality: classification (the paper's Table 1 on text)", body)
    return report


def run_adaptive(args, argv):
    args.eval_split = "test"
    timings = {}
    with common.phase("adaptive runs", timings):
        jobs = classification_jobs(args, ["mrl"], ["banking77"], adaptive=True)
        results = common.run_jobs(classification_job, jobs, args.workers, args.device)
    setup = (
        f"MRL classifier (nested heads) trained on Banking77 from {args.model} as in `classification` ({args.epochs} "
        f"epoch(s), lr {args.lr}, heads {args.head_lr or args.lr} {args.head_lr_rule} by size); its own heads form "
        f"the cascade, thresholds calibrated on the validation split held out from train ({args.val_fraction:.0%}), "
        "accuracy on test; "
        f"{args.seeds} seed(s). " + common.subsampling_note(args)
    )
    report = {**common.report_head(argv, setup), "timings": timings, "runs": results}
    sizes = args.sizes
    body = ["Fixed sizes (own heads, test accuracy x100):", "", "| size | " + " | ".join(map(str, sizes)) + " |",
            "|---|" + "---|" * len(sizes),
            "| accuracy | " + " | ".join(common.cell([r["head"][d] for r in results]) for d in sizes) + " |", "",
            "Cascade (test; thresholds from validation):", "",
            "| tolerance | accuracy | full size | difference | expected dims | fewer dims than full |",
            "|---|---|---|---|---|---|"]
    checks = []
    for i, tolerance in enumerate(TOLERANCES):
        cascade = [r["adaptive"][i] for r in results]
        accuracy, full = [c["accuracy"] for c in cascade], [c["full_size_accuracy"] for c in cascade]
        dims = float(np.mean([c["expected_dims"] for c in cascade]))
        difference = common.mean_of(accuracy) - common.mean_of(full)
        body.append(f"| {tolerance:.3f} | {common.cell(accuracy)} | {common.cell(full)} | {difference:+.2f} | "
                    f"{dims:.1f} | {sizes[0] / dims:.1f}x |")
        checks.append((dims, difference))
    best = [(d, diff) for d, diff in checks if diff >= -0.5]
    dims_at_target = min((d for d, _ in best), default=float("nan"))
    report["targets"] = [("accuracy within 0.5 of full size at <= 48 expected dims", 48 - dims_at_target,
                          bool(dims_at_target <= 48))]
    body += ["", f"Fewest expected dimensions with test accuracy within 0.5 of full size: {dims_at_target:.1f}."]
    body += common.targets_lines(report["targets"])
    common.write_report(
        args, "adaptive", report, "Quality: adaptive classification on the trained MRL classifier", body
    )
    return report


# ---------------------------------------------------------------------------------------------------------------
# Embedding training shared by `retrieval` and `finished`: the same batches, in the same order, for every method


def batch_order(sizes, batch_size, seed, epochs):
    """Homogeneous batches over several datasets: `[(dataset index, [row indices])]`, shuffled per epoch.

    Each epoch shuffles every dataset's rows, cuts them into full batches (the remainder is dropped, as in-batch
    negatives want full batches) and shuffles the batches of all datasets together.
    """
    rng = random.Random(seed)
    order = []
    for _ in range(epochs):
        epoch = []
        for source, size in enumerate(sizes):
            rows = list(range(size))
            rng.shuffle(rows)
            epoch += [(source, rows[i : i + batch_size]) for i in range(0, size - batch_size + 1, batch_size)]
        rng.shuffle(epoch)
        order += epoch
    return order


def method_recipe(args, method):
    """(arguments, method) a run trains with: `mrl_paper` is `mrl` with every size weighted 1 from the first step."""
    if method != "mrl_paper":
        return args, method
    paper = {"mrl_full_weight": 1.0, "smaller_sizes_warmup_fraction": 0.0, "full_size_only_fraction": 0.0}
    return argparse.Namespace(**{**vars(args), **paper}), "mrl"


def train_embedding_model(args, method, datasets_, order, seed, output_dir):
    """plain / mrl / mrl_paper / ffN with MatryoshkaTrainer (InfoNCE), or `st` (the peer); the model, ready to
    evaluate. `mrl_paper` is MRL with the paper's recipe (every size weighted 1 from the first step)."""
    if method == "st":
        return train_sentence_transformers(args, datasets_, order, seed, output_dir)
    from mrl_text import MatryoshkaModel

    args, method = method_recipe(args, method)
    size = int(method[2:]) if method.startswith("ff") else None
    dims = {"plain": args.sizes[:1], "mrl": args.sizes}.get(method, [size])
    torch.manual_seed(seed)
    full_weight = getattr(args, "mrl_full_weight", 1.0) if method == "mrl" else 1.0
    model = MatryoshkaModel.from_encoder(args.model, matryoshka_dimensions=dims, projection_dim=size,
                                         matryoshka_weights=[full_weight] + [1.0] * (len(dims) - 1))
    rows = [datasets_[source][i] for source, batch in order for i in batch]  # already in the shared batch order
    common.train(model, rows, args, output_dir, seed, "infonce", head_lr=args.head_lr, in_order=True)
    return model.eval()


def train_sentence_transformers(args, datasets_, order, seed, output_dir):
    """sentence-transformers' MatryoshkaLoss(MultipleNegativesRankingLoss) on the same batches in the same order."""
    from datasets import Dataset, DatasetDict
    from sentence_transformers.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    model = common.peer_model(args, seed)
    offsets = [sum(len(d) for d in datasets_[:i]) for i in range(len(datasets_))]
    fixed = [[offsets[source] + i for i in batch] for source, batch in order]

    class FixedBatches:
        """The shared batch order as indices into sentence-transformers' concatenation of the datasets."""

        def __init__(self, *unused, **unused_kw):
            pass

        def __iter__(self):
            return iter(fixed)

        def __len__(self):
            return len(fixed)

    steps = len(order)
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=args.sizes)
    train = DatasetDict({f"d{i}": Dataset.from_list(d) for i, d in enumerate(datasets_)})
    common.peer_trainer(args, model, loss, train, output_dir, seed, steps, logging_steps=max(1, steps // 5),
                        multi_dataset_batch_sampler=FixedBatches).train()
    model.max_seq_length = args.eval_max_seq_length  # sentence-transformers encodes at the model's own limit
    return model.eval()


def embedding_job(job):
    """Train one embedding model (method, seed) on the regime's data and score it with the regime's evaluators."""
    from mrl_text.evaluation import evaluate

    args, method, seed = job["args"], job["method"], job["seed"]
    timings = {}
    datasets_, evaluators, description = job["data"](args)
    order = batch_order([len(d) for d in datasets_], args.batch_size, seed, args.epochs)
    label = f"{args.regime}/{method}/seed{seed}"
    with tempfile.TemporaryDirectory() as scratch, common.phase(f"{label} train", timings):
        model = train_embedding_model(args, method, datasets_, order, seed, scratch)
    dims = [int(method[2:])] if method.startswith("ff") else args.sizes
    with common.phase(f"{label} evaluate", timings):
        results = evaluate(model, evaluators, dims=dims, max_length=args.eval_max_seq_length, batch_size=128)
    values = {e.name: {r["dim"]: r["value"] for r in results.rows if r["metric"] == e.primary_metric}
              for e in evaluators}
    return {"method": method, "seed": seed, "steps": len(order), "data": description, "values": values,
            "timings": timings}


def retrieval_data(args):
    """SciFact's training queries as (anchor=query, positive=relevant abstract) pairs; the test-split evaluator."""
    from mrl_text.data import load_beir
    from mrl_text.evaluation import RetrievalEvaluator

    folder = Path(args.data) / "scifact"
    corpus, queries, qrels = load_beir(folder, "train")
    pairs = [{"anchor": queries[q], "positive": corpus[d]}
             for q in sorted(qrels) for d in sorted(qrels[q]) if qrels[q][d] > 0]
    pairs = common.subsample(pairs, args.limit_train)
    corpus, queries, qrels = load_beir(folder, "test")
    if args.limit_eval:  # the kept queries against their relevant abstracts plus a sample of the others
        kept = common.subsample(sorted(qrels), args.limit_eval)
        qrels, queries = {q: qrels[q] for q in kept}, {q: queries[q] for q in kept}
        relevant = {d for q in kept for d in qrels[q]}
        others = common.subsample(sorted(set(corpus) - relevant), 4 * args.limit_eval)
        corpus = {d: corpus[d] for d in sorted(relevant) + others}
    description = (f"{len(pairs)} (query, relevant abstract) pairs of SciFact's training queries; SciFact test "
                   f"({len(queries)} queries, {len(corpus)} abstracts)")
    return [pairs], [RetrievalEvaluator(corpus, queries, qrels, name="scifact")], description


def embedding_table(results, methods, task, sizes):
    lines = ["| run | " + " | ".join(map(str, sizes)) + " |", "|---|" + "---|" * len(sizes)]
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        lines.append(f"| {method} | " + " | ".join(
            common.cell([r["values"][task][d] for r in runs if d in r["values"].get(task, {})]) for d in sizes) + " |")
    return lines


def mean_value(results, method, task, dim):
    return common.mean_of([r["values"][task][dim] for r in results
                           if r["method"] == method and dim in r["values"].get(task, {})])


def retrieval_targets(results, sizes):
    checks = []

    def check(text, difference):
        if not np.isnan(difference):
            checks.append((text, difference, difference >= 0))

    def v(method, dim):
        return mean_value(results, method, "scifact", dim)

    for d in (32, 16):
        check(f"MRL >= plain + 1.0 at {d}", v("mrl", d) - v("plain", d) - 1.0)
    check("MRL >= plain at 64", v("mrl", 64) - v("plain", 64))
    check(f"MRL >= plain - 0.3 at {sizes[0]}", v("mrl", sizes[0]) - v("plain", sizes[0]) + 0.3)
    for d in sizes:
        check(f"MRL >= peer (st) at {d}", v("mrl", d) - v("st", d))
    for d in (64, 32):
        check(f"MRL within 0.5 of FF-{d}", v("mrl", d) - v(f"ff{d}", d) + 0.5)
    return checks


def run_retrieval(args, argv):
    methods = args.methods.split(",")
    timings = {}
    jobs = [{"args": args, "method": m, "seed": s, "data": retrieval_data} for s in range(args.seeds) for m in methods]

    def partial_report(done):
        if len(done) < len(jobs):
            write_retrieval_report(args, argv, methods, done, timings, partial=len(jobs))

    with common.phase("retrieval runs", timings):
        results = common.run_jobs(embedding_job, jobs, args.workers, args.device, on_result=partial_report)
    return write_retrieval_report(args, argv, methods, results, timings)


def write_retrieval_report(args, argv, methods, results, timings, partial=None):
    """quality_<report name>.json/.md from the runs so far (`partial`: the total number of runs, while some are still
    to come)."""
    setup = (
        f"From {common.model_name(args)}; {results[0]['data']}; {results[0]['steps']} steps of batch "
        f"{args.batch_size} ({args.epochs} epoch(s), the same batches in the same order for every run), InfoNCE "
        f"(scale 20), lr {args.lr} (projections {args.head_lr or args.lr}), warmup {args.warmup_ratio}, "
        f"{args.max_seq_length} training tokens; evaluated at {args.eval_max_seq_length} tokens; {args.seeds} "
        f"seed(s), mean ± sd. plain: InfoNCE at full size only; mrl: at every size (weight {args.mrl_full_weight:g} "
        "on the full size, 1 on the others, those rising linearly from 0 over the first "
        f"{args.smaller_sizes_warmup_fraction:.0%} of the steps; the full size alone for the first "
        f"{args.full_size_only_fraction:.0%}); mrl_paper: MRL with the paper's recipe (every size weighted 1 from the "
        "first step); st: sentence-transformers' MatryoshkaLoss(MultipleNegativesRankingLoss); ffN: projection to N "
        "trained alone. "
        + common.subsampling_note(args)
        + (f" PARTIAL: {len(results)} of {partial} runs." if partial else "")
    )
    report = {**common.report_head(argv, setup), "timings": timings, "runs": results,
              "targets": retrieval_targets(results, args.sizes)}
    body = ["SciFact test nDCG@10 x100:", ""] + embedding_table(results, methods, "scifact", args.sizes)
    body += common.targets_lines(report["targets"])
    body += ["", "Wall time per phase: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())]
    common.write_report(args, args.report_name, report, "Quality: retrieval adaptation (SciFact)", body)
    return report


# ---------------------------------------------------------------------------------------------------------------
# Retrieval recipe study (validation only): can MRL keep plain InfoNCE's full size without losing its small sizes?

RETRIEVAL_VARIANTS = {
    # name: MatryoshkaLoss options (None: plain InfoNCE at full size) and the study's own knobs
    "none": "untrained",  # the starting encoder: how far training moves each size
    "plain": None,
    "mrl": {},
    "mrl_w4": {"full_weight": 4.0},
    "mrl_n3": {"n_dims_per_step": 3},
    "mrl_sched": {"full_only_fraction": 0.5},
    "mrl_sched25": {"full_only_fraction": 0.25},
    "mrl_w4_sched25": {"full_weight": 4.0, "full_only_fraction": 0.25},
    "mrl_distill": {"prefix_targets": "full_size"},
    # Aimed at the full-size cost without a hard switch: the smaller sizes' weights rise linearly from 0 to 1 over
    # the first half (a curriculum), or every size first and the full size alone for the last quarter.
    "mrl_w4_ramp50": {"full_weight": 4.0, "ramp_fraction": 0.5},
    "mrl_w4_ramp100": {"full_weight": 4.0, "ramp_fraction": 1.0},
    "mrl_ramp50": {"ramp_fraction": 0.5},
    "mrl_w4_tail25": {"full_weight": 4.0, "full_only_tail": 0.25},
    # Between the paper's recipe and the default: a lighter full-size weight, with or without a shorter ramp.
    "mrl_w2": {"full_weight": 2.0},
    "mrl_w2_ramp50": {"full_weight": 2.0, "ramp_fraction": 0.5},
}


def retrieval_validation_data(args):
    """SciFact's training queries split (seeded) into train and validation queries; the validation queries are
    scored against their relevant abstracts plus `--val-corpus` random other abstracts. No test data is read."""
    from mrl_text.data import load_beir

    corpus, queries, qrels = load_beir(Path(args.data) / "scifact", "train")
    query_ids = sorted(qrels)
    random.Random(0).shuffle(query_ids)
    n_val = round(args.val_fraction * len(query_ids))
    val_ids, train_ids = common.subsample(sorted(query_ids[:n_val]), args.limit_eval), sorted(query_ids[n_val:])
    pairs = [(queries[q], corpus[d]) for q in train_ids for d in sorted(qrels[q]) if qrels[q][d] > 0]
    pairs = common.subsample(pairs, args.limit_train)
    relevant = {d for q in val_ids for d in qrels[q]}
    doc_ids = sorted(relevant) + common.subsample(sorted(set(corpus) - relevant), args.val_corpus)
    return {"pairs": pairs, "val_queries": [queries[q] for q in val_ids], "val_qrels": [qrels[q] for q in val_ids],
            "doc_ids": doc_ids, "docs": [corpus[d] for d in doc_ids], "n_train_queries": len(train_ids)}


class TopLayers(torch.nn.Module):
    """The encoder's top `n` transformer layers over cached hidden states of the layers below (frozen), mean-pooled:
    the study's trainable model. Caching the frozen bottom makes a CPU step ~3x cheaper than full fine-tuning."""

    def __init__(self, encoder, n):
        super().__init__()
        import copy

        self.config = encoder.config
        self.layers = copy.deepcopy(encoder.encoder.layer[-n:])

    def forward(self, states, mask):
        from transformers.masking_utils import create_bidirectional_mask

        from mrl_text.models.modeling_matryoshka_utils import pool

        attention = create_bidirectional_mask(config=self.config, inputs_embeds=states, attention_mask=mask)
        for layer in self.layers:
            states = layer(states, attention)
        return pool(states, mask, "mean")


def cached_states(args, encoder, tokenizer, texts, frozen_layers):
    """Per text, the hidden states after the bottom `frozen_layers` layers (unpadded, float32)."""
    cache = Path(args.out) / f"states-{len(texts)}-{args.max_seq_length}-{frozen_layers}.pt"
    if cache.is_file():
        return torch.load(cache)
    states = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            inputs = tokenizer(texts[start : start + 64], padding=True, truncation=True,
                               max_length=args.max_seq_length, return_tensors="pt")
            hidden = encoder(**inputs, output_hidden_states=True).hidden_states[frozen_layers]
            states += [h[: int(m.sum())].clone() for h, m in zip(hidden, inputs["attention_mask"])]
            print(f"cached {len(states)}/{len(texts)}", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(states, cache)
    return states


def padded(states):
    """A batch of cached per-text states -> (states (batch, longest, hidden), mask (batch, longest))."""
    longest = max(s.shape[0] for s in states)
    batch = torch.zeros(len(states), longest, states[0].shape[-1])
    mask = torch.zeros(len(states), longest, dtype=torch.long)
    for i, s in enumerate(states):
        batch[i, : s.shape[0]], mask[i, : s.shape[0]] = s, 1
    return batch, mask


def retrieval_variant_loss(args, options):
    """`loss(step, [anchor, positive]) -> scalar` for one variant, from the library's losses."""
    from mrl_text.losses import InfoNCELoss, MatryoshkaLoss
    from mrl_text.training.schedule import smaller_sizes_scale

    base = InfoNCELoss(scale=20.0)
    plain = MatryoshkaLoss(base, args.sizes[:1])
    if options is None:
        return lambda step, embeddings: plain(embeddings)
    options = dict(options)
    full_only_until = options.pop("full_only_fraction", 0.0) * args.steps
    full_only_from = (1.0 - options.pop("full_only_tail", 0.0)) * args.steps
    ramp_fraction = options.pop("ramp_fraction", 0.0)
    weights = [options.pop("full_weight", 1.0)] + [1.0] * (len(args.sizes) - 1)
    mrl = MatryoshkaLoss(base, args.sizes, weights, **options)

    def loss(step, embeddings):
        if step < full_only_until or step >= full_only_from:
            return plain(embeddings)
        mrl.smaller_sizes_scale = smaller_sizes_scale(step, args.steps, ramp_fraction)  # SizeSchedule's rule
        return mrl(embeddings)

    return loss


def retrieval_validation_setup(args):
    """(data, encoder, tokenizer, cached states split into train columns / validation queries / documents, frozen)."""
    from mrl_text import MatryoshkaModel

    data = retrieval_validation_data(args)
    base = MatryoshkaModel.from_encoder(args.model, matryoshka_dimensions=args.sizes)
    encoder = base.encoder.eval()
    frozen = encoder.config.num_hidden_layers - args.trainable_layers
    if not 0 <= frozen < encoder.config.num_hidden_layers:
        raise SystemExit(
            f"--trainable-layers {args.trainable_layers}: the encoder has {encoder.config.num_hidden_layers} "
            "layers; train 1 to all of them."
        )
    anchors, positives = (list(column) for column in zip(*data["pairs"]))
    n, n_val = len(anchors), len(data["val_queries"])
    states = cached_states(
        args, encoder, base.tokenizer, anchors + positives + data["val_queries"] + data["docs"], frozen
    )
    return (
        data,
        encoder,
        (states[:n], states[n : 2 * n]),
        states[2 * n : 2 * n + n_val],
        states[2 * n + n_val :],
        frozen,
    )


def retrieval_run_file(args, name, seed):
    """Where one finished (variant, seed) run is kept: runs are deterministic on CPU, so a later study that names
    more variants reuses them. The name holds every setting that changes a run."""
    settings = [args.lr, args.epochs, args.batch_size, args.max_seq_length, args.warmup_ratio, args.val_fraction,
                args.val_corpus, args.trainable_layers, args.limit_train, args.limit_eval, args.sizes, args.device]
    key = hashlib.sha1(json.dumps([settings, RETRIEVAL_VARIANTS[name]]).encode()).hexdigest()[:12]
    return Path(args.out) / "runs" / f"{name}-seed{seed}-{key}.json"


def retrieval_variant_job(job):
    """Train one variant on the seed's batches (its order and dropout; every variant of a seed shares them); its
    validation nDCG@10 at every size."""
    from transformers import get_linear_schedule_with_warmup

    from mrl_text import truncate_embeddings
    from mrl_text.metrics import retrieval_scores

    args, name, seed = job["args"], job["variant"], job["seed"]
    kept = retrieval_run_file(args, name, seed)
    if kept.is_file():
        run = json.loads(kept.read_text())
        return {**run, "values": {int(d): v for d, v in run["values"].items()}}
    data, encoder, train_states, val_states, doc_states, _ = retrieval_validation_setup(args)
    order = batch_order([len(train_states[0])], args.batch_size, seed, args.epochs) if name != "none" else []
    torch.manual_seed(seed)
    random.seed(seed)  # MatryoshkaLoss's size sampling
    model = TopLayers(encoder, args.trainable_layers).train()
    variant_loss = retrieval_variant_loss(args, RETRIEVAL_VARIANTS[name]) if name != "none" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    schedule = get_linear_schedule_with_warmup(optimizer, int(np.ceil(args.warmup_ratio * args.steps)), args.steps)
    start = time.perf_counter()
    for step, (_, rows) in enumerate(order):
        embeddings = [torch.nn.functional.normalize(model(*padded([column[i] for i in rows])), dim=-1)
                      for column in train_states]
        variant_loss(step, embeddings).backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 10 == 0:
            print(f"{name} step {step}/{args.steps}", flush=True)
    model.eval()
    with torch.no_grad():
        queries, docs = (torch.cat([model(*padded(rows[i : i + 128])) for i in range(0, len(rows), 128)])
                         for rows in (val_states, doc_states))
    values = {}
    for d in args.sizes:
        top = (truncate_embeddings(queries, d) @ truncate_embeddings(docs, d).T).topk(10, dim=1).indices.tolist()
        rankings = [[data["doc_ids"][i] for i in row] for row in top]
        values[d] = retrieval_scores(rankings, data["val_qrels"], {"ndcg": 10})["ndcg@10"]
    print(name, seed, {d: round(100 * v, 2) for d, v in values.items()}, flush=True)
    run = {"variant": name, "seed": seed, "options": RETRIEVAL_VARIANTS[name], "values": values,
           "train_seconds": round(time.perf_counter() - start, 1)}
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(run))
    return run


def run_retrieval_validation(args, argv):
    timings = {}
    with common.phase("cache frozen layers", timings):  # once, before the workers read the cache
        data, _, train_states, _, _, frozen = retrieval_validation_setup(args)
    args.steps = len(batch_order([len(train_states[0])], args.batch_size, 0, args.epochs))
    unknown = sorted(set(args.variants.split(",")) - set(RETRIEVAL_VARIANTS))
    if unknown:
        raise SystemExit(f"--variants names {unknown}; choose from {', '.join(RETRIEVAL_VARIANTS)}.")
    # The untrained encoder has no seed; every trained variant runs with seeds 0..N-1.
    jobs = [{"args": args, "variant": name, "seed": seed} for seed in range(args.seeds)
            for name in args.variants.split(",") if seed == 0 or name != "none"]
    with common.phase("variants", timings):
        runs = common.run_jobs(retrieval_variant_job, jobs, args.workers, args.device)
    return retrieval_validation_report(args, argv, data, len(train_states[0]), frozen, runs, timings)


def retrieval_validation_report(args, argv, data, n, frozen, runs, timings):
    setup = (
        f"Validation only (no SciFact test data read): SciFact's {data['n_train_queries'] + len(data['val_queries'])} "
        f"training queries split (seeded) into {data['n_train_queries']} for training ({n} query-abstract pairs) and "
        f"{len(data['val_queries'])} held out; those are scored (nDCG@10) against a sub-corpus of their "
        f"{len(data['docs']) - args.val_corpus} relevant abstracts plus {args.val_corpus} random others. From "
        f"{common.model_name(args)}: the bottom {frozen} layers frozen (their states cached), the top "
        f"{args.trainable_layers} trained, mean pooling; {args.max_seq_length} tokens for training and evaluation; "
        f"{args.steps} steps of batch {args.batch_size} ({args.epochs} epochs), every variant of a seed on the same "
        "batches in the same order (seed s: batch order, dropout and size sampling drawn with s; the split and the "
        f"starting weights are the same for all); {args.seeds} seed(s), mean ± sd over seeds; differences from plain "
        f"are paired by seed. InfoNCE (scale 20), AdamW lr {args.lr}, warmup {args.warmup_ratio}, linear decay. "
        "Variants: mrl_w4 weight 4 on the full size; mrl_n3 full size plus 2 sampled smaller sizes per step "
        "(n_dims_per_step=3); mrl_sched plain InfoNCE for the first half of the steps, then every size (mrl_sched25: "
        "the first quarter; mrl_w4_sched25: that and weight 4 on the full size); mrl_w4_ramp50 weight 4 on the full "
        "size, the others' weights rising linearly from 0 to 1 over the first half (mrl_w4_ramp100: over all the "
        "steps; mrl_ramp50: weight 1 on the full size); mrl_w2 weight 2 on the full size (mrl_w2_ramp50: and the "
        "half-length ramp); mrl_w4_tail25 weight 4, every size, then the full size alone for the last quarter; "
        "mrl_distill full size on the labels, every smaller prefix distilled from the detached full-size "
        "similarities (prefix_targets='full_size'). "
        + common.subsampling_note(args)
    )
    report = {**common.report_head(argv, setup), "runs": runs, "timings": timings}
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    by_seed = {(r["variant"], r["seed"]): r["values"] for r in runs}
    heading = ["| variant | " + " | ".join(map(str, args.sizes)) + " |", "|---|" + "---|" * len(args.sizes)]
    body = ["Validation nDCG@10 x100" + (" (mean ± sd over seeds)" if args.seeds > 1 else "") + ":", ""] + heading
    for v in variants:
        body.append(f"| {v} | " + " | ".join(
            common.cell([r["values"][d] for r in runs if r["variant"] == v]) for d in args.sizes) + " |")
    if "plain" in variants:
        body += [
            "",
            "Difference from plain (x100"
            + (", mean ± sd of the per-seed differences" if args.seeds > 1 else "")
            + "):",
            "",
        ] + heading
        for v in variants:
            if v not in ("plain", "none"):
                seeds = [s for (name, s) in by_seed if name == v and ("plain", s) in by_seed]
                body.append(f"| {v} | " + " | ".join(signed_cell(
                    [by_seed[v, s][d] - by_seed["plain", s][d] for s in seeds]) for d in args.sizes) + " |")
    body += ["", "Wall time per phase: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())]
    common.write_report(args, args.report_name, report,
                        "Quality: retrieval recipe study (validation split of SciFact train)", body)
    return report


def signed_cell(values):
    """A difference cell: `+mean` for one seed, `+mean ± sd` for several (x100 of the fractions given)."""
    if not values:
        return "-"
    mean, sd = common.mean_spread(values)
    return f"{mean:+.2f}" if len(values) == 1 else f"{mean:+.2f} ± {sd:.2f}"


# ---------------------------------------------------------------------------------------------------------------
# Finished model: all-MiniLM-L6-v2 has seen this data


FINISHED_TASKS = {"stsb": "spearman", "scifact": "ndcg@10", "banking77": "accuracy"}
TRAINED_METHODS = ("plain", "mrl", "st")
# Post-hoc rows: the frozen starting model's cached embeddings, then only a map (issue 14): plain truncation, a PCA
# rotation, the Matryoshka adaptor fit without labels on each task's own texts, and (SciFact) fit on the training
# qrels.
POSTHOC_METHODS = ("truncation", "pca", "adaptor", "adaptor_supervised")
ADAPTOR_TARGETS = {  # issue 14, x100
    ("scifact", "adaptor"): {384: 64.3, 64: 53.5, 16: 27.0},
    ("scifact", "adaptor_supervised"): {384: 66.0, 64: 57.0, 16: 37.0},
}
NO_WORSE_THAN_TRUNCATION = 0.2  # STS-B and Banking77: no size more than 0.2 points below plain truncation


def finished_evaluation(args):
    """STS-B test, SciFact test and Banking77-probe evaluators; the raw task data (the post-hoc fits read it)."""
    from mrl_text.data import load_beir, load_classification, load_sts
    from mrl_text.evaluation import ClassificationEvaluator, RetrievalEvaluator, STSEvaluator

    data = Path(args.data)
    s1, s2, scores = load_sts(data / "stsb" / "test.tsv")
    sts = list(zip(s1, s2, scores))
    corpus, queries, qrels = load_beir(data / "scifact", "test")
    train = list(zip(*load_classification(data / "banking77" / "train.tsv")))
    test = list(zip(*load_classification(data / "banking77" / "test.tsv")))
    if args.limit_eval:
        sts, test = common.subsample(sts, args.limit_eval), common.subsample(test, args.limit_eval)
        train = common.subsample(train, 2 * args.limit_eval)
        kept = common.subsample(sorted(qrels), max(1, args.limit_eval // 10))
        qrels, queries = {q: qrels[q] for q in kept}, {q: queries[q] for q in kept}
        relevant = {d for q in kept for d in qrels[q]}
        corpus = {
            d: corpus[d] for d in sorted(relevant) + common.subsample(sorted(set(corpus) - relevant), args.limit_eval)
        }
    evaluators = [
        STSEvaluator(*zip(*sts), name="stsb"),
        RetrievalEvaluator(corpus, queries, qrels, name="scifact"),
        ClassificationEvaluator(*zip(*train), *zip(*test), name="banking77"),
    ]
    evaluators = [e for e in evaluators if e.name in args.tasks.split(",")]
    description = (f"STS-B test ({len(sts)} pairs), SciFact test ({len(queries)} queries, {len(corpus)} abstracts), "
                   f"Banking77 probe ({len(train)} train / {len(test)} test texts)")
    raw = {"sts": sts, "corpus": corpus, "queries": queries, "bank_train": train, "bank_test": test}
    return evaluators, description, raw


def finished_data(args):
    """SNLI dev+test triplets and MRPC paraphrase pairs (label 1); the finished regime's evaluators."""
    from datasets import concatenate_datasets

    from mrl_text.data import load_pairs, nli_triplets, read_table

    data = Path(args.data)
    snli = concatenate_datasets([read_table(data / "snli" / f"{s}.tsv") for s in ("dev", "test")])
    triplets = list(nli_triplets(snli))
    mrpc = concatenate_datasets([read_table(data / "mrpc" / f"{s}.tsv") for s in ("train", "test")])
    pairs = list(load_pairs(mrpc.filter(lambda row: int(row["label"]) == 1), anchor="sentence1", positive="sentence2"))
    triplets, pairs = common.subsample(triplets, args.limit_train), common.subsample(pairs, args.limit_train)
    evaluators, description, _ = finished_evaluation(args)
    description = f"{len(triplets)} SNLI (dev+test) triplets and {len(pairs)} MRPC paraphrase pairs; {description}"
    return [triplets, pairs], evaluators, description


def posthoc_fit_data(args, raw):
    """What each task's post-hoc maps are fit on, as texts: SciFact's corpus (as a user fits on the corpus they
    index) and its training queries' qrels, the STS-B train sentences, the Banking77 probe's training texts."""
    from mrl_text.data import load_beir, load_sts

    _, train_queries, train_qrels = load_beir(Path(args.data) / "scifact", "train")
    train_qrels = {
        q: {d: r for d, r in docs.items() if d in raw["corpus"] and r > 0} for q, docs in train_qrels.items()
    }
    train_qrels = {q: docs for q, docs in train_qrels.items() if docs}
    s1, s2, _ = load_sts(Path(args.data) / "stsb" / "train.tsv")
    return {
        "scifact": {"corpus_ids": list(raw["corpus"]), "texts": list(raw["corpus"].values()),
                    "queries": {q: train_queries[q] for q in train_qrels}, "qrels": train_qrels},
        "stsb": {"texts": list(dict.fromkeys(s1 + s2))},
        "banking77": {"texts": list(dict.fromkeys(text for text, _ in raw["bank_train"]))},
    }


def posthoc_job(job):
    """Fit every post-hoc map of one seed on cached embeddings and score it with the finished regime's evaluators."""
    from mrl_text.adaptor import fit

    args, methods, seed = job["args"], job["methods"], job["seed"]
    evaluators, _, raw = finished_evaluation(args)
    fit_data = posthoc_fit_data(args, raw)
    evaluated = {"stsb": [t for a, b, _ in raw["sts"] for t in (a, b)],
                 "scifact": list(raw["queries"].values()) + list(fit_data["scifact"]["queries"].values()),
                 "banking77": [t for t, _ in raw["bank_train"] + raw["bank_test"]]}
    texts = [t for e in evaluators for t in fit_data[e.name]["texts"] + evaluated[e.name]]
    table = common.EmbeddingTable(texts, args.model, args.eval_max_seq_length, args.sizes, args.device, args.cache_dir)
    options = dict(seed=seed, show_progress_bar=False)
    if args.adaptor_epochs:
        options.update(epochs=args.adaptor_epochs, supervised_epochs=args.adaptor_epochs)
    if args.adaptor_rotation != "default":
        options["rotation"] = None if args.adaptor_rotation == "none" else args.adaptor_rotation
    runs = {m: {"method": m, "seed": seed, "values": {}, "fit_seconds": {}, "fit_summary": {}} for m in methods}
    for evaluator in evaluators:
        task = evaluator.name
        corpus = table(fit_data[task]["texts"])
        # (each maker is called in this iteration; the defaults bind this task's data all the same)
        makers = {"truncation": lambda: None,
                  "pca": lambda corpus=corpus: fit(corpus, args.sizes, rotation="pca", num_layers=0, gate=False,
                                                   seed=seed, show_progress_bar=False),
                  "adaptor": lambda corpus=corpus, task=task: fit(corpus, args.sizes,
                                                                  description=f"{task} (no labels)", **options)}
        if task == "scifact":
            queries = fit_data[task]["queries"]
            makers["adaptor_supervised"] = lambda corpus=corpus, task=task, queries=queries: fit(
                corpus,
                args.sizes,
                fit_data[task]["qrels"],
                objective="both",
                query_embeddings=table(list(queries.values())),
                query_ids=list(queries),
                corpus_ids=fit_data[task]["corpus_ids"],
                description="SciFact training qrels",
                **options,
            )
        for method in methods:
            runs[method]["values"][task] = {}
            if method not in makers:
                continue
            start = time.perf_counter()
            adaptor = makers[method]()
            runs[method]["fit_seconds"][task] = round(time.perf_counter() - start, 1)
            runs[method]["values"][task] = common.posthoc_scores(evaluator, table, adaptor, args.sizes, method)
            if adaptor is not None and method.startswith("adaptor"):
                runs[method]["fit_summary"][task] = adaptor.config.fit_summary
            print(
                f"{method}/{task}/seed{seed}: "
                + " ".join(f"{100 * v:.2f}" for v in runs[method]["values"][task].values()),
                flush=True,
            )
    return list(runs.values())


def reused_runs(path, methods):
    """The runs of `methods` from an earlier quality_finished.json (the trained rows; too slow to retrain on CPU)."""
    report = json.loads(Path(path).read_text())
    runs = [r for r in report["runs"] if r["method"] in methods]
    for r in runs:
        r["values"] = {task: {int(d): v for d, v in values.items()} for task, values in r["values"].items()}
        r["reused_from"] = str(path)
    return runs, report.get("training_setup", report["setup"]), report.get("training_machine", report["machine"])


def run_finished(args, argv):
    methods = args.methods.split(",")
    trained = [m for m in methods if m not in POSTHOC_METHODS]
    posthoc = [m for m in methods if m in POSTHOC_METHODS]
    timings, results, training_setup, training_machine = {}, [], None, common.machine()
    if trained:
        with common.phase("finished runs", timings):
            jobs = [
                {"args": args, "method": m, "seed": s, "data": finished_data}
                for s in range(args.seeds)
                for m in trained
            ]
            results = common.run_jobs(embedding_job, jobs, args.workers, args.device)
        training_setup = (
            f"Trained rows from {args.model}; {results[0]['data']}; {results[0]['steps']} steps of batch "
            f"{args.batch_size} (one source per batch, the same batches for every run), {args.epochs} epoch(s), lr "
            f"{args.lr}, warmup {args.warmup_ratio}, {args.max_seq_length} training tokens; evaluated at "
            f"{args.eval_max_seq_length} tokens; {args.seeds} seed(s), mean ± sd. " + common.subsampling_note(args)
        )
    elif args.reuse_runs:
        results, training_setup, training_machine = reused_runs(args.reuse_runs, TRAINED_METHODS)
        trained = [m for m in TRAINED_METHODS if any(r["method"] == m for r in results)]
    if posthoc:
        with common.phase("post-hoc maps", timings):
            jobs = [{"args": args, "methods": posthoc, "seed": s} for s in range(args.seeds)]
            results += [run for runs in common.run_jobs(posthoc_job, jobs, args.workers, "cpu") for run in runs]
    shown = trained + posthoc
    for r in results:  # the 3-task average per size, where a run has all three tasks
        if all(r["values"].get(t) for t in FINISHED_TASKS):
            r["values"]["avg"] = {d: float(np.mean([r["values"][t][d] for t in FINISHED_TASKS])) for d in args.sizes}
        else:
            r["values"]["avg"] = {}
    setup = (
        "Finished model all-MiniLM-L6-v2. "
        + (f"{training_setup} " if training_setup else "")
        + (
            f"Trained rows (plain, mrl, st) reused from {args.reuse_runs}, measured on {training_machine}. "
            if args.reuse_runs and not [m for m in methods if m in TRAINED_METHODS]
            else ""
        )
        + (
            f"Post-hoc rows ({', '.join(posthoc)}): the frozen model's embeddings at {args.eval_max_seq_length} "
            "tokens, cached; truncation: none; pca: a PCA rotation fit on the task's texts; adaptor: "
            "mrl_text.adaptor.fit without labels on the task's texts (SciFact corpus, STS-B train sentences, "
            f"Banking77 train texts), epochs {args.adaptor_epochs or 'default'}, rotation {args.adaptor_rotation}; "
            f"adaptor_supervised: then the SciFact training queries' qrels; {args.seeds} seed(s). "
            if posthoc
            else ""
        )
        + common.subsampling_note(args)
    )
    report = {
        **common.report_head(argv, setup),
        "training_setup": training_setup,
        "training_machine": training_machine,
        "timings": timings,
        "runs": results,
    }
    body = ["3-task average (STS-B Spearman, SciFact nDCG@10, Banking77 probe accuracy), x100:", ""]
    body += embedding_table(results, [m for m in shown if m != "adaptor_supervised"], "avg", args.sizes)
    for task, metric in [(t, m) for t, m in FINISHED_TASKS.items() if t in args.tasks.split(",")]:
        body += ["", f"{task} ({metric}), x100:", ""] + embedding_table(results, shown, task, args.sizes)
    checks = []
    if {"mrl", "plain"} <= set(shown):
        for d in args.sizes:
            difference = mean_value(results, "mrl", "avg", d) - mean_value(results, "plain", "avg", d)
            need = -0.3 if d == args.sizes[0] else 1.0 if d <= 64 else None
            if need is not None and not np.isnan(difference):
                checks.append((f"MRL >= plain {need:+.1f} at {d}", difference - need, difference >= need))
    checks += adaptor_targets(results, args.sizes) if {"adaptor", "truncation"} <= set(posthoc) else []
    report["targets"] = checks
    body += common.targets_lines(checks)
    body += ["", "Wall time per phase: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())]
    common.write_report(args, "finished", report, "Quality: finished model (trained rows vs post-hoc maps)", body)
    if posthoc:
        write_adaptor_report(args, argv, setup, results, posthoc, checks)
    return report


def adaptor_targets(results, sizes):
    """Issue 14's targets: SciFact figures, and STS-B / Banking77 never more than 0.2 below plain truncation."""
    checks = []
    for (task, method), targets in ADAPTOR_TARGETS.items():
        for dim, target in targets.items():
            value = mean_value(results, method, task, dim)
            if not np.isnan(value):
                checks.append((f"{task} {method} >= {target} at {dim}", value - target, value >= target))
    for task in ("stsb", "banking77"):
        for dim in sizes:
            difference = mean_value(results, "adaptor", task, dim) - mean_value(results, "truncation", task, dim)
            if not np.isnan(difference):
                checks.append((f"{task} adaptor >= truncation - {NO_WORSE_THAN_TRUNCATION} at {dim}",
                               difference + NO_WORSE_THAN_TRUNCATION, difference >= -NO_WORSE_THAN_TRUNCATION - 1e-9))
    return checks


def write_adaptor_report(args, argv, setup, results, posthoc, checks):
    """quality_adaptor.json/.md: the post-hoc rows alone, with fit times and what each fit's gate kept."""
    runs = [r for r in results if r["method"] in posthoc]
    report = {**common.report_head(argv, setup), "runs": runs,
              "targets": [c for c in checks if not c[0].startswith("MRL")]}
    body = []
    for task, metric in [(t, m) for t, m in FINISHED_TASKS.items() if t in args.tasks.split(",")]:
        seconds = {
            r["method"]: r["fit_seconds"].get(task) for r in runs if r["seed"] == 0 and r["fit_seconds"].get(task)
        }
        body += [f"{task} ({metric}), x100; fit seconds (seed 0): {seconds}", ""]
        body += embedding_table(runs, posthoc, task, args.sizes) + [""]
    body += common.targets_lines(report["targets"])
    body += ["", "Sizes each adaptor fit adapted (validation gate; seed 0):", ""]
    for r in runs:
        for task, summary in r["fit_summary"].items():
            if r["seed"] == 0:
                kept = [d for d, v in summary["validation"].items() if v["adapted"]]
                body.append(f"- {task}/{r['method']}: {kept or 'no size'} (rotation candidates "
                            f"{summary.get('rotation_candidates')}; {summary['validation_metric']})")
    common.write_report(
        args, "adaptor", report, "Quality: Matryoshka adaptor on all-MiniLM-L6-v2 (finished model)", body
    )


# ---------------------------------------------------------------------------------------------------------------
# Head recipe study (validation only): how fast do freshly initialised heads reach the probe on the same features?


def run_heads(args, argv):
    """Nested heads (MRL and MRL-E, initialised as the model initialises them) trained alone on the starting
    encoder's frozen pooled features of Banking77, for the steps of one epoch, per head learning rate; validation
    accuracy against the probe on the same features. The encoder is frozen so each setting costs seconds; the joint
    runs of `classification --eval-split val` then confirm the choice with the encoder training too."""
    from transformers import get_linear_schedule_with_warmup

    from mrl_text import truncate_embeddings

    timings = {}
    task = load_task(args, "banking77")
    (train_texts, train_y), (val_texts, val_y) = task["train"], task["val"]
    cache = Path(args.out) / f"features-{len(train_y)}-{len(val_y)}-{args.max_seq_length}.pt"
    with common.phase("features", timings):
        if cache.is_file():
            train_x, val_x = torch.load(cache)
        else:
            encoder = build_classifier(args, "plain", None, len(task["classes"]))
            train_x = common.pooled_features(encoder, train_texts, args.max_seq_length)
            val_x = common.pooled_features(encoder, val_texts, args.max_seq_length)
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save((train_x, val_x), cache)
    probes = {d: common.probe_accuracy(train_x, train_y, val_x, val_y, d) for d in args.sizes}
    labels = torch.as_tensor(train_y)
    runs = []
    for setting in args.settings.split(","):
        method, feed, rule = setting.split(":")
        for steps in args.steps:
            for head_lr in args.head_lrs:
                torch.manual_seed(0)
                model = build_classifier(args, method, None, len(task["classes"]))
                model.classifier.scale_inputs = feed == "sized"  # the library's option (config.scale_head_inputs)
                model.matryoshka.requires_grad_(False)  # frozen encoder: only the heads train
                heads = model.classifier
                optimizer = common.build_optimizer(model, 0.0, head_lr, scale_heads_by_size=rule == "scaled")
                schedule = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)
                generator = torch.Generator().manual_seed(0)
                order = torch.cat([torch.randperm(len(labels), generator=generator) for _ in range(
                    steps * args.batch_size // len(labels) + 1)])

                def logits(x, dim, feed=feed, heads=heads):
                    if feed == "normalized":  # a cosine-style head: unit-length prefix times a fixed scale
                        x = torch.nn.functional.pad(truncate_embeddings(x, dim) * args.feature_scale,
                                                    (0, x.shape[-1] - dim))
                    return heads(x, dim=dim)

                for step in range(steps):
                    rows = order[step * args.batch_size : (step + 1) * args.batch_size]
                    loss = sum(torch.nn.functional.cross_entropy(logits(train_x[rows], d), labels[rows])
                               for d in args.sizes)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad()
                with torch.no_grad():
                    accuracy = {d: float((logits(val_x, d).argmax(-1).numpy() == val_y).mean()) for d in args.sizes}
                runs.append({"method": method, "feed": feed, "lr_rule": rule, "steps": steps, "head_lr": head_lr,
                             "head": accuracy})
                print(
                    setting,
                    steps,
                    head_lr,
                    {d: round(100 * (a - probes[d]), 1) for d, a in accuracy.items()},
                    flush=True,
                )
    setup = (
        f"Banking77, {len(train_y)} training / {len(val_y)} validation rows (validation held out from train; no test "
        f"data used), frozen pooled features of {args.model} at {args.max_seq_length} tokens; heads initialised as "
        f"MatryoshkaForSequenceClassification initialises them, AdamW, {args.warmup_ratio:.0%} warm-up then linear "
        f"decay, batch {args.batch_size}, Matryoshka cross-entropy over all sizes. `normalized`: each head reads its "
        f"re-normalized prefix times {args.feature_scale}; `sized`: the library's `scale_head_inputs` (each head "
        "reads its "
        "raw prefix times sqrt(full / d)). " + common.subsampling_note(args)
    )
    report = {**common.report_head(argv, setup), "probe": probes, "runs": runs, "timings": timings}
    sizes = args.sizes
    body = ["Validation accuracy x100 of the heads, minus the probe on the same features (probe row first):", "",
            "| method | feed | head lr rule | steps | head lr | " + " | ".join(map(str, sizes)) + " |",
            "|---|---|---|---|---|" + "---|" * len(sizes),
            "| probe | | | | | " + " | ".join(f"{100 * probes[d]:.1f}" for d in sizes) + " |"]
    for r in runs:
        body.append(f"| {r['method']} | {r['feed']} | {r['lr_rule']} | {r['steps']} | {r['head_lr']:g} | "
                    + " | ".join(f"{100 * (r['head'][d] - probes[d]):+.1f}" for d in sizes) + " |")
    common.write_report(args, "heads", report, "Quality: how freshly initialised heads train (validation study)", body)
    return report


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="regime", required=True)
    for regime in ("classification", "adaptive", "heads"):
        sub = commands.add_parser(regime)
        common.add_common_arguments(sub, regime, report_name="classification" if regime == "classification" else None)
        sub.add_argument("--lr", type=float, default=2e-4, help="encoder learning rate")
        sub.add_argument("--head-lr", type=float, default=3e-2, help="heads' and projections' learning rate")
        sub.add_argument("--head-lr-rule", choices=("flat", "scaled"), default="scaled",
                         help="scaled: the head of size d learns at head-lr * sqrt(full / d) (see build_optimizer)")
        sub.add_argument("--epochs", type=int, default=1)
        sub.add_argument("--eval-max-seq-length", type=int, default=64)
        sub.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out as validation")
        sub.add_argument(
            "--tied-head-inputs",
            choices=("scaled", "raw"),
            default="scaled",
            help="MRL-E: scaled, each tied head reads its prefix times sqrt(full / d) (scale_head_inputs)",
        )
        if regime == "classification":
            sub.add_argument("--datasets", default=",".join(CLASSIFICATION_DATASETS))
            sub.add_argument("--methods", default=",".join(CLASSIFICATION_METHODS))
            sub.add_argument("--eval-split", choices=("val", "test"), default="test",
                             help="val for choosing a recipe, test for the reported figures")
        if regime == "heads":
            sub.add_argument("--steps", type=int, nargs="+", default=[313])
            sub.add_argument("--head-lrs", type=float, nargs="+", default=[1e-2, 3e-2, 1e-1])
            sub.add_argument("--settings", default="mrl:raw:flat,mrl:raw:scaled,mrl_e:raw:flat,mrl:normalized:flat",
                             help="method:feed:lr rule, comma-separated (feed raw|normalized|sized, rule flat|scaled)")
            sub.add_argument("--feature-scale", type=float, default=10.0)
    for regime, methods, lr, epochs, tokens, sizes in (
        ("retrieval", "plain,mrl,mrl_paper,st,ff64,ff32", 2e-5, 3, 128, common.SIZES),
        ("finished", "plain,mrl,st," + ",".join(POSTHOC_METHODS), 2e-5, 1, 64, common.SIZES[:-1]),  # 384..16
    ):
        sub = commands.add_parser(regime)
        common.add_common_arguments(sub, regime, report_name="retrieval" if regime == "retrieval" else None)
        sub.set_defaults(max_seq_length=tokens, sizes=",".join(map(str, sizes)))
        sub.add_argument("--methods", default=methods)
        sub.add_argument("--lr", type=float, default=lr, help="encoder learning rate")
        sub.add_argument("--head-lr", type=float, default=None, help="projections' learning rate (default: --lr)")
        sub.add_argument("--epochs", type=int, default=epochs)
        sub.add_argument("--eval-max-seq-length", type=int, default=256)
        if regime == "retrieval":
            # The default MRL recipe was chosen on a validation split of SciFact train with the whole encoder trained
            # (3 seeds, quality_retrieval_validation_full.md: weight 4, the smaller sizes ramped in over the first
            # half); `--mrl-full-weight 1 --smaller-sizes-warmup-fraction 0` is the paper's.
            sub.add_argument("--mrl-full-weight", type=float, default=4.0,
                             help="MRL's weight on the full size (the others 1)")
            sub.add_argument("--smaller-sizes-warmup-fraction", type=float, default=0.5,
                             help="MRL's smaller sizes' weights rise linearly from 0 over this share of the steps")
            sub.add_argument("--full-size-only-fraction", type=float, default=0.0,
                             help="MRL trains only the full size for this share of the steps, then every size")
        if regime == "finished":
            sub.add_argument(
                "--reuse-runs",
                default=None,
                help="take the trained rows (plain, mrl, st) from this quality_finished.json when --methods "
                "names none of them (retraining is too slow on CPU)",
            )
            sub.add_argument("--tasks", default=",".join(FINISHED_TASKS), help="evaluation tasks (comma-separated)")
            sub.add_argument("--cache-dir", default=str(common.REPO / "outputs" / "embedding_cache"),
                             help="the frozen model's cached embeddings (post-hoc rows)")
            sub.add_argument("--adaptor-epochs", type=int, default=None, help="adaptor fit epochs (default: fit's)")
            sub.add_argument(
                "--adaptor-rotation", default="default", help="adaptor rotation: pca, learned, auto, none"
            )
    sub = commands.add_parser("retrieval-val", help="recipe study for `retrieval` on a validation split of train")
    common.add_common_arguments(sub, "retrieval_validation", report_name="retrieval_validation")
    sub.set_defaults(sizes=",".join(map(str, common.SIZES)))
    sub.add_argument("--variants", default=",".join(RETRIEVAL_VARIANTS), help=f"of {', '.join(RETRIEVAL_VARIANTS)}")
    sub.add_argument("--lr", type=float, default=2e-5)
    sub.add_argument("--epochs", type=int, default=3)
    sub.add_argument("--val-fraction", type=float, default=0.2, help="share of the training queries held out")
    sub.add_argument("--val-corpus", type=int, default=1500, help="random abstracts added to the relevant ones")
    sub.add_argument("--trainable-layers", type=int, default=2, help="top encoder layers trained (the rest cached)")
    _quality_mlm.add_parser(commands)
    args = common.finish_arguments(parser.parse_args(argv))
    for option in ("full_size_only_fraction", "smaller_sizes_warmup_fraction", "finetune_warmup_fraction"):
        if not 0.0 <= getattr(args, option, 0.0) <= 1.0:
            raise SystemExit(f"--{option.replace('_', '-')} {getattr(args, option)} must be a share of the steps "
                             "between 0 and 1.")
    if args.regime in ("retrieval", "finished"):
        for method in args.methods.split(","):
            size = method[2:] if method.startswith("ff") else None
            posthoc = POSTHOC_METHODS if args.regime == "finished" else ()
            named = ("plain", "mrl", "st", *posthoc) + (("mrl_paper",) if args.regime == "retrieval" else ())
            if method not in named and not (size and size.isdigit() and 0 < int(size) <= args.encoder_size):
                raise SystemExit(f"--methods names {method!r}; use " + ", ".join(named)
                                 + f" or ffN with N in 1..{args.encoder_size} (a projection no larger than the "
                                 "encoder's embedding size).")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    runners = {"classification": run_classification, "adaptive": run_adaptive, "heads": run_heads,
               "retrieval": run_retrieval, "finished": run_finished, "retrieval-val": run_retrieval_validation,
               "mlm": _quality_mlm.run}
    return runners[args.regime](args, argv)


if __name__ == "__main__":
    main()
