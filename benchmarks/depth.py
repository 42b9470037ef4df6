"""Depth (2D Matryoshka): encode throughput per layer count, and quality at (layers, dims) cells after training with
and without the depth option and with sentence-transformers' Matryoshka2dLoss (the peer), on the same batches.

From all-MiniLM-L6-v2 (6 layers, `--model`), on the shared data folder (`--data`):

- throughput: `model.encode(texts, layers=k)` for every k, STS-B test sentences, rounds interleaved (k = 6..1 in
  each round, so every count sees the same machine load), median seconds per round, ratio to the full model.
- quality: SNLI (dev+test) triplets, the same batches in the same order for every run: `mrl` (MatryoshkaLoss,
  InfoNCE), `depth` (the same + `matryoshka_depth` at the library's defaults unless --n-layers-per-step, --alignment,
  --alignment-weight, --layer-weights, --depths say otherwise: every earlier depth each step, averaged, with a
  similarity-distribution KL to the detached final layer), `st2d` (sentence-transformers' Matryoshka2dLoss over
  MultipleNegativesRankingLoss, every size per step like ours, its other options at their defaults). STS-B Spearman
  at every (layers, dims) cell on --split test (report) or dev (choose settings: results/depth_validation.md); the
  peer is scored through `MatryoshkaModel.from_sentence_transformer` + `encode(layers=k)` (the same truncation).
  --seeds N repeats every method with seeds 0..N-1 (batch order and sampled depths), mean ± half the spread.

    OMP_NUM_THREADS=1 python benchmarks/depth.py --limit-train 512 --batch-size 32 --lr 5e-5 --limit-eval 300 \
        --throughput-texts 256 --rounds 3          # throughput (results/depth.md; its quality rows are history)
    OMP_NUM_THREADS=1 python benchmarks/depth.py --limit-train 1536 --batch-size 32 --lr 5e-5 --limit-eval 300 \
        --skip-throughput --seeds 2 --name depth_quality          # quality, 48 steps x 2 seeds (CPU, subsampled)
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_common as common  # noqa: E402
from _report import header  # noqa: E402
from quality import batch_order  # noqa: E402  (the shared batch order of the quality suite)

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
    parser.add_argument("--alignment-weight", type=float, default=1.0, help="`depth`: depth_alignment_weight")
    parser.add_argument("--alignment", default="similarity_kl", help="`depth`: depth_alignment (similarity_kl, cosine)")
    parser.add_argument("--n-layers-per-step", type=int, default=-1, help="`depth`: earlier depths per step (-1: all)")
    parser.add_argument("--layer-weights", default=None, help="`depth`: one weight per --depths (default 1 each)")
    parser.add_argument("--name", default="depth", help="result files <--results>/<name>.json and .md")
    args = common.finish_arguments(parser.parse_args(argv))
    args.layers = [int(k) for k in args.layers.split(",")]
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
    ordered = [rows[i] for _, batch in order for i in batch]
    training_args = common.training_arguments(
        args, output_dir, seed, len(order), loss="infonce", num_train_epochs=1, matryoshka_depth=depth,
        depth_alignment_weight=args.alignment_weight, depth_alignment=args.alignment,
        n_layers_per_step=args.n_layers_per_step, layer_weights=args.layer_weights)
    common.in_order_trainer()(model=model.to(args.device), args=training_args, train_dataset=ordered).train()
    return model.eval()


def train_peer(args, rows, order, output_dir, seed):
    """sentence-transformers' Matryoshka2dLoss(MultipleNegativesRankingLoss) on the same batches in the same order."""
    from datasets import Dataset
    from sentence_transformers.losses import Matryoshka2dLoss, MultipleNegativesRankingLoss

    from mrl_text import MatryoshkaModel

    model = common.peer_model(args, seed)
    fixed = [batch for _, batch in order]

    def shared_order(*unused, **unused_kw):  # sentence-transformers' batch sampler: the shared batches, in order
        return fixed

    loss = Matryoshka2dLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=args.sizes, n_dims_per_step=-1)
    common.peer_trainer(args, model, loss, Dataset.from_list(rows), output_dir, seed, len(order),
                        batch_sampler=shared_order).train()
    model.save(str(Path(output_dir) / "peer"))
    peer = MatryoshkaModel.from_sentence_transformer(str(Path(output_dir) / "peer"), matryoshka_dimensions=args.sizes)
    return peer.eval()


def sts_grid(model, args, sts):
    """STS-B Spearman (x100) at every (layers, dims) cell: one encoding pass per layer count."""
    from mrl_text.evaluation import Embedder, STSEvaluator, evaluate

    evaluator = STSEvaluator(*zip(*sts), name="stsb")
    grid = {}
    for k in args.layers:
        def encode(texts, k=k):
            return model.encode(texts, layers=k, batch_size=64, max_length=args.eval_max_seq_length)

        embedder = Embedder(encode, model.config.embedding_size, args.sizes, model.config.normalize, f"layers={k}")
        results = evaluate(embedder, [evaluator])
        grid[k] = {r["dim"]: 100 * r["value"] for r in results.rows if r["metric"] == evaluator.primary_metric}
    return grid


def quality(args, report):
    """Train and score every method with every seed (the seed draws the batch order, shared by the methods, and the
    sampled depths); the report files are rewritten after each run (a stopped run keeps its rows)."""
    from mrl_text import MatryoshkaModel

    rows, sts = training_triplets(args), sts_rows(args)
    orders = [batch_order([len(rows)], args.batch_size, seed, args.epochs) for seed in range(args.seeds)]
    runs = {} if args.skip_base else {
        "base": summarize([0.0], [sts_grid(MatryoshkaModel.from_encoder(args.model).eval(), args, sts)])}
    report["quality"] = {"triplets": len(rows), "steps": len(orders[0]), "sts_pairs": len(sts), "seeds": args.seeds,
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
            grids.append(sts_grid(model, args, sts))
            runs[method] = summarize(seconds, grids)
            write_report(args, report)


def summarize(seconds, grids):
    """Per-seed grids, their mean and spread (max - min) per cell."""
    cells = [(k, d) for k in grids[0] for d in grids[0][k]]
    mean = {k: {} for k in grids[0]}
    spread = {k: {} for k in grids[0]}
    for k, d in cells:
        values = [g[k][d] for g in grids]
        mean[k][d], spread[k][d] = statistics.fmean(values), max(values) - min(values)
    return {"train_s": [round(s, 1) for s in seconds], "seeds": len(grids), "grid": mean, "spread": spread,
            "grids": grids}


def grid_table(grid, sizes, layers, spread=None, signed=False):
    """Markdown table of a (layers, dims) grid; with `spread`, `mean ± half the max - min over seeds`."""
    def cell(k, d):
        return f"{grid[k][d]:{'+' if signed else ''}.2f}" + (f" ± {spread[k][d] / 2:.2f}" if spread else "")

    lines = ["| layers | " + " | ".join(map(str, sizes)) + " |", "|---|" + "---|" * len(sizes)]
    return lines + [f"| {k} | " + " | ".join(cell(k, d) for d in sizes) + " |" for k in layers]


def difference_table(runs, method, other, sizes, layers):
    """`method - other` per cell (means over seeds)."""
    diff = {k: {d: runs[method]["grid"][k][d] - runs[other]["grid"][k][d] for d in sizes} for k in layers}
    return ["", f"`{method}` - `{other}` (means over seeds), layers x dims:", ""] + grid_table(diff, sizes, layers,
                                                                                               signed=True)


def comparable(runs, method, other):
    """Both trained, with the same seeds (a run stopped between seeds holds more seeds of the earlier methods)."""
    return method in runs and other in runs and runs[method]["seeds"] == runs[other]["seeds"]


def targets(report, args):
    checks = []
    speed = {r["layers"]: r["ratio_to_full"] for r in report["throughput"]["rows"]}
    if 3 in speed:
        checks.append(("layers=3 throughput >= 1.8x full", speed[3] - 1.8, speed[3] >= 1.8))
    runs = report.get("quality", {}).get("runs", {})
    if comparable(runs, "depth", "st2d"):
        worst = min((runs["depth"]["grid"][k][d] - runs["st2d"]["grid"][k][d], k, d) for k in args.layers
                    for d in args.sizes)
        checks.append((f"depth >= peer at every cell (worst: layers {worst[1]}, dim {worst[2]})", worst[0],
                       worst[0] >= 0))
    if comparable(runs, "depth", "mrl"):
        full_k, full_d = max(args.layers), args.sizes[0]
        diff = runs["depth"]["grid"][full_k][full_d] - runs["mrl"]["grid"][full_k][full_d]
        checks.append(("full depth and size: depth >= no-depth - 0.3", diff + 0.3, diff >= -0.3))
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
        setup += (f"Quality: {q['triplets']} SNLI (dev+test) triplets, {q['steps']} steps of batch {args.batch_size} "
                  f"(the same batches for every method; seeds 0..{q['seeds'] - 1} draw the batch order and the sampled "
                  f"depths; tables show the mean ± half the spread), lr {args.lr}, {args.max_seq_length} training "
                  f"tokens; `depth`: trained depths {','.join(map(str, args.depths))}, layer weights {weights}, "
                  f"{per_step} per step (averaged), {args.alignment} alignment weight "
                  f"{args.alignment_weight}; STS-B {args.split} ({q['sts_pairs']} pairs) Spearman x100. "
                  + common.subsampling_note(args))
    report["setup"] = setup
    body = []
    if report["throughput"]["rows"]:
        body += ["Encode throughput per layer count (side by side, one run):", "",
                 "| layers | median s | texts/s | ratio to full |", "|---|---|---|---|"]
        body += [f"| {r['layers']} | {r['median_s']:.2f} | {r['texts_per_s']:.1f} | {r['ratio_to_full']:.2f}x |"
                 for r in report["throughput"]["rows"]]
    runs = report.get("quality", {}).get("runs", {})
    for method, run in runs.items():
        title = (f"STS-B {args.split} Spearman x100, `{method}` ({run['seeds']} seed(s), training "
                 f"{statistics.fmean(run['train_s']):.0f} s each), layers x dims:")
        body += ["", title, ""]
        body += grid_table(run["grid"], args.sizes, args.layers, run["spread"] if run["seeds"] > 1 else None)
    for method, other in (("depth", "st2d"), ("depth", "mrl")):
        if comparable(runs, method, other):
            body += difference_table(runs, method, other, args.sizes, args.layers)
    report["targets"] = targets(report, args)
    body += common.targets_lines(report["targets"])
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    text = "\n".join(header("Depth: 2D Matryoshka throughput and quality", report) + body) + "\n"
    (results / f"{args.name}.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
