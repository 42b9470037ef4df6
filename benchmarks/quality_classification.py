"""The quality suite's `classification` and `adaptive` regimes (`python benchmarks/quality.py <regime>`).

`classification`: fine-tune all-MiniLM-L6-v2 on Banking77, TREC (6 coarse classes) and emotion; test accuracy at every
size of (a) MRL (nested heads, Matryoshka cross-entropy), (b) MRL-E (weight-tied heads), (c) FF-d (encoder ->
projection to d -> one head, one model per size), (d) plain fine-tuning + a probe on the first d re-normalized
coordinates, (e) the plain model + the PCA rotation (the paper's SVD baseline) + the probe. Each model's own heads and
the probe on its features (`encode(..., output_value="full_embeddings")`).

`adaptive`: the MRL classifier of `classification` on Banking77, its own heads in an `AdaptiveClassifier` cascade
calibrated on a validation split held out from train: accuracy against expected dimensions.

Every model trains with `MatryoshkaTrainer` (heads and projections at `--head-lr`, the trainer's
`head_learning_rate`).
"""

import random
import tempfile
from pathlib import Path

import numpy as np
import torch

import _quality_common as common

REGIMES = ("classification", "adaptive")


CLASSIFICATION_DATASETS = ("banking77", "trec", "emotion")
CLASSIFICATION_METHODS = ("mrl", "mrl_e", "ff", "plain")
TOLERANCES = (0.0, 0.005, 0.01, 0.02)


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
        train_x = common.full_features(model, train_texts, args.eval_max_seq_length)
        eval_x = common.full_features(model, eval_texts, args.eval_max_seq_length)
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
            rotate = common.pca_baseline(train_x)
            result["svd_probe"] = {
                d: common.probe_accuracy(rotate(train_x), train_y, rotate(eval_x), eval_y, d) for d in args.sizes
            }
        if job.get("adaptive") and method == "mrl" and args.eval_split == "test":
            val_texts, val_y = task["val"]
            result["adaptive"] = adaptive_cascades(
                model, common.full_features(model, val_texts, args.eval_max_seq_length), val_y, eval_x, eval_y
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


def add_parsers(commands):
    for regime in REGIMES:
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


def run(args, argv):
    return run_classification(args, argv) if args.regime == "classification" else run_adaptive(args, argv)
