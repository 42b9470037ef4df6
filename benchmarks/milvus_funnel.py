"""Funnel retrieval in FAISS and in Milvus, side by side, one thread where the engine allows.

(a) FAISS at `--scale` vectors (the adaptive-retrieval generator: real embeddings plus perturbed copies): exact flat
    search at full size, the `FunnelIndex` settings below, and FAISS HNSW on the full floats at the first efSearch
    reaching the funnel's recall; batch throughput (`--queries` in one call), single-query p50 / p99, recall@10
    against exact search, and the bytes each holds in RAM (the funnel's full vectors memory-mapped from disk).
(b) Milvus Lite at `--milvus-scale` vectors of the same set: one-stage search on the full vector (FLAT) against the
    `MilvusFunnelIndex` (float-32 and float-64 first stages, FLAT and HNSW); recall@10, single-query p50 / p99,
    ingest rate, and the process's resident-memory growth (Milvus Lite runs inside it).
(c) SciFact (BEIR test queries, abstracts embedded by all-MiniLM-L6-v2): nDCG@10 of the Milvus funnel and of
    exact full-size search.

    nice python benchmarks/milvus_funnel.py                       # 1M FAISS, 20k Milvus Lite
    nice python benchmarks/milvus_funnel.py --scale 100000 --milvus-scale 5000   # a quick check
"""

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from adaptive_retrieval import make_scaled, relative_recall  # noqa: E402

from mrl_text.data import load_beir  # noqa: E402
from mrl_text.deploy.funnel import FunnelIndex, build_exact_index  # noqa: E402
from mrl_text.deploy.milvus import MilvusFunnelIndex  # noqa: E402
from mrl_text.metrics import ndcg_at_k  # noqa: E402
from mrl_text.models.modeling_matryoshka import truncate_embeddings  # noqa: E402

import _report  # noqa: E402  (before the other siblings: puts recipes/ on sys.path)
from embedding_cache import REPO, cached_embeddings, demo_model_path, load_model  # noqa: E402

SCIFACT = REPO.parent / "shared" / "data" / "scifact"
FAISS_FUNNELS = [
    ("binary 256 (keep 1000) > 384", {"stages": [(256, 1000), (384, 10)], "quantization": "binary"}),
    ("binary 128 (keep 1000) > 384", {"stages": [(128, 1000), (384, 10)], "quantization": "binary"}),
    ("binary 128 (keep 500) > 384", {"stages": [(128, 500), (384, 10)], "quantization": "binary"}),
]
MILVUS_FUNNELS = [
    ("funnel float-32 (keep 400) > 384, FLAT", {"stages": [(32, 400), (384, 10)]}),
    ("funnel float-64 (keep 200) > 384, FLAT", {"stages": [(64, 200), (384, 10)]}),
    ("funnel float-64 (keep 200) > 384, HNSW", {"stages": [(64, 200), (384, 10)], "index_type": "HNSW",
                                                "index_params": {"M": 16, "efConstruction": 100},
                                                "search_params": {"ef": 400}}),
]
SCIFACT_MILVUS_FUNNELS = MILVUS_FUNNELS + [
    ("funnel float-128 (keep 200) > 384, FLAT", {"stages": [(128, 200), (384, 10)]}),
]
MILVUS_SERVER_FUNNELS = [  # Milvus Lite has no binary vectors
    ("funnel binary-128 (keep 500) > 384, BIN_FLAT", {"stages": [(128, 500), (384, 10)], "quantization": "binary"}),
]


def synthetic_base(n=100_000, dim=384, clusters=20_000, n_queries=500, seed=0):
    """Matryoshka-like unit vectors (clustered, coordinate i scaled by 1/sqrt(i): the early coordinates carry the most
    variance, as in a trained MRL embedding) and noisy copies of random ones as queries. The base when no real
    embeddings are cached: encoding SciFact's 5,183 abstracts takes tens of CPU-minutes."""
    rng = np.random.default_rng(seed)
    scale = (1 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32) * scale
    docs = centers[rng.integers(clusters, size=n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32) * scale
    noise = rng.standard_normal((n_queries, dim), dtype=np.float32) * scale
    queries = docs[rng.integers(n, size=n_queries)] + 0.3 * noise
    return truncate_embeddings(docs, None, True), truncate_embeddings(queries, None, True)


def rss_mb():
    """The process's resident memory now (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def single_query_ms(search, queries):
    times = []
    for q in queries:
        began = time.perf_counter()
        search(q)
        times.append((time.perf_counter() - began) * 1e3)
    return {"p50_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99))}


def timed_rounds(searches, repeats):
    """Batch seconds of each named search over `repeats` rounds, every search once per round: interleaved, so a change
    of load on a shared machine slows all of them alike and each round's ratios stay side by side."""
    seconds = {name: [] for name in searches}
    for _ in range(repeats):
        for name, search in searches.items():
            began = time.perf_counter()
            search()
            seconds[name].append(time.perf_counter() - began)
    return seconds


def faiss_part(args, vectors, queries, folder):
    import faiss

    exact = build_exact_index(vectors)
    unit = truncate_embeddings(queries, None, True)
    _, reference = exact.search(unit, 10)
    np.save(folder / "vectors.npy", vectors)
    mapped = np.load(folder / "vectors.npy", mmap_mode="r")
    funnels = {}
    for name, kwargs in FAISS_FUNNELS:
        faiss.omp_set_num_threads(args.build_threads)
        funnels[f"FAISS funnel {name}"] = FunnelIndex(mapped, show_progress_bar=False, **kwargs)
        faiss.omp_set_num_threads(1)
    searches = {"exact flat 384": lambda: exact.search(unit, 10)}
    for method, index in funnels.items():
        index.search(queries[:10], 10)  # warm the mapped pages the reranks touch
        searches[method] = lambda index=index: index.search(queries, 10)
    seconds = timed_rounds(searches, args.repeats)
    rows = [{"method": "exact flat 384", "recall@10": 1.0, "ram_mb": vectors.nbytes / 2**20,
             **single_query_ms(lambda q: exact.search(q[None], 10), unit[: args.single_queries])}]
    for method, index in funnels.items():
        _, ids = index.search(queries, 10)
        held = index.shortlist_index.ntotal * index.shortlist_index.code_size + sum(
            n.nbytes for n in index._norms.values())
        rows.append({"method": method, "recall@10": relative_recall(ids, reference), "ram_mb": held / 2**20,
                     **single_query_ms(index.search, queries[: args.single_queries])})
    for row in rows:
        row["batch_s_rounds"] = seconds[row["method"]]
        row["batch_s"] = statistics.median(row["batch_s_rounds"])
        print(row, flush=True)
    exact.reset()  # frees its copy of the vectors
    del funnels
    if not args.hnsw:
        return _ratios(rows, queries)
    # HNSW on the full floats: the first efSearch whose recall reaches the best funnel's
    target = max(r["recall@10"] for r in rows[1:])
    faiss.omp_set_num_threads(args.build_threads)
    began = time.time()
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(truncate_embeddings(vectors, None, True))
    build = time.time() - began
    faiss.omp_set_num_threads(1)
    for ef in (64, 128, 256, 512, 1024, 2048):
        hnsw.hnsw.efSearch = ef
        _, ids = hnsw.search(unit, 10)
        recall = relative_recall(ids, reference)
        if recall >= target or ef == 2048:
            break
    rounds = timed_rounds({"hnsw": lambda: hnsw.search(unit, 10)}, args.repeats)["hnsw"]
    rows.append({"method": f"FAISS HNSW32 full 384 (efSearch {ef})", "recall@10": recall,
                 "batch_s": statistics.median(rounds), "batch_s_rounds": rounds,
                 "ram_mb": len(faiss.serialize_index(hnsw)) / 2**20, "build_s": build,
                 **single_query_ms(lambda q: hnsw.search(q[None], 10), unit[: args.single_queries])})
    return _ratios(rows, queries)


def _ratios(rows, queries):
    """Throughput against exact search as the median of the rounds' ratios where both were timed in the same rounds
    (HNSW, timed after exact's index is freed, against exact's median)."""
    hnsw = rows[-1] if rows[-1]["method"].startswith("FAISS HNSW") else None
    exact = rows[0]["batch_s_rounds"]
    for row in rows:
        row["throughput_qps"] = len(queries) / row["batch_s"]
        same_rounds = row is not hnsw and len(row["batch_s_rounds"]) == len(exact)
        row["throughput_x_exact"] = (statistics.median(e / s for e, s in zip(exact, row["batch_s_rounds"]))
                                     if same_rounds else rows[0]["batch_s"] / row["batch_s"])
        row["latency_x_exact"] = rows[0]["p50_ms"] / row["p50_ms"]
        row["ram_x_less_than_hnsw"] = hnsw["ram_mb"] / row["ram_mb"] if hnsw else None
    return rows


def milvus_part(args, vectors, queries, folder):
    """Milvus Lite files in `folder`, or the server at `--milvus-uri` (where binary first stages exist too)."""
    _, reference = build_exact_index(vectors).search(truncate_embeddings(queries, None, True), 10)
    rows = []
    settings = [("one stage on the full vector, FLAT", {"stages": [(384, 10)]})] + MILVUS_FUNNELS
    if args.milvus_uri:
        settings += MILVUS_SERVER_FUNNELS
    if args.milvus_settings:  # the one-stage reference always runs: every ratio is against it
        settings = settings[:1] + [(name, kwargs) for name, kwargs in settings[1:]
                                   if any(part in name for part in args.milvus_settings)]
    ids = np.arange(len(vectors))
    for position, (name, kwargs) in enumerate(settings):
        before = rss_mb()
        uri = args.milvus_uri or str(folder / f"milvus{position}.db")
        index = MilvusFunnelIndex(uri, f"bench{position}", **kwargs)
        index.drop()  # a server keeps collections between runs
        index = MilvusFunnelIndex(uri, f"bench{position}", **kwargs)
        began = time.perf_counter()
        try:
            index.add(vectors, ids=ids, show_progress_bar=False)
        except ValueError as error:  # e.g. an index type this engine lacks: say so in the results, go on
            rows.append({"method": f"{args.milvus_label} {name}", "refused": str(error)})
            print(rows[-1], flush=True)
            continue
        ingest = len(vectors) / (time.perf_counter() - began)
        index.search(queries[:2], 10)
        _, found = index.search(queries, 10)
        rows.append({"method": f"{args.milvus_label} {name}", "recall@10": relative_recall(found, reference),
                     "ingest_docs_per_s": ingest, "rss_growth_mb": max(0.0, rss_mb() - before),
                     **single_query_ms(lambda q, index=index: index.search(q, 10), queries[: args.single_queries])})
        print(rows[-1], flush=True)
        index.drop()
    for row in rows:
        if "p50_ms" in row:
            row["latency_x_one_stage"] = rows[0]["p50_ms"] / row["p50_ms"]
    return rows


def scifact_part(args, folder):
    corpus, queries, qrels = load_beir(SCIFACT)
    doc_ids, query_ids = list(corpus), list(queries)
    docs = cached_embeddings(load_model, [corpus[d] for d in doc_ids], demo_model_path(), max_length=256,
                             cache_dir=args.cache_dir)
    query_vectors = cached_embeddings(load_model, [queries[q] for q in query_ids], demo_model_path(),
                                      cache_dir=args.cache_dir)
    _, exact = build_exact_index(docs).search(truncate_embeddings(query_vectors, None, True), 10)

    def ndcg(rankings):
        return float(np.mean([ndcg_at_k([doc_ids[i] for i in ranking if i >= 0], qrels[q])
                              for q, ranking in zip(query_ids, rankings.tolist())]))

    rows = [{"method": "exact full-size 384 (FAISS flat)", "ndcg@10": ndcg(exact)}]
    for name, kwargs in SCIFACT_MILVUS_FUNNELS:
        index = MilvusFunnelIndex(str(folder / "scifact.db"), "scifact", **kwargs)
        index.add(docs, ids=np.arange(len(docs)), show_progress_bar=False)
        _, found = index.search(query_vectors, 10)
        rows.append({"method": f"Milvus Lite {name}", "ndcg@10": ndcg(found)})
        index.drop()
    for name, kwargs in FAISS_FUNNELS:
        _, found = FunnelIndex(docs, show_progress_bar=False, **kwargs).search(query_vectors, 10)
        rows.append({"method": f"FAISS funnel {name}", "ndcg@10": ndcg(found)})
    return {"documents": len(docs), "queries": len(query_ids), "rows": rows}


def markdown(report):
    """The results file's lines."""
    lines = _report.header("Funnel retrieval: FAISS and Milvus side by side", report)
    if report["faiss"]:
        rounds = report.get("repeats", 1)
        lines += [f"(a) FAISS at {report['scale']:,} vectors, {report['queries']} queries, one thread"
                  + (f"; batch s: the median of {rounds} interleaved rounds, x exact: the median of the rounds' "
                     "ratios." if rounds > 1 else "."), "",
                  "| method | recall@10 | batch s | q/s | x exact | p50 ms | p99 ms | x exact (p50) | RAM MB | "
                  "x less RAM than HNSW |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["faiss"]:
            lines.append(f"| {r['method']} | {r['recall@10']:.4f} | {r['batch_s']:.2f} | {r['throughput_qps']:.0f} | "
                         f"{r['throughput_x_exact']:.1f}x | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['latency_x_exact']:.1f}x | {r['ram_mb']:.0f} | "
                         + (f"{r['ram_x_less_than_hnsw']:.1f}x |" if r["ram_x_less_than_hnsw"] else "- |"))
        lines.append("")
    if report["milvus"]:
        lines += [f"(b) {report['milvus_engine']} at {report['milvus_scale']:,} vectors, "
                  f"{report['milvus_queries']} queries.", "",
                  "| method | recall@10 | p50 ms | p99 ms | x one-stage (p50) | ingest docs/s | RSS growth MB |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["milvus"]:
            if "refused" in r:
                lines.append(f"| {r['method']} | refused: {r['refused']} | | | | | |")
                continue
            lines.append(f"| {r['method']} | {r['recall@10']:.4f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{r['latency_x_one_stage']:.1f}x | {r['ingest_docs_per_s']:.0f} | "
                         f"{r['rss_growth_mb']:.0f} |")
        lines.append("")
    if report.get("scifact"):
        s = report["scifact"]
        lines += [f"(c) SciFact: {s['documents']} abstracts, {s['queries']} test queries, all-MiniLM-L6-v2.", "",
                  "| method | nDCG@10 | minus exact |", "|---|---|---|"]
        lines += [f"| {r['method']} | {r['ndcg@10']:.4f} | {r['ndcg@10'] - s['rows'][0]['ndcg@10']:+.4f} |"
                  for r in s["rows"]]
        lines.append("")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=1_000_000, help="vectors in the FAISS part (0: skip)")
    parser.add_argument("--milvus-scale", type=int, default=20_000, help="vectors in the Milvus Lite part (0: skip)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--no-hnsw", dest="hnsw", action="store_false", help="skip FAISS HNSW (slow to build at 1M)")
    parser.add_argument("--milvus-uri", help="a Milvus server for part (b), e.g. http://127.0.0.1:19530 (default: "
                        "Milvus Lite files)")
    parser.add_argument("--milvus-label", default="Milvus Lite", help="what part (b)'s rows call the engine")
    parser.add_argument("--milvus-queries", type=int, default=100, help="queries in the Milvus Lite part")
    parser.add_argument("--milvus-settings", nargs="*", default=[],
                        help="run only the Milvus funnels whose name holds one of these texts (e.g. 'binary-128' "
                        "'float-64 (keep 200) > 384, FLAT'); each setting ingests the whole set once")
    parser.add_argument("--single-queries", type=int, default=100, help="one-by-one searches for p50 / p99")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the FAISS batch searches, interleaved; "
                        "the median is reported")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--base", choices=["synthetic", "scifact"], default="synthetic",
                        help="what the scaled set copies: synthetic vectors, or SciFact embedded (slow to encode)")
    parser.add_argument("--base-size", type=int, default=100_000, help="synthetic vectors (copied up to --scale)")
    parser.add_argument("--scifact", action="store_true", help="(c): nDCG@10 on SciFact (encodes it if not cached)")
    parser.add_argument("--cache-dir", help="embedding cache folder (default: outputs/embedding_cache)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "milvus_funnel"))
    args = parser.parse_args()
    import faiss
    import milvus_lite

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    if args.base == "scifact":
        corpus, queries, _ = load_beir(SCIFACT)
        docs = cached_embeddings(load_model, list(corpus.values()), demo_model_path(), max_length=256,
                                 cache_dir=args.cache_dir)
        query_vectors = cached_embeddings(load_model, list(queries.values()), demo_model_path(),
                                          cache_dir=args.cache_dir)
        query_vectors = np.ascontiguousarray(np.resize(query_vectors, (args.queries, docs.shape[1])))  # repeated
        base = (f"SciFact's {len(docs)} abstracts embedded by all-MiniLM-L6-v2 (384-d); queries: SciFact claims "
                "(repeated to fill)")
    else:
        docs, query_vectors = synthetic_base(n=args.base_size, clusters=args.base_size // 5, n_queries=args.queries)
        base = (f"{len(docs)} synthetic Matryoshka-like 384-d unit vectors ({len(docs) // 5} clusters, coordinate i "
                "scaled by 1/sqrt(i); `synthetic_base`); queries: noisy copies of random ones")
    folder = Path(tempfile.mkdtemp(prefix="milvus_funnel_", dir=os.environ.get("TMPDIR")))
    try:
        report = {"command": _report.command_line(), "machine": _report.machine(load=True), "scale": args.scale,
                  "milvus_scale": args.milvus_scale, "queries": args.queries, "repeats": args.repeats,
                  "milvus_queries": args.milvus_queries,
                  "milvus_engine": f"{args.milvus_label} ({args.milvus_uri})" if args.milvus_uri
                  else f"Milvus Lite {milvus_lite.__version__} (in this process)",
                  "setup": f"Vectors: {base}; plus copies of random ones with Gaussian noise ({args.noise} x each "
                           "coordinate's std), re-normalized (benchmarks/adaptive_retrieval.py's generator). "
                           "torch and FAISS on one thread (indexes built on "
                           f"{args.build_threads}); Milvus: "
                           + (f"a server process at {args.milvus_uri}, its own threads (the client here)."
                              if args.milvus_uri else "Milvus Lite, the engine embedded in this process.")}
        if not (args.scale or args.milvus_scale):
            report["setup"] = ("Part (c) only: SciFact's corpus and test queries embedded by all-MiniLM-L6-v2 "
                               "(abstracts at max_length 256); Milvus Lite, the engine embedded in this process.")
        vectors = make_scaled(docs, max(args.scale, args.milvus_scale, len(docs)), args.noise)
        report["faiss"] = faiss_part(args, vectors[: args.scale], query_vectors, folder) if args.scale else []
        report["milvus"] = milvus_part(args, np.ascontiguousarray(vectors[: args.milvus_scale]),
                                       query_vectors[: args.milvus_queries], folder) if args.milvus_scale else []
        report["scifact"] = scifact_part(args, folder) if args.scifact else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    print(_report.write_results(args.out, report, markdown(report)))


if __name__ == "__main__":
    main()
