"""Funnel retrieval over your corpus: shortlist with a small prefix of the embedding, rerank with larger ones.

A Matryoshka model's first dims are an embedding too, so the first stage searches the whole corpus at a small size
(e.g. 32 of 384 dims) and each later stage rescores only the survivors at a larger size (Kusupati et al., 2022,
section 4.3). The script checks the funnel against exact full-size search: the share of the exact top k it finds
(recall) and the time per query, beside the small size searched alone. The funnel saves time on large corpora
(at a million texts, 3x to 20x less than exact search, by stages: benchmarks/results/adaptive_retrieval.md in the
repository); over a few thousand texts exact search is already fast, and wins.

    python examples/funnel_retrieval.py                         # offline: chatterbot-corpus answers and questions
    python examples/funnel_retrieval.py --model outputs/matryoshka-pairs --corpus docs.jsonl --queries queries.txt
    python examples/funnel_retrieval.py --corpus docs.txt --stages 32:1000 128:100 384:10 --shortlist hnsw

--corpus and --queries: a .txt file with one text per line, or a .jsonl/.tsv/.csv/.parquet table (its --column).
Without --queries, some corpus texts are searched for. --model is a Matryoshka model (default: all-MiniLM-L6-v2 as
it is; a model trained with train_matryoshka_pairs.py keeps more of the exact results at small sizes).
"""

import argparse
import time

import numpy as np
from offline_defaults import chatterbot_pairs, load_matryoshka_model  # examples/offline_defaults.py

import mrl_text
from mrl_text.adaptor import read_corpus
from mrl_text.deploy import exact_search


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Matryoshka model folder or Hub id (default: all-MiniLM-L6-v2, offline)")
    parser.add_argument("--corpus", help="the texts to search (default: chatterbot-corpus's answers)")
    parser.add_argument("--queries", help="the texts to search for (default: chatterbot's questions, or 100 texts "
                        "of --corpus)")
    parser.add_argument("--column", default="text", help="text column of a table file (default: %(default)s)")
    parser.add_argument("--stages", nargs="+", metavar="SIZE:KEEP", help="funnel stages, e.g. 32:400 128:100 384:10 "
                        "(default: the library's, from the model's sizes)")
    parser.add_argument("--k", type=int, default=10, help="results per query (default: %(default)s)")
    parser.add_argument("--shortlist", choices=("flat", "hnsw", "ivf"), default="flat", help="first stage's index")
    parser.add_argument("--quantization", choices=("int8", "binary"), help="first stage's codes (default: float32)")
    parser.add_argument("--max-seq-length", type=int, help="tokens per text (default: the model's)")
    parser.add_argument("--save-index", metavar="DIR", help="save the index (FunnelIndex.load(DIR) reads it back)")
    return parser.parse_args(argv)


def recall(ids, exact_ids):
    """Mean share of each query's exact top k that `ids` holds."""
    return float(np.mean([len(set(row) & set(exact)) / len(exact) for row, exact in zip(ids, exact_ids)]))


def timed(search):
    start = time.perf_counter()
    scores, ids = search()
    return ids, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)

    # 1. The texts: your corpus and queries, or chatterbot-corpus's answers and questions.
    if args.corpus:
        corpus = read_corpus(args.corpus, args.column)
        queries = read_corpus(args.queries, args.column) if args.queries else corpus[:: max(1, len(corpus) // 100)]
    else:
        rows = chatterbot_pairs()
        corpus, queries = list(rows["positive"]), list(rows["anchor"])
        queries = read_corpus(args.queries, args.column) if args.queries else queries

    # 2. Index the corpus: one encoding pass at full size; the first stage holds the small prefix only.
    model = load_matryoshka_model(args.model)
    stages = [tuple(int(part) for part in stage.split(":")) for stage in args.stages] if args.stages else None
    index = mrl_text.FunnelIndex.from_model(model, corpus, stages=stages, max_length=args.max_seq_length,
                                            shortlist=args.shortlist, quantization=args.quantization)
    print(index)

    # 3. Search: the funnel, exact search at full size (the reference) and the first stage's size alone.
    query_embeddings = model.encode(queries, dim=model.config.embedding_size, max_length=args.max_seq_length,
                                    convert_to_numpy=True)
    k, small = args.k, index.stages[0][0]
    documents, normalize = index.embeddings, index.normalize
    funnel_ids, funnel_time = timed(lambda: index.search(query_embeddings, k=k))
    exact_ids, exact_time = timed(lambda: exact_search(documents, query_embeddings, k, normalize=normalize))
    small_ids, small_time = timed(lambda: exact_search(documents, query_embeddings, k, small, normalize))

    print(f"\n{len(queries)} queries over {len(corpus)} texts; recall@{k} = share of exact full-size search's top {k}")
    print(f"{'search':<40} {'recall@' + str(k):>10} {'ms/query':>9}")
    for name, ids, seconds in (
        (f"exact, {index.full_dim} dims", exact_ids, exact_time),
        ("funnel " + " -> ".join(f"{size}d:{keep}" for size, keep in index.stages), funnel_ids, funnel_time),
        (f"exact, {small} dims alone", small_ids, small_time),
    ):
        print(f"{name:<40} {recall(ids, exact_ids):>10.3f} {1000 * seconds / len(queries):>9.3f}")

    print(f"\n{queries[0]!r} -> {[corpus[i] for i in funnel_ids[0][:3]]}")
    if args.save_index:
        index.save(args.save_index)
        print(f"Saved the index to {args.save_index}")


if __name__ == "__main__":
    main()
