"""The front page's figure, `docs/assets/quality_vs_size.png`: quality at every size, Matryoshka against truncation,
drawn from the quality suite's committed results files (nothing copied by hand).

Three panels, each a table of its results file (means over seeds, x100):
- classification (`quality_classification.json`): the MRL heads against a probe on the first d coordinates of the
  plain fine-tuned model, averaged over Banking77, TREC and emotion (the rows `MRL head` and
  `plain probe on first d (d)`);
- SciFact retrieval after training (`quality_retrieval.json`): the `mrl` and `plain` runs;
- a finished model with the adaptor, SciFact (`quality_adaptor.json`): `adaptor` (fit on the corpus alone) and
  `truncation` (all-MiniLM-L6-v2 as it is); the supervised adaptor from `quality_adaptor_split_disjoint.json`, the
  split whose training queries share no relevant abstract with a test query (SciFact's own split shares 181 of the
  283: a supervised figure there is inflated).

    python benchmarks/plot_quality_vs_size.py          # redraws docs/assets/quality_vs_size.png
"""

import argparse
import json
from pathlib import Path

import _quality_common as common  # before the other siblings (through _report): puts recipes/ on sys.path
from quality_classification import averaged, classification_rows

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FIGURE = REPO / "docs" / "assets" / "quality_vs_size.png"
CLASSIFICATION_DATASETS = ("banking77", "trec", "emotion")
COLORS = {3: ["#3f51b5", "#e91e63", "#9e9e9e"], 2: ["#3f51b5", "#9e9e9e"]}


def read_runs(results, name):
    path = Path(results) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; pass --results pointing at benchmarks/results (or run "
                                f"`python benchmarks/quality.py` to write it).")
    return json.loads(path.read_text())["runs"]


def mean_over_seeds(runs, method, task):
    """{size: mean over the seeds of `method`'s `task` score, x100} from the runs of a quality results file."""
    per_size = {}
    for run in runs:
        if run["method"] == method:
            for dim, value in run["values"][task].items():
                per_size.setdefault(int(dim), []).append(value)
    if not per_size:
        raise ValueError(f"no {method!r} run in the results file: the figure needs it.")
    return {dim: common.mean_of(values) for dim, values in per_size.items()}


def quality_series(results=RESULTS):
    """The figure's panels: `[(title, sizes, [(label, values at those sizes)])]`, read from `results`."""
    runs = read_runs(results, "quality_classification")
    class_sizes = sorted({int(dim) for run in runs for dim in run["head"]}, reverse=True)
    classification = classification_rows(runs, class_sizes)

    def classification_values(row):
        return [common.mean_of(averaged(classification[row], dim, CLASSIFICATION_DATASETS)) for dim in class_sizes]

    retrieval = read_runs(results, "quality_retrieval")
    retrieval_mrl, retrieval_plain = (mean_over_seeds(retrieval, m, "scifact") for m in ("mrl", "plain"))
    adaptor, supervised = read_runs(results, "quality_adaptor"), read_runs(results, "quality_adaptor_split_disjoint")
    adaptor_series = [(label, mean_over_seeds(runs, method, "scifact")) for label, runs, method in (
        ("adaptor, supervised (unseen answers)", supervised, "adaptor_supervised"),
        ("adaptor, corpus only", adaptor, "adaptor"), ("all-MiniLM-L6-v2, truncated", adaptor, "truncation"))]
    adaptor_sizes = sorted(adaptor_series[-1][1], reverse=True)
    return [
        ("Classification (3 datasets, accuracy)\nquality_classification.md", class_sizes, [
            ("MRL training (nested heads)", classification_values("MRL head")),
            ("plain fine-tuning, truncated", classification_values("plain probe on first d (d)")),
        ]),
        ("SciFact retrieval after training (nDCG@10)\nquality_retrieval.md", sorted(retrieval_mrl, reverse=True), [
            ("MRL training", [retrieval_mrl[d] for d in sorted(retrieval_mrl, reverse=True)]),
            ("plain fine-tuning, truncated", [retrieval_plain[d] for d in sorted(retrieval_mrl, reverse=True)]),
        ]),
        ("Finished model + adaptor, SciFact (nDCG@10)\nquality_adaptor.md", adaptor_sizes,
         [(label, [values[d] for d in adaptor_sizes]) for label, values in adaptor_series]),
    ]


def draw(panels, path):
    """Write the figure of `panels` (from `quality_series`) to `path`; returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 12})
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 5))
    for ax, (title, sizes, series) in zip(axes, panels):
        for (label, values), color in zip(series, COLORS[len(series)]):
            ax.plot(sizes, values, marker="o", label=label, color=color)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(d) for d in sizes])
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("embedding size (dimensions kept)")
        ax.set_title(title, fontsize=12)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=11, loc="lower left")
    axes[0].set_ylabel("score (x100)")
    figure.suptitle("all-MiniLM-L6-v2: quality at every size, Matryoshka vs plain truncation", fontsize=14)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return figure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(RESULTS), help="folder of the quality_*.json results files")
    parser.add_argument("--out", default=str(FIGURE), help="the PNG to write")
    args = parser.parse_args(argv)
    panels = quality_series(args.results)
    figure = draw(panels, args.out)
    for title, sizes, series in panels:
        print(title.split("\n")[0])
        for label, values in series:
            print(f"  {label}: " + ", ".join(f"{d} {v:.2f}" for d, v in zip(sizes, values)))
    print(f"wrote {args.out}")
    return figure


if __name__ == "__main__":
    main()
