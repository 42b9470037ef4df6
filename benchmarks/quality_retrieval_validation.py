"""The quality suite's `retrieval-val` regime (`python benchmarks/quality.py retrieval-val`): the recipe study for
`retrieval` on a validation split of SciFact's training queries (no test data read). Can MRL keep plain InfoNCE's full
size without losing its small sizes?

A cheap proxy of `retrieval`: the encoder's embedding layer and bottom layers are frozen
(`MatryoshkaModel.freeze_layers`; `--trainable-layers` train), every variant is a `MatryoshkaLoss` (and, for the
schedules, a `SizeSchedule`) trained by `MatryoshkaTrainer` on the seed's shared batches, and scored by a
`RetrievalEvaluator` (nDCG@10) on the held-out queries against their relevant abstracts plus `--val-corpus` others.
Finished (variant, seed) runs are kept under --out and reused by a later study that names more variants.
"""

import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from mrl_text import SizeSchedule

import _quality_common as common
from quality_retrieval import batch_order

REGIMES = ("retrieval-val",)

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
    return {"pairs": pairs, "val_queries": {q: queries[q] for q in val_ids},
            "val_qrels": {q: qrels[q] for q in val_ids}, "docs": {d: corpus[d] for d in doc_ids},
            "n_train_queries": len(train_ids)}


def variant_training(args, options):
    """(loss, size schedule or None) of one variant, from the library's losses and `SizeSchedule`."""
    from mrl_text.losses import InfoNCELoss, MatryoshkaLoss

    base = InfoNCELoss(scale=20.0)
    if options is None:
        return MatryoshkaLoss(base, args.sizes[:1]), None
    options = dict(options)
    full_only, tail = options.pop("full_only_fraction", 0.0), options.pop("full_only_tail", 0.0)
    ramp = options.pop("ramp_fraction", 0.0)
    weights = [options.pop("full_weight", 1.0)] + [1.0] * (len(args.sizes) - 1)
    loss = MatryoshkaLoss(base, args.sizes, weights, **options)
    if tail:
        return loss, FullSizeTail(ramp, full_only, tail)
    return loss, SizeSchedule(ramp, full_only) if ramp or full_only else None


class FullSizeTail(SizeSchedule):
    """A `SizeSchedule` whose last `tail_fraction` of the steps train the full size alone (the `mrl_w4_tail25`
    variant; the study's option, not the library's: it did not win)."""

    def __init__(self, smaller_sizes_warmup_fraction, full_size_only_fraction, tail_fraction):
        super().__init__(smaller_sizes_warmup_fraction, full_size_only_fraction)
        self.tail_fraction = tail_fraction

    def scale_at(self, step, max_steps):
        if step >= (1.0 - self.tail_fraction) * max_steps:
            return 0.0
        return super().scale_at(step, max_steps)


def frozen_layer_count(args):
    """How many encoder layers stay frozen: all but the top `--trainable-layers`."""
    from transformers import AutoConfig

    depth = AutoConfig.from_pretrained(args.model).num_hidden_layers
    if not 1 <= args.trainable_layers <= depth:
        raise SystemExit(
            f"--trainable-layers {args.trainable_layers}: the encoder has {depth} layers; train 1 to all of them."
        )
    return depth - args.trainable_layers


def validation_evaluator(data):
    from mrl_text.evaluation import RetrievalEvaluator

    return RetrievalEvaluator(data["docs"], data["val_queries"], data["val_qrels"], name="validation")


def retrieval_run_file(args, name, seed):
    """Where one finished (variant, seed) run is kept: runs are deterministic on CPU, so a later study that names
    more variants reuses them. The name holds every setting that changes a run."""
    settings = [args.lr, args.epochs, args.batch_size, args.max_seq_length, args.warmup_ratio, args.val_fraction,
                args.val_corpus, args.trainable_layers, args.limit_train, args.limit_eval, args.sizes, args.device,
                "MatryoshkaTrainer"]  # runs of the earlier hand-written loop are not reused
    key = hashlib.sha1(json.dumps([settings, RETRIEVAL_VARIANTS[name]]).encode()).hexdigest()[:12]
    return Path(args.out) / "runs" / f"{name}-seed{seed}-{key}.json"


def retrieval_variant_job(job):
    """Train one variant on the seed's batches (its order and dropout; every variant of a seed shares them); its
    validation nDCG@10 at every size."""
    from mrl_text import MatryoshkaModel
    from mrl_text.evaluation import evaluate

    args, name, seed = job["args"], job["variant"], job["seed"]
    kept = retrieval_run_file(args, name, seed)
    if kept.is_file():
        run = json.loads(kept.read_text())
        return {**run, "values": {int(d): v for d, v in run["values"].items()}}
    data = retrieval_validation_data(args)
    torch.manual_seed(seed)  # the same starting weights for every variant (from_encoder adds none to seed)
    model = MatryoshkaModel.from_encoder(args.model, matryoshka_dimensions=args.sizes)
    model.freeze_layers(frozen_layer_count(args))
    start = time.perf_counter()
    if name != "none":
        order = batch_order([len(data["pairs"])], args.batch_size, seed, args.epochs)
        rows = [{"anchor": data["pairs"][i][0], "positive": data["pairs"][i][1]} for _, batch in order for i in batch]
        loss, schedule = variant_training(args, RETRIEVAL_VARIANTS[name])
        with tempfile.TemporaryDirectory() as scratch:
            # The study's recipe as it was measured: AdamW's weight decay 0.01 on every weight, no clipping.
            common.train(model, rows, args, scratch, seed, loss, in_order=True, schedule=schedule,
                         weight_decay=0.01, max_grad_norm=0.0)
    results = evaluate(model, [validation_evaluator(data)], dims=args.sizes, max_length=args.max_seq_length,
                       batch_size=128)
    values = {r["dim"]: r["value"] for r in results.rows if r["metric"] == "ndcg@10"}
    print(name, seed, {d: round(100 * v, 2) for d, v in values.items()}, flush=True)
    run = {"variant": name, "seed": seed, "options": RETRIEVAL_VARIANTS[name], "values": values,
           "train_seconds": round(time.perf_counter() - start, 1)}
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(run))
    return run


def run_retrieval_validation(args, argv):
    unknown = sorted(set(args.variants.split(",")) - set(RETRIEVAL_VARIANTS))
    if unknown:
        raise SystemExit(f"--variants names {unknown}; choose from {', '.join(RETRIEVAL_VARIANTS)}.")
    frozen = frozen_layer_count(args)
    data = retrieval_validation_data(args)
    n = len(data["pairs"])
    args.steps = len(batch_order([n], args.batch_size, 0, args.epochs))
    # The untrained encoder has no seed; every trained variant runs with seeds 0..N-1.
    jobs = [{"args": args, "variant": name, "seed": seed} for seed in range(args.seeds)
            for name in args.variants.split(",") if seed == 0 or name != "none"]
    timings = {}
    with common.phase("variants", timings):
        runs = common.run_jobs(retrieval_variant_job, jobs, args.workers, args.device)
    return retrieval_validation_report(args, argv, data, n, frozen, runs, timings)


def retrieval_validation_report(args, argv, data, n, frozen, runs, timings):
    setup = (
        f"Validation only (no SciFact test data read): SciFact's {data['n_train_queries'] + len(data['val_queries'])} "
        f"training queries split (seeded) into {data['n_train_queries']} for training ({n} query-abstract pairs) and "
        f"{len(data['val_queries'])} held out; those are scored (nDCG@10) against a sub-corpus of their "
        f"{len(data['docs']) - args.val_corpus} relevant abstracts plus {args.val_corpus} random others. From "
        f"{common.model_name(args)}: the embedding layer and the bottom {frozen} layers frozen (`freeze_layers`), the "
        "top "
        f"{args.trainable_layers} trained, mean pooling; {args.max_seq_length} tokens for training and evaluation; "
        f"{args.steps} steps of batch {args.batch_size} ({args.epochs} epochs), every variant of a seed on the same "
        "batches in the same order (seed s: batch order, dropout and size sampling drawn with s; the split and the "
        f"starting weights are the same for all); {args.seeds} seed(s), mean ± sd over seeds; differences from plain "
        f"are paired by seed. InfoNCE (scale 20), MatryoshkaTrainer (AdamW lr {args.lr}, weight decay 0.01, no "
        f"gradient clipping), warmup {args.warmup_ratio}, linear decay; nDCG@10 from RetrievalEvaluator. "
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


def add_parsers(commands):
    sub = commands.add_parser("retrieval-val", help="recipe study for `retrieval` on a validation split of train")
    common.add_common_arguments(sub, "retrieval_validation", report_name="retrieval_validation")
    sub.set_defaults(sizes=",".join(map(str, common.SIZES)))
    sub.add_argument("--variants", default=",".join(RETRIEVAL_VARIANTS), help=f"of {', '.join(RETRIEVAL_VARIANTS)}")
    sub.add_argument("--lr", type=float, default=2e-5)
    sub.add_argument("--epochs", type=int, default=3)
    sub.add_argument("--val-fraction", type=float, default=0.2, help="share of the training queries held out")
    sub.add_argument("--val-corpus", type=int, default=1500, help="random abstracts added to the relevant ones")
    sub.add_argument("--trainable-layers", type=int, default=2,
                     help="top encoder layers trained (the embedding layer and the rest frozen: freeze_layers)")


def run(args, argv):
    return run_retrieval_validation(args, argv)
