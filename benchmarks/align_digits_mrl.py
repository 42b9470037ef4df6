"""Matryoshka vs. plain image-text training on the offline digits demo, scored at every size.

Trains three small dual encoders with the recipe of `recipes/train_align.py` (same data, steps, seed):
  - mrl:        nested loss at 256, 128, 64, 32, 16, 8 (the recipe's default);
  - plain-256:  loss at 256 only, then truncated (what you get without MRL);
  - alone-8:    a separate model whose embedding is 8-d (projection_dim 8), the paper's fixed-feature baseline.
and writes one table per metric (rows: size; columns: model) to benchmarks/results/align_digits_mrl.{json,md}.
The captions are made from the digit labels (see README), so this measures the nesting, not language understanding.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/align_digits_mrl.py
"""

import time
from pathlib import Path

from mrl_text.evaluation import Results

from _report import machine, write_results  # before the other siblings: puts recipes/ on sys.path
from train_align import DEFAULT_CONFIG, read_recipe, train

OUT = Path(__file__).parent / "results" / "align_digits_mrl"
COMMAND = "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/align_digits_mrl.py"
SIZES = [256, 128, 64, 32, 16, 8]
VARIANTS = {
    "mrl": {"matryoshka_dimensions": SIZES},
    "plain-256": {"matryoshka_dimensions": [256], "eval_dimensions": SIZES},
    "alone-8": {"matryoshka_dimensions": [8]},
}
METRICS = [("zero-shot", "accuracy"), ("retrieval", "image_to_text_recall@1"), ("knn", "knn_accuracy")]


def main():
    base = read_recipe(DEFAULT_CONFIG)
    rows, seconds = [], {}
    for name, change in VARIANTS.items():
        start = time.time()
        _, _, after, _ = train({**base, **change})
        seconds[name] = time.time() - start
        rows += [{**row, "model": name} for row in after.rows]
    results = Results(rows)
    lines = [
        "# Matryoshka vs. plain image-text training, digits demo (captions made from labels)",
        "",
        f"Command: `{COMMAND}`  ",
        f"Machine: {machine()}, shared. Values x100, held-out digits (360 images).",
        f"Wall time per model (s, shared machine): {', '.join(f'{k} {v:.0f}' for k, v in seconds.items())}.",
    ]
    for task, metric in METRICS:
        lines += ["", f"## {task}: {metric}", "", "| size | " + " | ".join(VARIANTS) + " |",
                  "|---:|" + "---:|" * len(VARIANTS)]
        for dim in SIZES:
            cells = []
            for model in VARIANTS:
                try:
                    cells.append(f"{100 * results.value(task, metric, dim, model=model):.1f}")
                except KeyError:
                    cells.append("-")
            lines.append(f"| {dim} | " + " | ".join(cells) + " |")
    print(write_results(OUT, results.to_dict(), lines), end="")


if __name__ == "__main__":
    main()
