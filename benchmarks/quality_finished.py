"""The quality suite's `finished` regime (`python benchmarks/quality.py finished`): a model that has seen the data.

Training rows (plain, MRL, sentence-transformers' MatryoshkaLoss on SNLI triplets + MRPC pairs, trained as in
`retrieval`: quality_retrieval.py) next to post-hoc rows on the frozen model's cached embeddings (plain truncation,
`mrl_text.adaptor.fit` as a PCA rotation alone, the Matryoshka adaptor fit without labels, and fit on SciFact's
training qrels); STS-B, SciFact and a Banking77 probe, all through `mrl_text.evaluation`. `--reuse-runs FILE` takes
the training rows from an earlier results file (CPU). Also writes quality_adaptor.json/.md (the post-hoc rows alone).
"""

import json
import time
from pathlib import Path

import numpy as np

import _quality_common as common
import quality_retrieval as retrieval
from _report import machine
from quality_retrieval import embedding_job, embedding_table, mean_value

REGIMES = ("finished",)



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
    from mrl_text.data import load_classification, load_sts
    from mrl_text.evaluation import ClassificationEvaluator, RetrievalEvaluator, STSEvaluator

    data = Path(args.data)
    s1, s2, scores = load_sts(data / "stsb" / "test.tsv")
    sts = list(zip(s1, s2, scores))
    corpus, _, _, queries, qrels, _ = common.load_scifact(args)
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
    from mrl_text.data import load_sts

    _, train_queries, train_qrels, _, _, _ = common.load_scifact(args)
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
    timings, results, training_setup, training_machine = {}, [], None, machine()
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
            f"{common.load_scifact(args)[-1]}. "
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


def add_parsers(commands):
    sub = commands.add_parser("finished")
    common.add_common_arguments(sub, "finished")
    retrieval.add_embedding_arguments(sub, "plain,mrl,st," + ",".join(POSTHOC_METHODS), 2e-5, 1, 64,
                                      common.SIZES[:-1])  # 384..16
    sub.add_argument(
        "--reuse-runs",
        default=None,
        help="take the trained rows (plain, mrl, st) from this quality_finished.json when --methods "
        "names none of them (retraining is too slow on CPU)",
    )
    sub.add_argument("--tasks", default=",".join(FINISHED_TASKS), help="evaluation tasks (comma-separated)")
    common.add_scifact_split_argument(sub)
    sub.add_argument("--cache-dir", default=str(common.REPO / "outputs" / "embedding_cache"),
                     help="the frozen model's cached embeddings (post-hoc rows)")
    sub.add_argument("--adaptor-epochs", type=int, default=None, help="adaptor fit epochs (default: fit's)")
    sub.add_argument("--adaptor-rotation", default="default", help="adaptor rotation: pca, learned, auto, none")


def check_arguments(args):
    retrieval.check_methods(args, ("plain", "mrl", "st", *POSTHOC_METHODS))


def run(args, argv):
    return run_finished(args, argv)
