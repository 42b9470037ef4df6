"""Text evaluators: STS, retrieval and classification on frozen embeddings, at every Matryoshka size."""

import torch

from .. import metrics
from ..metrics import fit_linear_probe
from ..models.modeling_matryoshka import truncate_embeddings
from .base import Evaluator, require_examples
from .embedders import encode_once


class STSEvaluator(Evaluator):
    """Semantic textual similarity: Spearman (primary) and Pearson correlation of cosine similarity with gold
    scores."""

    task_type = "sentence-similarity"
    primary_metric = "spearman"

    def __init__(self, sentences1, sentences2, scores, name="sts"):
        super().__init__(name)
        self.sentences1, self.sentences2, self.scores = list(sentences1), list(sentences2), [float(s) for s in scores]
        require_examples(name, sentences1=self.sentences1)
        if not len(self.sentences1) == len(self.sentences2) == len(self.scores):
            raise ValueError(
                f"{name}: sentences1, sentences2 and scores differ in length "
                f"({len(self.sentences1)}, {len(self.sentences2)}, {len(self.scores)})."
            )

    def _embed(self, embedder):
        embeddings, rows = encode_once(embedder, self.sentences1 + self.sentences2)
        return embeddings, rows[: len(self.sentences1)], rows[len(self.sentences1) :]

    def _score(self, embedder, embedded, dim):
        embeddings, rows1, rows2 = embedded
        unit = embedder.unit(embeddings, dim)  # cosine: unit vectors, whatever the model does
        cosine = (unit[rows1] * unit[rows2]).sum(-1).tolist()
        return {
            "spearman": metrics.spearman(cosine, self.scores),
            "pearson": metrics.pearson(cosine, self.scores),
        }


class RetrievalEvaluator(Evaluator):
    """Retrieval by exact cosine search: nDCG@10 (primary), MRR@10 and Recall@100.

    The corpus is scored in chunks of `chunk_size` documents, keeping a running top-k per query, so memory holds
    the full-size corpus embeddings once plus one `(queries, chunk_size)` score block, never a full score matrix.

    Args:
        corpus (`dict[str, str]`): document id -> text.
        queries (`dict[str, str]`): query id -> text.
        qrels (`dict[str, dict[str, int]]`): query id -> {document id: relevance}.
        chunk_size, query_chunk_size (`int`): documents / queries per score block.
        device (`str`, *optional*): where the score blocks are computed; defaults to CUDA when available.
    """

    task_type = "text-retrieval"
    primary_metric = "ndcg@10"
    cutoffs = {"ndcg": 10, "mrr": 10, "recall": 100}

    def __init__(
        self, corpus, queries, qrels, name="retrieval", chunk_size=50_000, query_chunk_size=1_024, device=None
    ):
        super().__init__(name)
        require_examples(name, corpus=corpus, queries=queries, qrels=qrels)
        unknown_queries = sorted(q for q in qrels if q not in queries)
        unknown_docs = sorted({d for docs in qrels.values() for d in docs if d not in corpus})
        if unknown_queries or unknown_docs:
            raise ValueError(
                f"{name}: qrels name unknown queries {unknown_queries[:10]} / documents {unknown_docs[:10]}."
            )
        self.doc_ids = list(corpus)
        self.doc_texts = [corpus[d] for d in self.doc_ids]
        self.query_ids = [q for q in queries if q in qrels]
        require_examples(name, **{"queries with qrels": self.query_ids})
        self.query_texts = [queries[q] for q in self.query_ids]
        self.qrels = qrels
        self.chunk_size = int(chunk_size)
        self.query_chunk_size = int(query_chunk_size)
        # The search runs chunk by chunk on this device (the embeddings stay in CPU memory).
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    def _embed(self, embedder):
        embeddings, rows = encode_once(embedder, self.query_texts + self.doc_texts)
        return embeddings, rows[: len(self.query_texts)], rows[len(self.query_texts) :]

    def search(self, embeddings, query_rows, doc_rows, dim, k, unit=None):
        """Top-k documents by cosine at size `dim`: indices into `doc_rows`, `(n_queries, k)`, best first.

        `embeddings` holds every distinct text once at full size; queries and documents are gathered from it one
        chunk at a time, so no second copy of the corpus is ever made. `unit` maps a chunk to unit vectors at `dim`
        (default: the re-normalized prefix; evaluators pass their embedder's `unit`, which knows adaptors).
        """
        k = min(k, len(doc_rows))
        unit = unit or (lambda vectors, size: truncate_embeddings(vectors, size, True))
        results = []
        for q_start in range(0, len(query_rows), self.query_chunk_size):
            query_chunk = embeddings[query_rows[q_start : q_start + self.query_chunk_size]].to(self.device)
            queries = unit(query_chunk, dim).to(self.device)
            best_scores = torch.empty(queries.shape[0], 0, device=self.device)
            best_index = torch.empty(queries.shape[0], 0, dtype=torch.long, device=self.device)
            for start in range(0, len(doc_rows), self.chunk_size):
                doc_chunk = embeddings[doc_rows[start : start + self.chunk_size]].to(self.device)
                docs = unit(doc_chunk, dim).to(self.device)
                scores = queries @ docs.T
                top = scores.topk(min(k, scores.shape[1]), dim=1)
                merged_scores = torch.cat([best_scores, top.values], dim=1)
                merged_index = torch.cat([best_index, top.indices + start], dim=1)
                keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
                best_scores, best_index = merged_scores.gather(1, keep), merged_index.gather(1, keep)
            results.append(best_index.cpu())
        return torch.cat(results)

    def _score(self, embedder, embedded, dim):
        embeddings, query_rows, doc_rows = embedded
        top = self.search(embeddings, query_rows, doc_rows, dim, max(self.cutoffs.values()), embedder.unit)
        rankings = [[self.doc_ids[i] for i in row] for row in top.tolist()]
        return metrics.retrieval_scores(rankings, [self.qrels[q] for q in self.query_ids], self.cutoffs)


class ClassificationEvaluator(Evaluator):
    """Classification on frozen embeddings: accuracy of a logistic-regression probe (primary), and of a cosine
    k-nearest-neighbour classifier (`knn_accuracy`) when `knn=True`. Fixed seed: reruns give the same numbers."""

    task_type = "text-classification"
    primary_metric = "accuracy"

    def __init__(
        self, train_texts, train_labels, test_texts, test_labels, name="classification", knn=False, knn_k=10, seed=0,
        max_iter=1_000,
    ):
        super().__init__(name)
        self.train_texts, self.train_labels = list(train_texts), list(train_labels)
        self.test_texts, self.test_labels = list(test_texts), list(test_labels)
        require_examples(name, train_texts=self.train_texts, test_texts=self.test_texts)
        for split, texts, labels in (
            ("train", self.train_texts, self.train_labels),
            ("test", self.test_texts, self.test_labels),
        ):
            if len(texts) != len(labels):
                raise ValueError(f"{name}: {split} has {len(texts)} texts but {len(labels)} labels.")
        if len(set(self.train_labels)) < 2:
            raise ValueError(f"{name}: the training labels hold a single class; a classifier needs at least two.")
        self.knn, self.knn_k, self.seed, self.max_iter = knn, knn_k, seed, max_iter

    def _embed(self, embedder):
        embeddings, rows = encode_once(embedder, self.train_texts + self.test_texts)
        return embeddings, rows[: len(self.train_texts)], rows[len(self.train_texts) :]

    def _score(self, embedder, embedded, dim):
        from sklearn.neighbors import KNeighborsClassifier

        embeddings, train_rows, test_rows = embedded
        features = embedder.truncate(embeddings, dim)
        train, test = features[train_rows].numpy(), features[test_rows].numpy()
        probe = fit_linear_probe(train, self.train_labels, seed=self.seed, max_iter=self.max_iter)
        scores = {"accuracy": metrics.accuracy(probe.predict(test).tolist(), self.test_labels)}
        if self.knn:
            neighbours = KNeighborsClassifier(n_neighbors=min(self.knn_k, len(train)), metric="cosine")
            predictions = neighbours.fit(train, self.train_labels).predict(test).tolist()
            scores["knn_accuracy"] = metrics.accuracy(predictions, self.test_labels)
        return scores


__all__ = ["ClassificationEvaluator", "RetrievalEvaluator", "STSEvaluator"]
