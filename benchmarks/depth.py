"""Depth (2D Matryoshka): encode throughput per layer count, and quality at (layers, dims) cells after training with
and without the depth option and with sentence-transformers' Matryoshka2dLoss (the peer), on the same batches.

From all-MiniLM-L6-v2 (6 layers, `--model`), on the shared data folder (`--data`):

- throughput: `model.encode(texts, layers=k)` for every k, STS-B test sentences, rounds interleaved (k = 6..1 in
  each round, so every count sees the same machine load), median seconds per round, ratio to the full model.
- quality: SNLI (dev+test) triplets, the same batches in the same order for every run: `mrl` (MatryoshkaLoss,
  InfoNCE), `depth` (the same in a `MatryoshkaDepthLoss` at the library's defaults unless --n-layers-per-step,
  --alignment, --alignment-weight, --layer-weights, --depths say otherwise: every earlier depth each step, averaged,
  with a similarity-distribution KL to the detached final layer), `st2d` (sentence-transformers' Matryoshka2dLoss over
  MultipleNegativesRankingLoss, every size per step like ours, its other options at their defaults). Every trained
  model is scored at every (layers, dims, precision) cell by `mrl_text.evaluation.evaluate_grid` (one encoding pass
  per layer count): on --split test, STS-B Spearman, SciFact nDCG@10 (binary and int8 codes also with float
  rescoring) and the Banking77 probe, subsampled by --limit-eval as `quality.py finished` does; on --split dev (to
  choose settings: results/depth_validation.md) STS-B dev only. The peer is scored through
  `MatryoshkaModel.from_sentence_transformer` + `encode(layers=k)` (the same truncation).
  --seeds N repeats every method with seeds 0..N-1 (batch order and sampled depths), mean ± half the spread.

    OMP_NUM_THREADS=1 python benchmarks/depth.py --limit-train 512 --batch-size 32 --lr 5e-5 --limit-eval 300 \
        --throughput-texts 256 --rounds 3          # throughput (results/depth.md; its quality rows are history)
    OMP_NUM_THREADS=1 python benchmarks/depth.py --limit-train 1536 --batch-size 32 --lr 5e-5 --limit-eval 300 \
        --skip-throughput --seeds 2 --name depth_quality          # STS-B only then (history), 48 steps x 2 seeds
    OMP_NUM_THREADS=1 python benchmarks/depth.py --limit-train 3072 --batch-size 32 --lr 5e-5 --limit-eval 600 \
        --skip-throughput --seeds 2 --name depth_grid             # the three tasks' grids, 96 steps x 2 seeds
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import _quality_common as common
from _report import header, write_results
from quality_finished import finished_evaluation  # the quality suite's test tasks
from quality_retrieval import batch_order  # and its shared batches

METHODS = ("depth", "st2d", "mrl")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser, "depth")
    parser.set_defaults(sizes="384,128,64,32,16", batch_size=32, max_seq_length=64, regime="depth")
    parser.add_argument("--layers", default="6,4,3,2", help="layer counts scored (the trained depths: every count)")
    parser.add_argument("--methods", default=",".join(METHODS), help="trained in this order")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eval-max-seq-length", type=int, default=128)
    parser.add_argument("--throughput-texts", type=int, default=512, help="STS-B test sentences encoded per round")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds (median reported)")
    parser.add_argument("--skip-training", action="store_true", help="throughput only")
    parser.add_argument("--skip-throughput", action="store_true", help="training and quality only")
    parser.add_argument("--skip-base", action="store_true", help="do not score the untrained model")
    parser.add_argument("--split", choices=("dev", "test"), default="test",
                        help="STS-B split scored: dev to choose settings, test once for the chosen one")
    parser.add_argument("--depths", default="6,5,4,3,2,1", help="`depth`: the trained depths (matryoshka_layers)")
    parser.add_argument("--alignment-weight", type=float, default=1.0,
                        help="`depth`: MatryoshkaDepthLoss alignment_weight")
    parser.add_argument("--alignment", default="similarity_kl",
                        help="`depth`: MatryoshkaDepthLoss alignment (similarity_kl, cosine)")
    parser.add_argument("--n-layers-per-step", type=int, default=-1, help="`depth`: earlier depths per step (-1: all)")
    parser.add_argument("--layer-weights", default=None, help="`depth`: one weight per --depths (default 1 each)")
    parser.add_argument("--tasks", default="stsb,scifact,banking77",
                        help="test tasks scored (--split test): STS-B, SciFact retrieval, Banking77 probe")
    parser.add_argument("--precisions", default="float32,int8,binary", help="stored precisions scored")
    parser.add_argument("--rescore", type=int, default=100, help="retrieval: float re-ranking of the top N codes")
    parser.add_argument("--name", default="depth", help="result files <--results>/<name>.json and .md")
    args = common.finish_arguments(parser.parse_args(argv))
    args.layers = [int(k) for k in args.layers.split(",")]
    args.precisions = args.precisions.split(",")
    args.depths = [int(k) for k in args.depths.split(",")]
    if args.layer_weights is not None:
        args.layer_weights = [float(w) for w in args.layer_weights.split(",")]
    return args


def sts_rows(args, split=None):
    from mrl_text.data import load_sts

    s1, s2, scores = load_sts(Path(args.data) / "stsb" / f"{split or args.split}.tsv")
    return common.subsample(list(zip(s1, s2, scores)), args.limit_eval)


def throughput(args):
    """Seconds per encode of the same texts at every layer count (median over interleaved rounds)."""
    from mrl_text import MatryoshkaModel

    model = MatryoshkaModel.from_encoder(args.model, matryoshka_layers=list(range(6, 0, -1))).eval()
    depth = model.config.encoder.num_hidden_layers
    texts = common.subsample(sorted({t for a, b, _ in sts_rows(args, "test") for t in (a, b)}), args.throughput_texts)
    model.encode(texts[:64], max_length=args.eval_max_seq_length)  # warm-up
    seconds = {k: [] for k in range(depth, 0, -1)}
    for _ in range(args.rounds):
        for k in seconds:
            start = time.perf_counter()
            model.encode(texts, layers=k, batch_size=32, max_length=args.eval_max_seq_length)
            seconds[k].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    return {"texts": len(texts), "rounds": args.rounds, "seconds": seconds,
            "rows": [{"layers": k, "median_s": median[k], "texts_per_s": len(texts) / median[k],
                      "ratio_to_full": median[depth] / median[k]} for k in seconds]}


def training_triplets(args):
    from datasets import concatenate_datasets

    from mrl_text.data import nli_triplets, read_table

    snli = concatenate_datasets([read_table(Path(args.data) / "snli" / f"{s}.tsv") for s in ("dev", "test")])
    return common.subsample(list(nli_triplets(snli)), args.limit_train)


def train_mrl_text(args, rows, order, depth, output_dir, seed):
    from mrl_text import MatryoshkaModel

    torch.manual_seed(seed)
    model = MatryoshkaModel.from_encoder(args.model, matryoshka_dimensions=args.sizes, matryoshka_layers=args.depths)
    from mrl_text.losses import MatryoshkaDepthLoss

    ordered = [rows[i] for _, batch in order for i in batch]
    training_args = common.training_arguments(args, output_dir, seed, len(order), num_train_epochs=1)
    loss = common.training_loss(model, "infonce")
    if depth:
        loss = MatryoshkaDepthLoss.from_config(
            model.config, loss, layer_weights=args.layer_weights, n_layers_per_step=args.n_layers_per_step,
            alignment_weight=args.alignment_weight, alignment=args.alignment)
    common.in_order_trainer()(model=model.to(args.device), args=training_args, train_dataset=ordered, loss=loss,
                              size_schedule=common.size_schedule(args)).train()
    return model.eval()


def train_peer(args, rows, order, output_dir, seed):
    """sentence-transformers' Matryoshka2dLoss(MultipleNegativesRankingLoss) on the same batches in the same order."""
    from datasets import Dataset
    from sentence_transformers.losses import Matryoshka2dLoss, MultipleNegativesRankingLoss

    from mrl_text import from_sentence_transformer

    model = common.peer_model(args, seed)
    fixed = [batch for _, batch in order]

    def shared_order(*unused, **unused_kw):  # sentence-transformers' batch sampler: the shared batches, in order
        return fixed

    loss = Matryoshka2dLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=args.sizes, n_dims_per_step=-1)
    common.peer_trainer(args, model, loss, Dataset.from_list(rows), output_dir, seed, len(order),
                        batch_sampler=shared_order).train()
    model.save(str(Path(output_dir) / "peer"))
    peer = from_sentence_transformer(str(Path(output_dir) / "peer"), matryoshka_dimensions=args.sizes)
    return peer.eval()


def evaluators(args):
    """(evaluators, description): STS-B on --split; on test also SciFact retrieval and the Banking77 probe
    (--tasks), subsampled by --limit-eval as the quality suite's finished regime subsamples them."""
    from mrl_text.evaluation import STSEvaluator

    if args.split == "dev":  # choosing settings: STS-B dev only (SciFact and Banking77 have no dev split here)
        sts = sts_rows(args)
        return [STSEvaluator(*zip(*sts), name="stsb")], f"STS-B dev ({len(sts)} pairs)"
    tasks, description, _ = finished_evaluation(args)
    return tasks, description


def model_grid(model, args, evaluators_):
    """`{task: {precision: {layers: {dim: primary metric x100}}}}` from `evaluate_grid`: every (layers, dims,
    precision) cell from one encoding pass per layer count. int8 ranges: the model's calibrated ones when saved,
    else each task's own vectors (none of the trained models here is calibrated)."""
    from mrl_text.evaluation import evaluate_grid

    depth = model.config.encoder.num_hidden_layers
    results = evaluate_grid(model, evaluators_, dims=args.sizes, precisions=args.precisions, layers=args.layers,
                            rescore=args.rescore, batch_size=64, max_length=args.eval_max_seq_length)
    grid = {}
    for e in evaluators_:
        for c in results.cells(e.name):
            k = depth if c["layers"] is None else c["layers"]
            grid.setdefault(e.name, {}).setdefault(c["precision"], {}).setdefault(k, {})[c["dim"]] = 100 * c["value"]
    return grid


def quality(args, report):
    """Train and score every method with every seed (the seed draws the batch order, shared by the methods, and the
    sampled depths); the report files are rewritten after each run (a stopped run keeps its rows)."""
    from mrl_text import MatryoshkaModel

    rows, (tasks, description) = training_triplets(args), evaluators(args)
    orders = [batch_order([len(rows)], args.batch_size, seed, args.epochs) for seed in range(args.seeds)]
    runs = {} if args.skip_base else {
        "base": summarize([0.0], [model_grid(MatryoshkaModel.from_encoder(args.model).eval(), args, tasks)])}
    report["quality"] = {"triplets": len(rows), "steps": len(orders[0]), "seeds": args.seeds, "tasks": description,
                         "runs": runs}
    trained = {method: ([], []) for method in args.methods.split(",")}  # seconds, grids
    for seed, order in enumerate(orders):  # seeds outermost: a stopped run still compares every method
        for method, (seconds, grids) in trained.items():
            with tempfile.TemporaryDirectory() as scratch:
                start = time.perf_counter()
                if method == "st2d":
                    model = train_peer(args, rows, order, scratch, seed)
                else:
                    model = train_mrl_text(args, rows, order, method == "depth", scratch, seed)
                seconds.append(time.perf_counter() - start)
            grids.append(model_grid(model, args, tasks))
            runs[method] = summarize(seconds, grids)
            write_report(args, report)


def cells_of(grid):
    """(task, precision, layers, dim) of every cell of a `model_grid`."""
    return [(t, p, k, d) for t in grid for p in grid[t] for k in grid[t][p] for d in grid[t][p][k]]


def summarize(seconds, grids):
    """Per-seed grids, their mean and spread (max - min) per cell."""
    mean, spread = {}, {}
    for t, p, k, d in cells_of(grids[0]):
        values = [g[t][p][k][d] for g in grids]
        mean.setdefault(t, {}).setdefault(p, {}).setdefault(k, {})[d] = statistics.fmean(values)
        spread.setdefault(t, {}).setdefault(p, {}).setdefault(k, {})[d] = max(values) - min(values)
    return {"train_s": [round(s, 1) for s in seconds], "seeds": len(grids), "grid": mean, "spread": spread,
            "grids": grids}


def grid_table(grid, sizes, layers, spread=None, signed=False):
    """Markdown table of a (layers, dims) grid; with `spread`, `mean ± half the max - min over seeds`."""
    def cell(k, d):
        return f"{grid[k][d]:{'+' if signed else ''}.2f}" + (f" ± {spread[k][d] / 2:.2f}" if spread else "")

    lines = ["| layers | " + " | ".join(map(str, sizes)) + " |", "|---|" + "---|" * len(sizes)]
    return lines + [f"| {k} | " + " | ".join(cell(k, d) for d in sizes) + " |" for k in layers]


TASK_TITLES = {"stsb": "STS-B Spearman", "scifact": "SciFact nDCG@10", "banking77": "Banking77 probe accuracy"}


def sub_grid(run, task, precision="float32", key="grid"):
    return run[key][task][precision]


def difference_table(runs, method, other, task, sizes, layers):
    """`method - other` per float32 cell of `task` (means over seeds)."""
    mine, theirs = sub_grid(runs[method], task), sub_grid(runs[other], task)
    diff = {k: {d: mine[k][d] - theirs[k][d] for d in sizes} for k in layers}
    return ["", f"{TASK_TITLES[task]}: `{method}` - `{other}` (float32, means over seeds), layers x dims:",
            ""] + grid_table(diff, sizes, layers, signed=True)


def precision_table(run, task, sizes, layers):
    """Each stored precision minus float32 at every (layers, dims) cell of one run (means over seeds)."""
    grid = run["grid"][task]
    lines = ["| layers | precision | " + " | ".join(map(str, sizes)) + " |", "|---|---|" + "---|" * len(sizes)]
    for k in layers:
        for precision in grid:
            if precision != "float32":
                lines.append(f"| {k} | {precision} | " + " | ".join(
                    f"{grid[precision][k][d] - grid['float32'][k][d]:+.2f}" for d in sizes) + " |")
    return lines


def comparable(runs, method, other):
    """Both trained, with the same seeds (a run stopped between seeds holds more seeds of the earlier methods)."""
    return method in runs and other in runs and runs[method]["seeds"] == runs[other]["seeds"]


def targets(report, args):
    checks = []
    speed = {r["layers"]: r["ratio_to_full"] for r in report["throughput"]["rows"]}
    if 3 in speed:
        checks.append(("layers=3 throughput >= 1.8x full", speed[3] - 1.8, speed[3] >= 1.8))
    runs = report.get("quality", {}).get("runs", {})
    full_k, full_d = max(args.layers), args.sizes[0]
    for task in runs.get("depth", {}).get("grid", {}):
        title = TASK_TITLES[task]
        if comparable(runs, "depth", "st2d"):
            mine, peer = sub_grid(runs["depth"], task), sub_grid(runs["st2d"], task)
            worst = min((mine[k][d] - peer[k][d], k, d) for k in args.layers for d in args.sizes)
            checks.append((f"{title}: depth >= peer at every cell (worst: layers {worst[1]}, dim {worst[2]})",
                           worst[0], worst[0] >= 0))
        if comparable(runs, "depth", "mrl"):
            diff = sub_grid(runs["depth"], task)[full_k][full_d] - sub_grid(runs["mrl"], task)[full_k][full_d]
            checks.append((f"{title}: full depth and size, depth >= no-depth - 0.3", diff + 0.3, diff >= -0.3))
        grid = runs["depth"]["grid"][task]
        if "int8" in grid and task != "banking77":  # the int8 target: STS-B and SciFact, every trained size
            worst = min((grid["int8"][full_k][d] - grid["float32"][full_k][d], d) for d in args.sizes)
            checks.append((f"{title}: depth model, int8 within 0.5 of float32 at full depth (worst: dim {worst[1]})",
                           worst[0] + 0.5, worst[0] >= -0.5))
    return checks


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    report = {**common.report_head(argv, ""), "threads": torch.get_num_threads()}
    report["throughput"] = {"rows": []} if args.skip_throughput else throughput(args)
    write_report(args, report)
    if not args.skip_training:
        quality(args, report)
    return report


def write_report(args, report):
    """depth.json and depth.md under --results from what `report` holds so far."""
    setup = (f"From {Path(args.model).name} (all-MiniLM-L6-v2, 6 layers); torch threads {torch.get_num_threads()} "
             f"(run with OMP_NUM_THREADS=1). ")
    if report["throughput"]["rows"]:
        setup += (f"Throughput: {report['throughput']['texts']} STS-B test sentences, batch 32, "
                  f"{args.eval_max_seq_length} tokens max, {args.rounds} interleaved rounds, median. ")
    if "quality" in report:
        q = report["quality"]
        weights = ",".join(f"{w:g}" for w in args.layer_weights) if args.layer_weights else "1 each"
        per_step = ("every earlier depth" if args.n_layers_per_step == -1
                    else f"{args.n_layers_per_step} sampled depth(s)")
        setup += (
            f"Quality: {q['triplets']} SNLI (dev+test) triplets, {q['steps']} steps of batch {args.batch_size} "
            f"(the same batches for every method; seeds 0..{q['seeds'] - 1} draw the batch order and the sampled "
            f"depths; tables show the mean ± half the spread), lr {args.lr}, {args.max_seq_length} training "
            f"tokens; `depth`: trained depths {','.join(map(str, args.depths))}, layer weights {weights}, "
            f"{per_step} per step (averaged), {args.alignment} alignment weight "
            f"{args.alignment_weight}; scored on {q['tasks']} (x100) at {', '.join(args.precisions)} "
            f"(int8 ranges from each task's own vectors; retrieval's bit codes also with float rescoring of the "
            f"top {args.rescore}), one encoding pass per layer count (`evaluate_grid`). "
            + common.subsampling_note(args)
        )
    report["setup"] = setup
    body = []
    if report["throughput"]["rows"]:
        body += ["Encode throughput per layer count (side by side, one run):", "",
                 "| layers | median s | texts/s | ratio to full |", "|---|---|---|---|"]
        body += [f"| {r['layers']} | {r['median_s']:.2f} | {r['texts_per_s']:.1f} | {r['ratio_to_full']:.2f}x |"
                 for r in report["throughput"]["rows"]]
    runs = report.get("quality", {}).get("runs", {})
    tasks = next(iter(runs.values()))["grid"] if runs else {}
    for task in tasks:
        body += ["", f"## {TASK_TITLES[task]} x100"]
        for method, run in runs.items():
            title = (f"`{method}` ({run['seeds']} seed(s), training {statistics.fmean(run['train_s']):.0f} s each), "
                     "float32, layers x dims:")
            body += ["", title, ""]
            body += grid_table(sub_grid(run, task), args.sizes, args.layers,
                               sub_grid(run, task, key="spread") if run["seeds"] > 1 else None)
        for method, other in (("depth", "st2d"), ("depth", "mrl")):
            if comparable(runs, method, other):
                body += difference_table(runs, method, other, task, args.sizes, args.layers)
        for method in ("depth", "st2d"):
            if method in runs and len(runs[method]["grid"][task]) > 1:
                body += ["", f"`{method}`: each precision minus float32 (means over seeds):", ""]
                body += precision_table(runs[method], task, args.sizes, args.layers)
    report["targets"] = targets(report, args)
    body += common.targets_lines(report["targets"])
    text = write_results(Path(args.results) / args.name, report,
                         header("Depth: 2D Matryoshka throughput and quality", report) + body)
    print(text, flush=True)


if __name__ == "__main__":
    main()
