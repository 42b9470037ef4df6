"""Size x precision: quality against bytes per vector for every (size, precision) cell, and the issue's targets.

One `mrl_text.evaluation.evaluate_grid` pass over STS-B test (Spearman) and SciFact test (nDCG@10, binary and int8
search, then float rescoring of the top 100) at every trained size x {float32, int8, binary}. int8 ranges are
measured twice, and the two tables are compared side by side from the same embeddings (each text encoded once):
- `calibrated`: `model.calibrate_quantization` on held-out texts (STS-B train sentences and SciFact abstracts
  outside the evaluated corpus): what a saved model ships in config.json;
- `per task`: measured on the evaluated texts themselves (what sentence-transformers does without ranges).
Targets (issue 16): int8 within 0.5 points of float32 at every size; binary 256 + float rescoring of the top 100
within 1.0 nDCG@10 of float 256 on SciFact. Default model: all-MiniLM-L6-v2 as is (not MRL-trained).

    MRL_TEXT_DATA=../shared/data python benchmarks/precision.py --corpus-limit 1000
"""

import argparse
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from mrl_text.data import load_beir, load_sts
from mrl_text.evaluation import RetrievalEvaluator, STSEvaluator, evaluate_grid

from _report import command_line, header, machine, write_results  # first sibling: puts recipes/ on sys.path
from demo_data import shared_data_dir
from embedding_cache import cached_embeddings, load_model, model_label

BENCHMARKS = Path(__file__).resolve().parent


def scifact_subset(data, limit, query_limit=None, seed=0):
    """SciFact test with the corpus cut to `limit` abstracts: every abstract a kept test query judges relevant, plus
    a seeded random sample of the others (None: the whole corpus). Returns (corpus, queries, qrels, held-out texts)."""
    corpus, queries, qrels = load_beir(data / "scifact", split="test")
    if query_limit:
        qrels = {q: qrels[q] for q in random.Random(seed).sample(sorted(qrels), query_limit)}
        queries = {q: queries[q] for q in qrels}
    relevant = {d for docs in qrels.values() for d in docs}
    others = [d for d in corpus if d not in relevant]
    random.Random(seed).shuffle(others)
    keep = relevant | set(others[: max(0, (limit or len(corpus)) - len(relevant))])
    held_out = [d for d in others if d not in keep]
    return {d: t for d, t in corpus.items() if d in keep}, queries, qrels, [corpus[d] for d in held_out]


def memoized(model, cache_key, batch_size):
    """Make `model.encode` encode each text once, and keep full-size embeddings on disk under outputs/ between runs
    (`embedding_cache`): the second grid, and reruns, reuse them."""
    original = model.encode

    def encode(texts, **kwargs):
        if kwargs.get("dim") != model.config.embedding_size or kwargs.get("layers") is not None:
            return original(texts, **kwargs)
        encoder = SimpleNamespace(config=model.config, encode=original)
        return torch.from_numpy(cached_embeddings(encoder, list(texts), cache_key, max_length=kwargs["max_length"],
                                                  batch_size=batch_size, chunk=512))

    model.encode = encode


def target_checks(results, label):
    checks = []
    for task, metric in (("STS-B", "spearman"), ("SciFact", "ndcg@10")):
        by = {(c["dim"], c["precision"]): 100 * c["value"] for c in results.cells(task, metric)}
        for dim in sorted({d for d, _ in by}, reverse=True):
            gap = by[dim, "int8"] - by[dim, "float32"]
            checks.append((f"{label}: int8 {task} at {dim}: {gap:+.2f} vs float32 (>= -0.5)", gap >= -0.5))
    by = {(c["dim"], c["precision"]): 100 * c["value"] for c in results.cells("SciFact", "ndcg@10")}
    if (256, "binary+rescore") in by:
        gap = by[256, "binary+rescore"] - by[256, "float32"]
        checks.append((f"{label}: binary 256 + rescore top 100 on SciFact: {gap:+.2f} vs float32 256 (>= -1.0)",
                       gap >= -1.0))
    return checks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a Matryoshka model folder (default: all-MiniLM-L6-v2 as is)")
    parser.add_argument("--data", type=Path, default=shared_data_dir())
    parser.add_argument("--corpus-limit", type=int, default=None, help="SciFact abstracts kept (default: all 5,183)")
    parser.add_argument("--query-limit", type=int, default=None, help="SciFact test queries kept (default: all 300)")
    parser.add_argument("--sts-limit", type=int, default=None, help="STS-B test pairs kept (default: all 1,379)")
    parser.add_argument(
        "--calibration-texts", type=int, default=1000, help="held-out texts for calibrate_quantization"
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "results" / "precision")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.time()

    model = load_model(args.model)
    model.name_or_path = args.model or "all-MiniLM-L6-v2"  # the name in the tables and the plot
    memoized(model, args.model or "all-MiniLM-L6-v2", args.batch_size)
    pairs = list(zip(*load_sts(args.data / "stsb" / "test.tsv")))
    if args.sts_limit:
        pairs = random.Random(0).sample(pairs, args.sts_limit)
    stsb = STSEvaluator(*zip(*pairs), name="STS-B")
    corpus, queries, qrels, held_out = scifact_subset(args.data, args.corpus_limit, args.query_limit)
    scifact = RetrievalEvaluator(corpus, queries, qrels, name="SciFact", device="cpu")
    train_sentences = [s for pair in zip(*load_sts(args.data / "stsb" / "train.tsv")[:2]) for s in pair]
    half = args.calibration_texts // 2
    calibration = random.Random(0).sample(train_sentences, half) + held_out[: args.calibration_texts - half]
    # The grid hands every text to encode at once (the cache batches by --batch-size and saves every 512 texts).
    settings = {"batch_size": 1_000_000, "max_length": args.max_length}

    per_task = evaluate_grid(model, [stsb, scifact], rescore=100, **settings)  # no ranges yet: each task's own
    model.calibrate_quantization(calibration, batch_size=args.batch_size, max_length=args.max_length)
    calibrated = evaluate_grid(model, [stsb, scifact], rescore=100, **settings)

    checks = target_checks(calibrated, "calibrated") + target_checks(per_task, "per task")
    if len(corpus) < 5183:  # top 100 of a subsample is a larger share of it: also re-rank the same share of it
        share = max(1, round(100 * len(corpus) / 5183))
        scaled = evaluate_grid(model, [scifact], dims=[256], precisions=["float32", "binary"], rescore=share,
                               **settings)
        by = {c["precision"]: 100 * c["value"] for c in scaled.cells("SciFact")}
        gap = by["binary+rescore"] - by["float32"]
        checks.append((f"binary 256 + rescore top {share} of {len(corpus)} (the share top 100 is of 5,183): "
                       f"{gap:+.2f} vs float32 256 (>= -1.0)", gap >= -1.0))
    setup = (
        f"{model_label(args.model)}; STS-B test ({len(stsb.scores)} of 1,379 pairs); SciFact test "
        f"({len(scifact.query_ids)} of 300 queries, {len(corpus)} of 5,183 abstracts: every relevant one plus a "
        f"seeded random sample{'' if args.corpus_limit is None else ', subsampled for CPU time'}); max_length "
        f"{args.max_length}; int8 calibration on {len(calibration)} held-out texts ({half} STS-B train sentences, "
        f"{len(calibration) - half} SciFact abstracts outside the evaluated corpus). Bytes per vector: float32 4 x "
        "size, int8 1 x size, binary size / 8 (`+rescore` keeps binary/int8 codes in memory and reads the float "
        f"vectors of the top 100 from disk). {time.time() - began:.0f} s in all."
    )
    report = {"command": command_line(argv), "machine": machine(), "setup": setup,
              "calibrated": calibrated.to_dict(), "per_task": per_task.to_dict(),
              "targets": [{"check": text, "met": met} for text, met in checks]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    calibrated.plot_budget(args.out.with_suffix(".png"))
    lines = header("Size x precision: quality against bytes per vector", report)
    lines += ["## Targets", ""] + [f"- {'met' if met else 'MISSED'}: {text}" for text, met in checks] + [""]
    lines += ["## int8 ranges from calibrate_quantization (held-out texts)", "", calibrated.grid_markdown()]
    lines += ["## int8 ranges measured on each task's own texts", "", per_task.grid_markdown()]
    lines += [f"![quality against bytes per vector]({args.out.with_suffix('.png').name})", ""]
    write_results(args.out, report, lines)
    print("\n".join(f"{'met' if met else 'MISSED'}: {text}" for text, met in checks))


if __name__ == "__main__":
    main()
