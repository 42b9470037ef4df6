"""Adaptive classification on Banking77: accuracy vs expected embedding size of the calibrated cascade, against
a fixed full-size classifier and each fixed small size.

Frozen embeddings of the MRL model (cached under outputs/), a logistic-regression probe per size (the evaluation
module's probe), thresholds calibrated on a validation split carved from the training set (20%, seed 0), and
accuracy measured on the official test split.

    OMP_NUM_THREADS=1 python benchmarks/adaptive_classification.py            # demo model: all-MiniLM-L6-v2
    OMP_NUM_THREADS=1 python benchmarks/adaptive_classification.py --model out/
"""

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from mrl_text import AdaptiveClassifier  # noqa: E402
from mrl_text.data import load_classification  # noqa: E402

from _report import command_line, machine, write_results  # noqa: E402  (before the other siblings: puts recipes/ on sys.path)
from demo_data import shared_data_dir  # noqa: E402
from embedding_cache import (  # noqa: E402
    REPO,
    cached_embeddings,
    demo_model_path,
    load_model,
    model_label,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="trained MRL model folder (default: the demo all-MiniLM-L6-v2)")
    parser.add_argument("--data", default=str(shared_data_dir() / "banking77"))
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02, 0.05])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "adaptive_classification"))
    args = parser.parse_args()

    train_texts, train_labels = load_classification(os.path.join(args.data, "train.tsv"))
    test_texts, test_labels = load_classification(os.path.join(args.data, "test.tsv"))
    model = load_model(args.model)
    key = args.model or demo_model_path()
    train_x = cached_embeddings(model, train_texts, key)
    test_x = cached_embeddings(model, test_texts, key)
    train_y, test_y = np.asarray(train_labels), np.asarray(test_labels)

    order = np.random.default_rng(0).permutation(len(train_x))
    n_val = int(len(order) * args.val_fraction)
    val_rows, fit_rows = order[:n_val], order[n_val:]
    print(f"Banking77: {len(fit_rows)} train / {len(val_rows)} val / {len(test_x)} test; sizes "
          f"{model.config.matryoshka_dimensions}")

    clf = AdaptiveClassifier.fit(model, (train_x[fit_rows], train_y[fit_rows]), (train_x[val_rows], train_y[val_rows]),
                                 tolerance=args.tolerances[0])
    fixed = clf.evaluate(test_x, test_y)["per_size_accuracy"]
    cascades = []
    for tolerance in args.tolerances:
        clf.calibrate((train_x[val_rows], train_y[val_rows]), tolerance=tolerance)
        test = clf.evaluate(test_x, test_y)
        cascades.append({"tolerance": tolerance, "thresholds": clf.thresholds, "val": clf.report, "test": test})
        print(f"  tolerance {tolerance:.3f}: test accuracy {test['accuracy']:.4f} with {test['expected_dims']:.1f} "
              f"expected dims (full size {test['full_size_accuracy']:.4f} at {max(clf.dims)})")

    results = {
        "command": command_line(), "machine": machine(), "model": model_label(args.model),
        "data": {"train": len(fit_rows), "val": len(val_rows), "test": len(test_x), "classes": len(set(train_labels))},
        "fixed_size_test_accuracy": fixed, "cascades": cascades,
    }
    write_results(args.out, results, markdown(results, max(clf.dims)))
    print(f"wrote {args.out}.json and .md")


def markdown(results, full):
    data = results["data"]
    lines = [
        "# Adaptive classification: Banking77",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}.  ",
        f"Model: {results['model']}. Logistic-regression probe per size on frozen embeddings (prefix, re-normalized); "
        f"{data['train']} train / {data['val']} validation (thresholds) / {data['test']} test texts, "
        f"{data['classes']} intents.",
        "",
        "## Fixed sizes (test accuracy)",
        "",
        "| size | " + " | ".join(str(d) for d in results["fixed_size_test_accuracy"]) + " |",
        "|---|" + "---|" * len(results["fixed_size_test_accuracy"]),
        "| accuracy | " + " | ".join(f"{a:.4f}" for a in results["fixed_size_test_accuracy"].values()) + " |",
        "",
        "## Cascade (thresholds calibrated on validation to stay within `tolerance` of full-size accuracy)",
        "",
        "| tolerance | test accuracy | full-size test accuracy | expected dims | dims saved vs full | answered at "
        "each size (test) |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["cascades"]:
        test = row["test"]
        exits = ", ".join(f"{d}: {f:.0%}" for d, f in test["exit_fractions"].items())
        lines.append(f"| {row['tolerance']:.3f} | {test['accuracy']:.4f} | {test['full_size_accuracy']:.4f} | "
                     f"{test['expected_dims']:.1f} | {full / test['expected_dims']:.1f}x | {exits} |")
    return lines


if __name__ == "__main__":
    main()
