"""The quality suite's `retrieval` regime (`python benchmarks/quality.py retrieval`), and the embedding training it
shares with `finished` (quality_finished.py): the same batches, in the same order, for every method.

SciFact's training queries -> SciFact test nDCG@10: plain InfoNCE, MRL (the recipe chosen on validation by
`retrieval-val`: weight 4 on the full size, the smaller sizes ramped in over training), MRL with the paper's recipe
(`mrl_paper`), sentence-transformers' MatryoshkaLoss (the peer), FF-64 and FF-32; same batches and steps for all.
`plain_adaptor` is a recipe in two steps: the plain model (the same training), then a Matryoshka adaptor fit with
`mrl_text.adaptor.add_adaptor` on the SciFact abstracts and the training pairs only (supervised), which adds the small
sizes while the full size stays plain's. `--scifact-split disjoint` keeps no training query whose relevant abstract is
relevant to a test query (SciFact's own splits share 181 relevant abstracts).
Ours train with `MatryoshkaTrainer`, the peer with `SentenceTransformerTrainer`; every model is scored by
`mrl_text.evaluation.evaluate` with a `RetrievalEvaluator`.
"""

import argparse
import random
import tempfile

import numpy as np
import torch

import _quality_common as common

REGIMES = ("retrieval",)
PLAIN_ADAPTOR = "plain_adaptor"  # the plain model, then a supervised adaptor on the training pairs



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
    """Train one embedding model (method, seed) on the regime's data and score it with the regime's evaluators.

    `plain_adaptor` trains the plain model, scores it (`encoder_values`: the plain row, same encoder), fits the
    supervised adaptor (`fit_adaptor`) and scores again (`values`)."""
    args, method, seed = job["args"], job["method"], job["seed"]
    timings = {}
    datasets_, evaluators, description = job["data"](args)
    order = batch_order([len(d) for d in datasets_], args.batch_size, seed, args.epochs)
    label = f"{args.regime}/{method}/seed{seed}"
    trained = "plain" if method == PLAIN_ADAPTOR else method
    with tempfile.TemporaryDirectory() as scratch, common.phase(f"{label} train", timings):
        model = train_embedding_model(args, trained, datasets_, order, seed, scratch)
    dims = [int(method[2:])] if method.startswith("ff") else args.sizes
    with common.phase(f"{label} evaluate", timings):
        values = evaluate_values(args, model, evaluators, dims)
    run = {"method": method, "seed": seed, "steps": len(order), "data": description, "values": values,
           "timings": timings}
    if method == PLAIN_ADAPTOR:
        run["encoder_values"] = values
        with common.phase(f"{label} adaptor fit", timings):
            adaptor = fit_adaptor(args, model, datasets_, evaluators, seed)
        with common.phase(f"{label} evaluate with adaptor", timings):
            run["values"] = evaluate_values(args, model, evaluators, dims)
        run["fit_summary"] = adaptor.config.fit_summary
    return run


def evaluate_values(args, model, evaluators, dims):
    """`{evaluator name: {dim: primary metric}}` of `model` through `mrl_text.evaluation.evaluate`."""
    from mrl_text.evaluation import evaluate

    results = evaluate(model, evaluators, dims=dims, max_length=args.eval_max_seq_length, batch_size=128)
    return {e.name: {r["dim"]: r["value"] for r in results.rows if r["metric"] == e.primary_metric}
            for e in evaluators}


def fit_adaptor(args, model, datasets_, evaluators, seed):
    """Attach a supervised Matryoshka adaptor to the trained `model`: fit on the abstracts the test retrieves from
    (unlabelled, as a user fits on the corpus they index) and the training (query, relevant abstract) pairs only,
    `objective="both"` (unsupervised, then supervised); the library's other defaults (per-size choice, gate). The fit
    covers the sizes below the full one: the full size stays the plain model's, which is why the recipe trains plain
    (held-out training queries cannot judge an adapted full size: SciFact's share relevant abstracts)."""
    from mrl_text.adaptor import add_adaptor

    pairs = [(row["anchor"], row["positive"]) for dataset in datasets_ for row in dataset]
    corpus = [text for e in evaluators for text in e.doc_texts]
    epochs = {"epochs": args.adaptor_epochs, "supervised_epochs": args.adaptor_epochs} if args.adaptor_epochs else {}
    below_full = [size for size in args.sizes if size < max(args.sizes)]
    return add_adaptor(model, corpus, pairs, matryoshka_dimensions=below_full, objective="both", seed=seed, **epochs,
                       batch_size=128, max_length=args.eval_max_seq_length, show_progress_bar=False,
                       description="SciFact abstracts and training pairs")


def retrieval_data(args):
    """SciFact's training queries as (anchor=query, positive=relevant abstract) pairs; the test-split evaluator."""
    from mrl_text.evaluation import RetrievalEvaluator

    corpus, train_queries, train_qrels, queries, qrels, split_note = common.load_scifact(args)
    pairs = [{"anchor": train_queries[q], "positive": corpus[d]}
             for q in sorted(train_qrels) for d in sorted(train_qrels[q]) if train_qrels[q][d] > 0]
    pairs = common.subsample(pairs, args.limit_train)
    if args.limit_eval:  # the kept queries against their relevant abstracts plus a sample of the others
        kept = common.subsample(sorted(qrels), args.limit_eval)
        qrels, queries = {q: qrels[q] for q in kept}, {q: queries[q] for q in kept}
        relevant = {d for q in kept for d in qrels[q]}
        others = common.subsample(sorted(set(corpus) - relevant), 4 * args.limit_eval)
        corpus = {d: corpus[d] for d in sorted(relevant) + others}
    description = (f"{len(pairs)} (query, relevant abstract) pairs of SciFact's training queries; SciFact test "
                   f"({len(queries)} queries, {len(corpus)} abstracts); {split_note}")
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
    # issue 33: plain training + a supervised adaptor keeps plain's full size and reaches the peer at the small sizes
    check(f"plain + adaptor >= plain at {sizes[0]}", v(PLAIN_ADAPTOR, sizes[0]) - v("plain", sizes[0]))
    for d in (64, 32, 16):
        check(f"plain + adaptor >= peer (st) at {d}", v(PLAIN_ADAPTOR, d) - v("st", d))
    for d in (64, 32, 16):
        check(f"plain + adaptor >= MRL at {d}", v(PLAIN_ADAPTOR, d) - v("mrl", d))
    return checks


def plain_rows(results):
    """The plain row of every `plain_adaptor` run: the same encoder scored before the adaptor was attached."""
    return [{**{k: v for k, v in r.items() if k not in ("encoder_values", "fit_summary")}, "method": "plain",
             "values": r["encoder_values"], "from": PLAIN_ADAPTOR} for r in results if r["method"] == PLAIN_ADAPTOR]


def run_retrieval(args, argv):
    methods = args.methods.split(",")
    timings = {}
    # plain_adaptor scores its encoder before fitting: that is the plain row, without training plain twice
    trained = [m for m in methods if not (m == "plain" and PLAIN_ADAPTOR in methods)]
    jobs = [{"args": args, "method": m, "seed": s, "data": retrieval_data} for s in range(args.seeds) for m in trained]

    def with_plain(done):
        return done + plain_rows(done) if len(trained) < len(methods) else done

    def partial_report(done):
        if len(done) < len(jobs):
            write_retrieval_report(args, argv, methods, with_plain(done), timings, partial=len(jobs))

    with common.phase("retrieval runs", timings):
        results = common.run_jobs(embedding_job, jobs, args.workers, args.device, on_result=partial_report)
    return write_retrieval_report(args, argv, methods, with_plain(results), timings)


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
        "trained alone; plain_adaptor: the plain model, then mrl_text.adaptor.add_adaptor on the test corpus's "
        f"abstracts (unlabelled) and the training pairs (objective both, epochs {args.adaptor_epochs or 'default'}, "
        "the library's per-size choice and gate; "
        "the plain row is the same encoder before the adaptor when both are run). "
        + common.subsampling_note(args)
        + (f" PARTIAL: {len(results)} of {partial} runs." if partial else "")
    )
    report = {**common.report_head(argv, setup), "timings": timings, "runs": results,
              "targets": retrieval_targets(results, args.sizes)}
    body = ["SciFact test nDCG@10 x100:", ""] + embedding_table(results, methods, "scifact", args.sizes)
    body += common.targets_lines(report["targets"])
    body += adaptor_choice_lines(results)
    body += ["", "Wall time per phase: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())]
    common.write_report(args, args.report_name, report, "Quality: retrieval adaptation (SciFact)", body)
    return report


def adaptor_choice_lines(results):
    """Markdown lines: per plain_adaptor run, the candidate each size kept (or truncation) and its validation gain."""
    lines = []
    for r in results:
        summary = r.get("fit_summary")
        if r["method"] != PLAIN_ADAPTOR or not summary:
            continue
        kept = ", ".join(f"{d}: {v.get('candidate') or 'truncation'} ({100 * v['truncation']:.1f} -> "
                         f"{100 * v['adaptor']:.1f})" for d, v in summary["validation"].items())
        lines.append(f"- seed {r['seed']}: {kept} ({summary.get('validation_metric')})")
    return ["", "plain_adaptor: what the gate kept per size:", ""] + lines if lines else []


def add_embedding_arguments(sub, methods, lr, epochs, tokens, sizes):
    """The options of a regime that trains embedding models on shared batches (`retrieval`, `finished`)."""
    sub.set_defaults(max_seq_length=tokens, sizes=",".join(map(str, sizes)))
    sub.add_argument("--methods", default=methods)
    sub.add_argument("--lr", type=float, default=lr, help="encoder learning rate")
    sub.add_argument("--head-lr", type=float, default=None, help="projections' learning rate (default: --lr)")
    sub.add_argument("--epochs", type=int, default=epochs)
    sub.add_argument("--eval-max-seq-length", type=int, default=256)


def check_methods(args, named):
    """Every --methods entry is one of `named` or ffN with N no larger than the encoder's size."""
    for method in args.methods.split(","):
        size = method[2:] if method.startswith("ff") else None
        if method not in named and not (size and size.isdigit() and 0 < int(size) <= args.encoder_size):
            raise SystemExit(f"--methods names {method!r}; use " + ", ".join(named)
                             + f" or ffN with N in 1..{args.encoder_size} (a projection no larger than the "
                             "encoder's embedding size).")


def add_parsers(commands):
    sub = commands.add_parser("retrieval")
    common.add_common_arguments(sub, "retrieval", report_name="retrieval")
    add_embedding_arguments(sub, "plain,mrl,mrl_paper,st,ff64,ff32", 2e-5, 3, 128, common.SIZES)
    # The default MRL recipe was chosen on a validation split of SciFact train with the whole encoder trained
    # (3 seeds, quality_retrieval_validation_full.md: weight 4, the smaller sizes ramped in over the first
    # half); `--mrl-full-weight 1 --smaller-sizes-warmup-fraction 0` is the paper's.
    common.add_scifact_split_argument(sub)
    sub.add_argument("--adaptor-epochs", type=int, default=None,
                     help="plain_adaptor: the adaptor fit's epochs, unsupervised and supervised (default: fit's)")
    sub.add_argument("--mrl-full-weight", type=float, default=4.0, help="MRL's weight on the full size (the others 1)")
    sub.add_argument("--smaller-sizes-warmup-fraction", type=float, default=0.5,
                     help="MRL's smaller sizes' weights rise linearly from 0 over this share of the steps")
    sub.add_argument("--full-size-only-fraction", type=float, default=0.0,
                     help="MRL trains only the full size for this share of the steps, then every size")


def check_arguments(args):
    check_methods(args, ("plain", "mrl", "st", "mrl_paper", PLAIN_ADAPTOR))


def run(args, argv):
    return run_retrieval(args, argv)
