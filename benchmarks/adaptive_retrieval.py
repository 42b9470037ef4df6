"""Funnel retrieval vs exact full-size search on real text embeddings, and at 1M vectors.

(a) Recall@10 of several funnel settings relative to exact full-size search, on a real corpus: every sentence of
    the development data (deduplicated; `recipes/demo_data.py`), embedded by the MRL model; 1,000 texts
    are held out as queries.
(b) Query latency (one query at a time) and throughput (1,000 queries in one batch) at 1M vectors: the real
    embeddings plus perturbed copies of them (Gaussian noise of `--noise` times each coordinate's standard
    deviation, re-normalized) up to 1M. Funnel settings, FAISS exact flat search at full size, and
    sentence-transformers' quantized search with rescoring (binary and int8 corpora) run side by side in one run,
    on one thread each, interleaved and repeated (the median is reported). Multiply-adds per query are counted
    for the ratio to exact search.

    OMP_NUM_THREADS=1 python benchmarks/adaptive_retrieval.py            # demo model: all-MiniLM-L6-v2
    OMP_NUM_THREADS=1 python benchmarks/adaptive_retrieval.py --model out/   # a trained MRL model folder
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mrl_text.deploy.funnel import FunnelIndex, build_exact_index, exact_search  # noqa: E402
from mrl_text.models.modeling_matryoshka import truncate_embeddings  # noqa: E402

from _report import command_line, machine, write_results  # noqa: E402  (before the other siblings: puts recipes/ on sys.path)
from demo_data import load_text_corpus  # noqa: E402
from embedding_cache import (  # noqa: E402
    REPO,
    cached_embeddings,
    demo_model_path,
    load_model,
    model_label,
)

# Every sentence-like source up to 100k+ texts: SNLI, Flickr8k captions, emotion, Banking77, MRPC (107,924 unique).
SENTENCE_SOURCES = ["snli", "flickr8k_captions", "emotion", "banking77", "mrpc"]


def funnel_settings(full):
    """(name, FunnelIndex keyword arguments, run at 1M too) of the settings compared; sizes are trained ones."""
    return [
        ("flat 32>128>384 (paper's stages)", {"stages": [(32, 400), (128, 100), (full, 10)]}, True),
        ("flat 64>256>384", {"stages": [(64, 2000), (256, 100), (full, 10)]}, False),
        ("flat 128>384", {"stages": [(128, 400), (full, 10)]}, True),
        ("int8 flat 128>384", {"stages": [(128, 400), (full, 10)], "quantization": "int8"}, True),
        ("ivf 128>384", {"stages": [(128, 400), (full, 10)], "shortlist": "ivf", "nlist": 256, "nprobe": 48}, True),
        ("binary 256>384", {"stages": [(256, 1000), (full, 10)], "quantization": "binary"}, True),
    ]


def relative_recall(ids, reference):
    """Fraction of exact full-size top-k found by the funnel, averaged over queries."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids.tolist(), reference.tolist())]))


def multiply_adds(index, n_queries):
    """Multiply-adds per query of a funnel's float work, vs `n * full` for exact search: the first stage counted
    as a scan of every document (flat), of the centroids and the visited lists (IVF), or as the distance
    computations FAISS measured (HNSW, after `faiss.cvar.hnsw_stats.reset()` and a search of `n_queries`)."""
    import faiss

    n = len(index)
    (d1, _), *rest = index.stages
    if index.quantization == "binary":
        return None  # Hamming distances (XOR + popcount) are no multiply-adds: no FLOPs ratio for binary codes
    if index.shortlist == "flat":
        first = n * d1
    elif index.shortlist == "ivf":
        ivf = faiss.extract_index_ivf(index.shortlist_index)
        first = (ivf.nlist + n * ivf.nprobe / ivf.nlist) * d1
    else:
        first = faiss.cvar.hnsw_stats.ndis / n_queries * d1
    counts = [min(c, n) for _, c in index.stages]
    return first + sum(count * d for count, (d, _) in zip(counts, rest))


def make_scaled(embeddings, total, noise, seed=0):
    """The real embeddings, then perturbed copies of random real ones (noise x per-coordinate std), up to `total`."""
    rng = np.random.default_rng(seed)
    std = embeddings.std(0).astype(np.float32)
    out = np.empty((total, embeddings.shape[1]), dtype=np.float32)
    out[: len(embeddings)] = embeddings
    for start in range(len(embeddings), total, 100_000):
        stop = min(total, start + 100_000)
        source = embeddings[rng.integers(len(embeddings), size=stop - start)]
        jitter = rng.standard_normal(source.shape, dtype=np.float32) * (noise * std)
        out[start:stop] = truncate_embeddings(source + jitter, None, True)
    return out


def time_one_by_one(search, queries):
    began = time.perf_counter()
    for q in queries:
        search(q[None])
    return (time.perf_counter() - began) / len(queries)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="trained MRL model folder (default: the demo all-MiniLM-L6-v2)")
    parser.add_argument("--sources", nargs="+", default=SENTENCE_SOURCES, help="corpus folders (add scifact)")
    parser.add_argument("--limit", type=int, help="use only the first N corpus texts (quick runs)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--scale", type=int, default=1_000_000, help="vectors for the latency part (0: skip)")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--latency-queries", type=int, default=20, help="single-query searches per repeat")
    parser.add_argument("--batch-queries", type=int, default=200, help="batch for throughput and recall at scale")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads of every timed search")
    parser.add_argument("--build-threads", type=int, default=2, help="threads while building indexes")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "adaptive_retrieval"))
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    texts, counts = load_text_corpus(sources=args.sources)
    texts = texts[: args.limit] if args.limit else texts
    model = load_model(args.model)
    full = model.config.embedding_size
    embeddings = cached_embeddings(model, texts, args.model or demo_model_path())
    query_rows = rng.choice(len(texts), size=args.queries, replace=False)
    is_query = np.zeros(len(texts), bool)
    is_query[query_rows] = True
    queries, docs = embeddings[query_rows], embeddings[~is_query]
    print(f"corpus: {len(docs)} documents, {len(queries)} held-out queries, {full} dims")

    results = {
        "command": command_line(), "machine": machine(), "threads": args.threads, "model": model_label(args.model),
        "trained_sizes": model.config.matryoshka_dimensions,
        "corpus": {"texts": len(texts), "documents": len(docs), "queries": len(queries), "sources": counts,
                   "dedup": "exact string match after stripping whitespace"},
        "real_corpus": [], "scaled": None,
    }

    # (a) recall on the real corpus
    _, reference = exact_search(docs, queries, k=10)
    for name, kwargs, _ in funnel_settings(full):
        index = FunnelIndex(docs, dims=model.config.matryoshka_dimensions, **kwargs)
        _, ids = index.search(queries, k=10)
        recall = relative_recall(ids, reference)
        results["real_corpus"].append({"setting": name, "stages": index.stages, "recall@10": recall})
        print(f"  {name:24s} relative recall@10 = {recall:.4f}")

    if args.scale:
        results["scaled"] = scaled_benchmark(args, docs, queries, model.config.matryoshka_dimensions, full)

    write_results(args.out, results, markdown(results))
    print(f"wrote {args.out}.json and .md")


def scaled_benchmark(args, docs, queries, dims, full):
    import faiss
    from sentence_transformers.util.quantization import quantize_embeddings, semantic_search_faiss

    began = time.time()
    vectors = make_scaled(docs, args.scale, args.noise)
    print(f"scaled set: {len(vectors)} x {full} ({time.time() - began:.0f}s)")
    batch = np.ascontiguousarray(queries[: args.batch_queries])
    unit_batch = truncate_embeddings(batch, None, True)
    latency_queries = batch[: args.latency_queries]

    exact = build_exact_index(vectors)
    began = time.perf_counter()
    _, reference = exact.search(unit_batch, 10)
    exact_batch_seconds = time.perf_counter() - began

    methods = {"exact flat 384 (FAISS)": lambda q: exact.search(truncate_embeddings(q, None, True), 10)}
    info = {"exact flat 384 (FAISS)": {"recall@10": 1.0, "multiply_adds": float(len(vectors) * full),
                                      "batch_seconds": [exact_batch_seconds]}}
    for name, kwargs, at_scale in funnel_settings(full):
        if not at_scale:
            continue
        began = time.time()
        faiss.omp_set_num_threads(args.build_threads)  # building is not what is timed
        index = FunnelIndex(vectors, dims=dims, **kwargs)
        faiss.omp_set_num_threads(args.threads)
        build = time.time() - began
        faiss.cvar.hnsw_stats.reset()
        began = time.perf_counter()
        _, ids = index.search(batch, 10)
        seconds = time.perf_counter() - began
        methods[name] = index.search
        info[name] = {"recall@10": relative_recall(ids, reference), "build_seconds": build,
                      "multiply_adds": multiply_adds(index, len(batch)), "batch_seconds": [seconds]}
        print(f"  {name:24s} built in {build:.0f}s, recall@10 {info[name]['recall@10']:.4f}")

    # sentence-transformers: binary corpus (sign bits, exact Hamming search), float queries, rescoring of
    # top_k * multiplier candidates against the unpacked bits (their recipe).
    began = time.time()
    st_index = faiss.IndexBinaryFlat(full)
    st_index.add(quantize_embeddings(vectors, precision="ubinary"))
    build = time.time() - began
    for multiplier in (4, 10):
        name = f"sentence-transformers binary + rescore x{multiplier}"

        def st_search(q, multiplier=multiplier):
            hits, _ = semantic_search_faiss(q, corpus_index=st_index, corpus_precision="ubinary", top_k=10,
                                            rescore=True, rescore_multiplier=multiplier)
            return hits

        began = time.perf_counter()
        hits = st_search(unit_batch)
        seconds = time.perf_counter() - began
        ids = np.array([[h["corpus_id"] for h in row] for row in hits])
        methods[name] = st_search
        info[name] = {"recall@10": relative_recall(ids, reference), "build_seconds": build,
                      "multiply_adds": None, "batch_seconds": [seconds]}
        print(f"  {name:24s} recall@10 {info[name]['recall@10']:.4f}")

    # Latency: one query at a time, methods interleaved, repeated; throughput: the 1,000-query batch, repeated.
    latency = {name: [] for name in methods}
    for repeat in range(args.repeats):
        for name, search in methods.items():
            single = unit_batch[: len(latency_queries)] if name.startswith("sentence") else latency_queries
            latency[name].append(time_one_by_one(search, single))
        for name, search in methods.items():
            if repeat == 0:
                continue  # the first batch timing was taken with the recall pass
            began = time.perf_counter()
            search(unit_batch if name.startswith("sentence") else batch)
            info[name]["batch_seconds"].append(time.perf_counter() - began)
        print(
            f"  repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{n}: {v[-1] * 1e3:.2f} ms" for n, v in latency.items())
        )

    exact_name = "exact flat 384 (FAISS)"
    exact_latency = statistics.median(latency[exact_name])
    exact_throughput = len(batch) / statistics.median(info[exact_name]["batch_seconds"])
    rows = []
    for name in methods:
        median_latency = statistics.median(latency[name])
        throughput = len(batch) / statistics.median(info[name]["batch_seconds"])
        adds = info[name]["multiply_adds"]
        rows.append({
            "method": name, "recall@10": info[name]["recall@10"], "latency_ms": median_latency * 1e3,
            "latency_ms_all": [v * 1e3 for v in latency[name]], "speedup_latency": exact_latency / median_latency,
            "throughput_qps": throughput, "speedup_throughput": throughput / exact_throughput,
            "multiply_adds_per_query": adds,
            "flops_ratio": (len(vectors) * full) / adds if adds else None,
            "build_seconds": info[name].get("build_seconds"),
        })
    return {"vectors": len(vectors), "real": len(docs), "noise": args.noise,
            "how": f"{len(docs)} real document embeddings + {len(vectors) - len(docs)} copies of random real ones "
                   f"with Gaussian noise ({args.noise} x each coordinate's std), re-normalized",
            "queries_latency": len(latency_queries), "queries_batch": len(batch), "repeats": args.repeats,
            "rows": rows}


def markdown(results):
    lines = [
        "# Adaptive (funnel) retrieval", "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; FAISS and torch on {results['threads']} thread(s).  ",
        f"Model: {results['model']}; trained sizes {results['trained_sizes']}.", "",
        "## (a) Recall on the real corpus", "",
        f"{results['corpus']['texts']} unique texts ({results['corpus']['dedup']}) from "
        + ", ".join(f"{k} {v}" for k, v in results["corpus"]["sources"].items())
        + f"; {results['corpus']['queries']} random texts held out as queries, {results['corpus']['documents']} "
          "documents. Relative recall@10 = overlap of the funnel's top-10 with exact full-size search's top-10.", "",
        "| setting | stages (size, keep) | relative recall@10 |", "|---|---|---|",
    ]
    for row in results["real_corpus"]:
        lines.append(f"| {row['setting']} | {row['stages']} | {row['recall@10']:.4f} |")
    scaled = results["scaled"]
    if scaled:
        lines += [
            "",
            f"## (b) Latency and throughput at {scaled['vectors']:,} vectors",
            "",
            f"The set: {scaled['how']}. Latency: median over {scaled['repeats']} repeats of the mean time of "
            f"{scaled['queries_latency']} single-query searches; throughput: {scaled['queries_batch']} queries in "
            "one batch (recall@10 here: of those queries, against exact flat search on the same 1M vectors). "
            "Speed-ups are against FAISS exact flat search at full size measured in the same run; the FLOPs ratio "
            "counts multiply-adds per query (exact: n x 384; int8 codes counted like floats; binary codes have none "
            "in their first stage, which reads 32 bytes per document for 256 bits instead of 1,536 for exact).",
            "",
            "| method | recall@10 | latency ms | latency speed-up | throughput q/s | throughput speed-up | FLOPs "
            "ratio | build s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in scaled["rows"]:
            flops = f"{row['flops_ratio']:.1f}x" if row["flops_ratio"] else "-"
            build = f"{row['build_seconds']:.0f}" if row["build_seconds"] is not None else "-"
            lines.append(
                f"| {row['method']} | {row['recall@10']:.4f} | {row['latency_ms']:.2f} | "
                f"{row['speedup_latency']:.1f}x | {row['throughput_qps']:.0f} | {row['speedup_throughput']:.1f}x | "
                f"{flops} | {build} |"
            )
    return lines


if __name__ == "__main__":
    main()
