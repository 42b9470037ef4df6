"""Quantization-aware Matryoshka training against post-training quantization, on SciFact (train -> test nDCG@10) and
STS-B (`--task stsb`: train pairs scored >= 4 as positives -> test Spearman).

Side by side, from all-MiniLM-L6-v2 on the same batches in the same order and the same seeds (the retrieval regime's
data and batch order, quality_retrieval.py):
- `mrl`: `MatryoshkaLoss(InfoNCELoss())` at every size (weight 1 each), quantized after training (int8 ranges
  calibrated on the test corpus itself, the most favourable post-training calibration);
- `qat`: `MatryoshkaLoss(QuantizationAwareLoss(InfoNCELoss(), precisions))`, the int8 ranges tracked in training and
  read from the model's config;
- `st` (the peer): sentence-transformers' `MatryoshkaLoss(MultipleNegativesRankingLoss)`, codes made by the rule of
  its `quantize_embeddings` (`mrl_text.models.quantization` makes identical codes; int8 ranges calibrated on the
  corpus, as `quantize_embeddings(calibration_embeddings=)` would);
- `plain`: `InfoNCELoss` at the full size only (no Matryoshka sizes, no QAT), quantized after training as `mrl`.
Each model is scored by `mrl_text.evaluation.evaluate_grid`: every size x {float32, int8, binary, binary + float
re-ranking of the top 100} (int8: float queries against int8 documents; binary: codes against codes, Hamming).
Deployment (the issue's item 4): each model's `FunnelIndex(quantization="binary")` with stages
[(--funnel-size, keep), (full, 10)] against exact float search at full size of the same model: recall@10 at every
keep of --funnel-keeps (how short a binary shortlist may be for the same recall).

    nice python benchmarks/quality_qat.py --limit-train 480 --batch-size 16 --max-seq-length 32 --lr 5e-5 \
        --limit-eval 100 --methods qat   # CPU: about 20 minutes per method on 2 busy cores; a process per method,
    python benchmarks/quality_qat.py ... --reuse-runs mrl.json qat.json st.json   # then joined (same options)
    python benchmarks/quality_qat.py --device cuda --bf16 --seeds 3          # a GPU, the full test corpus
    python benchmarks/quality_qat.py --task stsb --report-name qat_stsb ...  # the STS-B regime
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import _quality_common as common
import quality_retrieval

METHODS = ("mrl", "qat", "st", "plain")
PRECISIONS = ["float32", "int8", "binary"]
CELLS = ["float32", "int8", "binary", "binary+rescore"]
TASKS = {"scifact": "SciFact test nDCG@10", "stsb": "STS-B test Spearman"}
STS_POSITIVE = 4.0  # STS-B train pairs scored at least this (of 5) are the InfoNCE positives


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_arguments(parser, "qat", report_name="qat")
    quality_retrieval.add_embedding_arguments(parser, "mrl,qat,st,plain", 2e-5, 1, 64, [384, 256, 128, 64, 32])
    parser.set_defaults(eval_max_seq_length=64)
    parser.add_argument("--task", choices=TASKS, default="scifact",
                        help="scifact: SciFact train -> test nDCG@10; stsb: STS-B train pairs scored >= 4 (InfoNCE "
                        "positives) -> STS-B test Spearman")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="the precisions QAT trains")
    parser.add_argument("--precision-weights", default=None,
                        help="QAT's loss weight per precision, comma-separated, in --precisions' order (default 1)")
    parser.add_argument("--binary-estimator", default="clipped", choices=["clipped", "tanh"],
                        help="QAT's binary estimator: the bits with a clipped straight-through gradient, or a "
                        "tempered tanh annealed towards the bits")
    parser.add_argument("--binary-temperature", default="1.0,0.1",
                        help="with --binary-estimator tanh: the start,end temperature (annealed geometrically)")
    parser.add_argument("--quantization-warmup", type=float, default=0.0,
                        help="QAT: the fraction of the steps that train float32 alone before the quantized terms")
    parser.add_argument("--rescore", type=int, default=100, help="binary + float re-ranking of the top N")
    parser.add_argument("--funnel-size", type=int, default=128, help="the binary first stage's size")
    parser.add_argument("--funnel-keeps", default="20,50,100,200", help="binary shortlist lengths to measure")
    parser.add_argument("--reuse-runs", nargs="*", default=[],
                        help="quality_qat JSON files of earlier runs with the same settings (e.g. methods run in "
                        "parallel processes): their (method, seed) runs are taken, not trained again (qat runs only "
                        "when trained with the same --precisions, weights, estimator and warm-up)")
    args = parser.parse_args(argv)
    args.regime = "retrieval"
    args = common.finish_arguments(args)
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.precision_weights = [float(w) for w in args.precision_weights.split(",")] if args.precision_weights else None
    args.binary_temperature = [float(t) for t in str(args.binary_temperature).split(",") if t.strip()]
    args.funnel_keeps = [int(k) for k in str(args.funnel_keeps).split(",") if k.strip()]
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods names {unknown}; choose from {', '.join(METHODS)}.")
    return args


def train_model(args, method, datasets_, order, seed, output_dir):
    """The trained model of `method` on the shared batch order (`st`: a SentenceTransformer)."""
    if method == "st":
        return quality_retrieval.train_sentence_transformers(args, datasets_, order, seed, output_dir)
    from mrl_text import MatryoshkaModel
    from mrl_text.losses import InfoNCELoss, MatryoshkaLoss
    from mrl_text.losses.quantization_aware import QuantizationAwareLoss

    torch.manual_seed(seed)
    model = MatryoshkaModel.from_encoder(args.model, matryoshka_dimensions=args.sizes[:1] if method == "plain"
                                         else args.sizes)
    base = InfoNCELoss()
    if method == "qat":
        base = QuantizationAwareLoss.from_config(model.config, base, precisions=args.precisions,
                                                 precision_weights=args.precision_weights,
                                                 binary_estimator=args.binary_estimator,
                                                 binary_temperature=args.binary_temperature,
                                                 quantization_warmup=args.quantization_warmup)
    loss = MatryoshkaLoss.from_config(model.config, base)
    rows = [datasets_[source][i] for source, batch in order for i in batch]
    common.train(model, rows, args, output_dir, seed, loss, in_order=True)
    return model.eval()


def stsb_data(args):
    """STS-B train pairs scored >= STS_POSITIVE as (anchor, positive) pairs; the test-split STS evaluator."""
    from mrl_text.data import load_sts
    from mrl_text.evaluation import STSEvaluator

    first, second, scores = load_sts(Path(args.data) / "stsb" / "train.tsv")
    pairs = [{"anchor": a, "positive": b} for a, b, score in zip(first, second, scores) if score >= STS_POSITIVE]
    pairs = common.subsample(pairs, args.limit_train)
    test = common.subsample(list(zip(*load_sts(Path(args.data) / "stsb" / "test.tsv"))), args.limit_eval)
    description = (f"{len(pairs)} STS-B train pairs scored >= {STS_POSITIVE:g} (InfoNCE positives); STS-B test "
                   f"({len(test)} pairs)")
    return [pairs], [STSEvaluator(*zip(*test), name="stsb")], description


def task_data(args):
    return quality_retrieval.retrieval_data(args) if args.task == "scifact" else stsb_data(args)


def funnel_recall(args, model, evaluators):
    """`{keep: recall@10}` of the binary funnel [(funnel_size, keep), (full, 10)] against exact float search at full
    size, over the first retrieval evaluator's queries and documents (keeps larger than the corpus are skipped)."""
    from adaptive_retrieval import relative_recall

    from mrl_text.deploy.funnel import FunnelIndex, exact_search
    from mrl_text.evaluation import as_embedder

    task = evaluators[0]
    embedder = as_embedder(model, batch_size=128, max_length=args.eval_max_seq_length, device=args.device)
    docs, queries = embedder.encode(task.doc_texts).numpy(), embedder.encode(task.query_texts).numpy()
    _, reference = exact_search(docs, queries, 10)
    recall = {}
    for keep in [k for k in args.funnel_keeps if 10 <= k <= len(docs)]:
        index = FunnelIndex(docs, stages=[(args.funnel_size, keep), (embedder.full_dim, 10)], quantization="binary")
        recall[str(keep)] = relative_recall(index.search(queries)[1], reference)
    return recall


def qat_settings(args):
    """What makes one `qat` run differ from another on the same data: recorded with each run, checked on reuse."""
    return {"precisions": list(args.precisions), "precision_weights": args.precision_weights,
            "binary_estimator": args.binary_estimator,
            "binary_temperature": args.binary_temperature if args.binary_estimator == "tanh" else None,
            "quantization_warmup": args.quantization_warmup}


def reusable(run, args):
    """Whether an earlier run stands for this one: any run of the other methods; a `qat` run only when it was trained
    with this run's QAT settings (runs from before the settings were recorded are taken as they are)."""
    return run["method"] != "qat" or run.get("qat_settings", qat_settings(args)) == qat_settings(args)


def run_one(args, method, seed):
    from mrl_text.evaluation import evaluate_grid

    timings = {}
    datasets_, evaluators, description = task_data(args)
    order = quality_retrieval.batch_order([len(d) for d in datasets_], args.batch_size, seed, args.epochs)
    with tempfile.TemporaryDirectory() as scratch, common.phase(f"{method}/seed{seed} train", timings):
        model = train_model(args, method, datasets_, order, seed, scratch)
    with common.phase(f"{method}/seed{seed} evaluate", timings):
        results = evaluate_grid(model, evaluators, dims=args.sizes, precisions=PRECISIONS, rescore=args.rescore,
                                max_length=args.eval_max_seq_length, batch_size=128, device=args.device)
    metric = evaluators[0].primary_metric
    values = {f"{c['precision']}@{c['dim']}": c["value"] for c in results.grid if c["metric"] == metric}
    recall = {}
    if args.task == "scifact":  # the funnel searches a corpus
        with common.phase(f"{method}/seed{seed} funnel", timings):
            recall = funnel_recall(args, model, evaluators)
    trained_ranges = sorted(int(k) for k in getattr(getattr(model, "config", None), "quantization_ranges", None) or {})
    return {"method": method, "seed": seed, "steps": len(order), "data": description, "values": values,
            "funnel_recall": recall, **({"qat_settings": qat_settings(args)} if method == "qat" else {}),
            "int8_ranges": "trained (config)" if trained_ranges else "calibrated on the test corpus",
            "timings": timings}


def mean(runs, method, cell, dim):
    return common.mean_of([r["values"][f"{cell}@{dim}"] for r in runs if r["method"] == method])


def targets(runs, sizes):
    """The issue's targets, from the mean over seeds (x100)."""
    methods = {r["method"] for r in runs}
    if not {"mrl", "qat"} <= methods:
        return []
    checks = []
    for dim in [d for d in (384, 256, 128) if d in sizes]:
        lost = mean(runs, "mrl", "float32", dim) - mean(runs, "mrl", "binary", dim)
        gained = mean(runs, "qat", "binary", dim) - mean(runs, "mrl", "binary", dim)
        checks.append((f"QAT recovers >= half the post-training binary loss at {dim} (gain - loss/2)",
                       gained - lost / 2, gained >= lost / 2))
    for dim in sizes:
        gap = mean(runs, "qat", "int8", dim) - mean(runs, "qat", "float32", dim)
        checks.append((f"QAT int8 within 0.3 of float at {dim}", gap, gap >= -0.3))
    for dim in sizes:
        gap = mean(runs, "qat", "float32", dim) - mean(runs, "mrl", "float32", dim)
        checks.append((f"QAT float within 0.3 of MRL float at {dim}", gap, gap >= -0.3))
    full = sizes[0]
    for dim, slack in ((full, 1.0), (256, 2.0)):
        if dim in sizes:
            gap = mean(runs, "qat", "binary", dim) - mean(runs, "qat", "float32", full)
            checks.append((f"moonshot: QAT binary {dim} within {slack:g} of QAT float {full}", gap, gap >= -slack))
    if 128 in sizes and 64 in sizes:
        gap = mean(runs, "qat", "binary", 128) - mean(runs, "mrl", "float32", 64)
        checks.append(("moonshot: QAT binary 128 >= MRL float 64", gap, gap >= 0))
    keeps = sorted({int(k) for r in runs if r["method"] in ("mrl", "qat") for k in r.get("funnel_recall", {})})
    for keep in keeps:  # item 4: the same recall from a shorter binary shortlist shows as higher recall at each keep
        recall = {m: common.mean_of([r["funnel_recall"][str(keep)] for r in runs if r["method"] == m])
                  for m in ("mrl", "qat")}
        gap = recall["qat"] - recall["mrl"]
        checks.append((f"binary funnel recall@10 at keep {keep}: QAT >= MRL (x100)", gap, gap >= 0))
    if "st" in methods:
        for cell in ("int8", "binary"):
            for dim in sizes:
                gap = mean(runs, "qat", cell, dim) - mean(runs, "st", cell, dim)
                checks.append((f"QAT ahead of the peer at {cell} {dim}", gap, gap > 0))
    return checks


def qat_description(args):
    """How `qat` treats binary codes and when its quantized terms start, for the report's setup."""
    if getattr(args, "binary_estimator", "clipped") == "tanh":
        start, end = (args.binary_temperature * 2)[:2]
        binary = (f"binary: tanh(sqrt(dim) x / T) scaled to unit length, T annealed geometrically from {start:g} to "
                  f"{end:g} over training (the +-1 codes at evaluation)")
    else:
        binary = "binary: +-1 codes scaled to unit length with a clipped straight-through gradient"
    warmup = getattr(args, "quantization_warmup", 0.0)
    when = f"from {warmup:.0%} of the steps on (float32 alone before)" if warmup else "every step"
    return f"{when}; {binary}"


def write(args, argv, runs, timings, partial=None):
    from mrl_text.models.quantization import bytes_per_vector

    methods = [m for m in args.methods.split(",") if any(r["method"] == m for r in runs)]
    setup = (
        f"From {common.model_name(args)}; {runs[0]['data']}; {runs[0]['steps']} steps of batch {args.batch_size} "
        f"({args.epochs} epoch(s); the same batches in the same order for every method), InfoNCE (scale 20) at "
        f"sizes {args.sizes} (weight 1 each), lr {args.lr}, warmup {args.warmup_ratio}, {args.max_seq_length} "
        f"training tokens, {args.eval_max_seq_length} evaluation tokens; seeds {sorted({r['seed'] for r in runs})} "
        f"(mean ± sd). qat trains precisions {args.precisions} (weights {args.precision_weights or 'all 1'}, "
        f"{qat_description(args)}; int8: fake quantization with moving-average "
        "ranges saved to config.quantization_ranges). plain: InfoNCE at the full size only. mrl, st and plain: "
        "int8 ranges calibrated on the test corpus "
        f"(post-training). binary+rescore (retrieval): the binary search's top {args.rescore} re-ranked by float "
        "cosine. "
        + common.subsampling_note(args) + (f" PARTIAL: {len(runs)} of {partial} runs." if partial else "")
    )
    report = {**common.report_head(argv, setup), "timings": timings, "runs": runs,
              "targets": targets(runs, args.sizes)}
    body = [f"{TASKS[args.task]} x100 (bytes per vector in brackets):", "",
            "| method | precision | " + " | ".join(map(str, args.sizes)) + " |",
            "|---|---|" + "---|" * len(args.sizes)]
    for method in methods:
        for cell in [c for c in CELLS if all(f"{c}@{d}" in r["values"] for r in runs for d in args.sizes)]:
            values = [common.cell([r["values"][f"{cell}@{d}"] for r in runs if r["method"] == method])
                      + f" [{bytes_per_vector(d, cell.split('+')[0])}]" for d in args.sizes]
            body.append(f"| {method} | {cell} | " + " | ".join(values) + " |")
    body += ["", "Best cell per byte budget (no rescoring; a cell no cheaper-or-equal cell beats):", "",
             f"| method | bytes: best cell ({TASKS[args.task].split()[-1]}) |", "|---|---|"]
    for method in methods:
        cells = sorted(((bytes_per_vector(d, c), -mean(runs, method, c, d), f"{c} {d}") for c in PRECISIONS
                        for d in args.sizes))
        front, best = [], float("-inf")
        for size, negative, name in cells:
            if -negative > best:
                best = -negative
                front.append(f"{size}: {name} ({best:.2f})")
        body.append(f"| {method} | " + "; ".join(front) + " |")
    keeps = sorted({int(k) for r in runs for k in r.get("funnel_recall", {})})
    if keeps:
        body += ["", f"Binary funnel [({args.funnel_size}, keep), ({args.sizes[0]}, 10)]: recall@10 of exact float "
                 f"search at {args.sizes[0]} of the same model (x100), over the test queries and abstracts above:", "",
                 "| method | " + " | ".join(f"keep {k}" for k in keeps) + " |", "|---|" + "---|" * len(keeps)]
        for method in methods:
            recalls = [[r["funnel_recall"][str(k)] for r in runs if r["method"] == method] for k in keeps]
            body.append(f"| {method} | " + " | ".join(map(common.cell, recalls)) + " |")
    body += common.targets_lines(report["targets"])
    body += ["", "Wall time per phase: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())]
    title = f"Quality: quantization-aware Matryoshka training ({TASKS[args.task].split(' test')[0]})"
    common.write_report(args, args.report_name, report, title, body)
    return report


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)
    methods = args.methods.split(",")
    jobs = [(m, s) for s in range(args.seeds) for m in methods]
    runs, timings, reused = [], {}, {}
    for path in args.reuse_runs:
        report = json.loads(Path(path).read_text())
        timings.update(report["timings"])
        reused.update({(run["method"], run["seed"]): run for run in report["runs"] if reusable(run, args)})
    for method, seed in jobs:
        run = reused.get((method, seed)) or run_one(args, method, seed)
        timings.update(run.pop("timings", {}))
        runs.append(run)
        if {(r["data"], r["steps"]) for r in runs} != {(runs[0]["data"], runs[0]["steps"])}:
            raise SystemExit(f"--reuse-runs: the runs differ in data or steps ({sorted({r['steps'] for r in runs})} "
                             "steps); reuse only runs made with the same settings.")
        write(args, argv, runs, timings, partial=len(jobs) if len(runs) < len(jobs) else None)
    return runs


if __name__ == "__main__":
    main()
