"""Score the whole (layers, dims, precision) grid in one evaluation: one encoding pass per layer count.

Users pay for bytes (size x bits per coordinate) and milliseconds (encoder layers run); [`evaluate_grid`] measures
every combination so the best one per budget can be read off ([`Results.pareto_front`], [`Results.plot_budget`]).

Per layer count, every distinct text of every task is encoded once at full size; each size is a prefix
(`truncate_embeddings`) and each precision is `mrl_text.models.quantization`'s codes of that prefix, scored as:
- STS: cosine of the dequantized codes (binary: of the +1/-1 bits, i.e. Hamming similarity);
- retrieval: float queries against dequantized int8 documents (asymmetric search, what `FunnelIndex` does), bit
  queries against bit documents (Hamming); with `rescore=k`, also the `"<precision>+rescore"` cell: the top `k` of
  that search re-ranked by float cosine at the same size (the float vectors read from disk for k documents only);
- classification: a linear probe trained and tested on the dequantized codes.
Each cell also records `seconds_per_text`: the wall time of its layer count's encoding pass over the distinct texts
of all tasks, per text (every layer count encodes the same texts, so their ratio is the speed-up of running fewer
layers; the first pass also pays any warm-up, so measure speed itself in a benchmark).
int8/uint8 ranges are the model's calibrated ones (`config.quantization_ranges`, per depth: `calibrate_quantization(
texts, layers=...)`) where it has them, else measured on the task's own embeddings (STS: all sentences; retrieval:
the corpus; classification: the training texts), as sentence-transformers does when given no ranges.
"""

import os
import time

import torch
import torch.nn.functional as F

from .. import metrics
from ..metrics import fit_linear_probe
from ..models.configuration_matryoshka import ranges_key
from ..models.modeling_matryoshka import MatryoshkaModel
from ..models.modeling_matryoshka_depth import check_layers
from ..models.quantization import BIT_PRECISIONS, calibration_ranges, check_precision, dequantize, quantize
from .base import Evaluator
from .embedders import Embedder, as_embedder, encode_once, load_model
from .results import Results
from .text import ClassificationEvaluator, RetrievalEvaluator, STSEvaluator

DEFAULT_PRECISIONS = ("float32", "int8", "binary")
RESCORED = "+rescore"  # suffix of the cells whose quantized search is re-ranked in float


def evaluate_grid(model, evaluators, dims=None, precisions=DEFAULT_PRECISIONS, layers=None, rescore=100,
                  **embedder_kwargs):
    """Score every (layers, dims, precision) cell of `evaluators` on `model`; returns [`Results`] whose `grid` holds
    every cell and whose `rows` hold the full-depth float32 cells (what [`evaluate`] gives).

    Args:
        model: anything [`as_embedder`] takes; a `MatryoshkaModel` (or its folder) when `layers` is given, or an
            [`Embedder`] whose `matryoshka` attribute holds the MatryoshkaModel it encodes with (what `mrl-text
            evaluate --layers` passes, so the rows keep the embedder's name).
        evaluators: [`STSEvaluator`], [`RetrievalEvaluator`] and [`ClassificationEvaluator`] instances.
        dims (`list[int]`, *optional*): sizes; default the model's trained sizes. Bit codes need multiples of 8.
        precisions (`list[str]`): any of `mrl_text.models.quantization.PRECISIONS`.
        layers (`list[int | None]`, *optional*): encoder layer counts (`model.encode(..., layers=k)`); None or the
            model's depth is the full model. Default: the full model only.
        rescore (`int`, *optional*): retrieval also scores quantized search + float re-ranking of the top `rescore`.
        embedder_kwargs: `batch_size`, `max_length`, `device`, `show_progress_bar`, as for [`evaluate`].
    """
    evaluators = [evaluators] if isinstance(evaluators, Evaluator) else list(evaluators)
    unsupported = [type(e).__name__ for e in evaluators if type(e) not in SCORERS]
    if not evaluators or unsupported:
        raise ValueError("evaluate_grid scores STS, retrieval and classification evaluators; got "
                         f"{unsupported or 'none'}.")
    names = [e.name for e in evaluators]
    if len(set(names)) != len(names):
        raise ValueError(f"Evaluator names must be distinct (they name the result rows); got {names}.")
    precisions = list(dict.fromkeys(check_precision(p) for p in precisions))
    if rescore is not None and (isinstance(rescore, bool) or not isinstance(rescore, int) or rescore <= 0):
        raise ValueError(f"rescore={rescore!r} must be a positive number of documents to re-rank (or None: off).")
    layer_counts = [None] if layers is None else ([layers] if isinstance(layers, int) else list(layers))
    if layer_counts != [None] and isinstance(model, (str, os.PathLike)):
        model = load_model(model, embedder_kwargs.get("device"))  # the object whose encode takes `layers=`
    base = as_embedder(model, dims, **embedder_kwargs)
    bits = [p for p in precisions if p in BIT_PRECISIONS]
    odd = [d for d in base.dims if d % 8]
    if bits and odd:
        raise ValueError(
            f"precision {bits[0]!r} packs 8 coordinates per byte, but sizes {odd} are not multiples of 8; "
            "pass dims without them or leave out the bit precisions."
        )
    matryoshka = getattr(model, "matryoshka", model)
    # Checked before anything is encoded; the full depth, however named, is one pass.
    layer_counts = list(dict.fromkeys(None if k is None else resolve_layers(matryoshka, k) for k in layer_counts))
    saved_ranges = getattr(getattr(matryoshka, "config", None), "quantization_ranges", None) or {}
    rows = []
    for count in layer_counts:
        embedder = base if count is None else depth_embedder(matryoshka, base, count)
        groups = [group for evaluator in evaluators for group in TEXTS[type(evaluator)](evaluator)]
        started = time.perf_counter()
        embeddings, text_rows = encode_once(embedder, [text for group in groups for text in group])  # one pass
        seconds_per_text = (time.perf_counter() - started) / max(1, len(embeddings))
        start = 0
        for evaluator in evaluators:
            parts = []
            for group in TEXTS[type(evaluator)](evaluator):
                parts.append(text_rows[start : start + len(group)])
                start += len(group)
            for dim in base.dims:
                prefix = embedder.truncate(embeddings, dim)
                ranges = saved_ranges.get(ranges_key(dim, count))
                scores = SCORERS[type(evaluator)](evaluator, prefix, parts, precisions, ranges, rescore)
                for precision, values in scores.items():
                    rows.extend({"model": base.name, "task": evaluator.name, "metric": metric, "dim": dim,
                                 "value": value, "layers": count, "precision": precision,
                                 "seconds_per_text": seconds_per_text}
                                | ({} if base.max_length is None else {"max_length": base.max_length})
                                for metric, value in values.items())
    return Results.from_evaluators(rows, evaluators)


def resolve_layers(matryoshka, layers):
    """`layers` checked against the model as `encode(layers=)` checks it (range, trained depths: a warning); None
    for the full depth."""
    if not isinstance(matryoshka, MatryoshkaModel):
        raise ValueError(f"layers={layers!r} needs a MatryoshkaModel (its encode runs the first layers only); got "
                         f"{type(matryoshka).__name__}.")
    return check_layers(matryoshka, layers)


def depth_embedder(matryoshka, base, layers):
    """`base` (an [`Embedder`] of the same model) encoding with only the first `layers` encoder layers."""
    layers = resolve_layers(matryoshka, layers)

    # With an adaptor a size is not a prefix: encode the pre-adaptor vectors and map them per size, as `base` does.
    output_value = "embeddings" if base.size_map is None else "full_embeddings"

    def encode(texts):
        return matryoshka.encode(texts, dim=base.full_dim, batch_size=base.batch_size, max_length=base.max_length,
                                 layers=layers, output_value=output_value)

    return Embedder(encode, base.full_dim, base.dims, base.normalize, base.name, base.max_length, base.batch_size,
                    base.show_progress_bar, base.source, base.count_tokens, base.size_map)


def represent(vectors, precision, ranges):
    """What a search or a probe sees of `vectors` stored at `precision`: the dequantized codes (float32 as is)."""
    if precision == "float32":
        return vectors
    return dequantize(quantize(vectors, precision, ranges), precision, ranges)


def _ranges_for(precision, ranges, calibration):
    if precision in ("int8", "uint8") and ranges is None:
        return calibration_ranges(calibration)
    return ranges


def score_sts(evaluator, prefix, parts, precisions, ranges, rescore):
    rows1, rows2 = parts
    calibration = prefix[torch.cat([rows1, rows2])]
    out = {}
    for precision in precisions:
        vectors = represent(prefix, precision, _ranges_for(precision, ranges, calibration))
        cosine = (F.normalize(vectors[rows1], dim=-1) * F.normalize(vectors[rows2], dim=-1)).sum(-1).tolist()
        out[precision] = {"spearman": metrics.spearman(cosine, evaluator.scores),
                          "pearson": metrics.pearson(cosine, evaluator.scores)}
    return out


def top_k(queries, docs, k, chunk_size, device):
    """Indices `(n_queries, k)` of the highest `queries @ docs.T` scores, best first, over document chunks."""
    k = min(k, len(docs))
    best_scores = torch.empty(len(queries), 0, device=device)
    best_index = torch.empty(len(queries), 0, dtype=torch.long, device=device)
    queries = queries.to(device)
    for start in range(0, len(docs), chunk_size):
        scores = queries @ docs[start : start + chunk_size].to(device).T
        merged_scores = torch.cat([best_scores, scores], dim=1)
        merged_index = torch.cat([best_index, torch.arange(start, start + scores.shape[1], device=device).expand_as(
            scores)], dim=1)
        keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
        best_scores, best_index = merged_scores.gather(1, keep), merged_index.gather(1, keep)
    return best_index.cpu()


def score_retrieval(evaluator, prefix, parts, precisions, ranges, rescore):
    query_rows, doc_rows = parts
    queries, docs = prefix[query_rows], prefix[doc_rows]
    float_queries, float_docs = F.normalize(queries, dim=-1), F.normalize(docs, dim=-1)
    depth = max(evaluator.cutoffs.values())
    qrels = [evaluator.qrels[q] for q in evaluator.query_ids]

    def scores_of(top):
        rankings = [[evaluator.doc_ids[i] for i in row] for row in top.tolist()]
        return metrics.retrieval_scores(rankings, qrels, evaluator.cutoffs)

    out = {}
    for precision in precisions:
        if precision == "float32":
            stored, searching = float_docs, float_queries
        else:
            stored = represent(docs, precision, _ranges_for(precision, ranges, docs))
            searching = represent(queries, precision, None) if precision in BIT_PRECISIONS else float_queries
        top = top_k(searching, stored, max(depth, rescore or 0), evaluator.chunk_size, evaluator.device)
        out[precision] = scores_of(top[:, :depth])
        if rescore and precision != "float32":
            candidates = top[:, :rescore]
            exact = torch.bmm(float_docs[candidates], float_queries.unsqueeze(-1)).squeeze(-1)
            out[precision + RESCORED] = scores_of(candidates.gather(1, exact.argsort(dim=1, descending=True)))
    return out


def score_classification(evaluator, prefix, parts, precisions, ranges, rescore):
    train_rows, test_rows = parts
    out = {}
    for precision in precisions:
        vectors = represent(prefix, precision, _ranges_for(precision, ranges, prefix[train_rows]))
        probe = fit_linear_probe(vectors[train_rows].numpy(), evaluator.train_labels, seed=evaluator.seed,
                                 max_iter=evaluator.max_iter)
        out[precision] = {"accuracy": metrics.accuracy(probe.predict(vectors[test_rows].numpy()).tolist(),
                                                       evaluator.test_labels)}
    return out


# Per evaluator class: the groups of texts it encodes (in the order its scorer reads them), and its scorer.
TEXTS = {
    STSEvaluator: lambda e: [e.sentences1, e.sentences2],
    RetrievalEvaluator: lambda e: [e.query_texts, e.doc_texts],
    ClassificationEvaluator: lambda e: [e.train_texts, e.test_texts],
}
SCORERS = {STSEvaluator: score_sts, RetrievalEvaluator: score_retrieval, ClassificationEvaluator: score_classification}

__all__ = ["DEFAULT_PRECISIONS", "RESCORED", "depth_embedder", "evaluate_grid", "represent", "top_k"]
