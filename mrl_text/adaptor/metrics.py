"""Validation metrics of `mrl_text.adaptor.fitting.fit`'s gate, on embeddings alone: how well a size of candidate
embeddings keeps the full-size originals' neighbours and order of similarities, and a queries' nDCG@10."""

import math

import torch
from torch.nn import functional as F

from ..models.modeling_matryoshka import truncate_embeddings

VALIDATION_K = 10


def cosine_matrix(a, b):
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def nearest_neighbours(embeddings, k, chunk=2048):
    """Indices `(n, k)` of each row's `k` most similar other rows at full size, and those similarities."""
    k = min(k, embeddings.shape[0] - 1)
    unit = F.normalize(embeddings, dim=-1)
    indices, values = [], []
    for start in range(0, len(unit), chunk):
        scores = unit[start : start + chunk] @ unit.T
        scores[torch.arange(scores.shape[0]), torch.arange(start, start + scores.shape[0])] = -math.inf
        top = scores.topk(k, dim=1)
        indices.append(top.indices)
        values.append(top.values)
    return torch.cat(indices), torch.cat(values)


def neighbour_recall(original, candidate, dim, k=VALIDATION_K):
    """Recall@k, within `candidate`'s rows at size `dim`, of each row's full-size original top-k neighbours."""
    truth, _ = nearest_neighbours(original, k)
    found, _ = nearest_neighbours(truncate_embeddings(candidate, dim, True), k)
    hits = (found[:, :, None] == truth[:, None, :]).any(dim=2).float()
    return hits.mean().item()


def closest_pairs(embeddings, rows, k=1):
    """Each of `rows` paired with its `k` nearest other rows of all `embeddings` at full size: `(a, b)` indices.

    These are a corpus's closest pairs (paraphrases, near-duplicates, the same intent), whose fine order is what
    STS-style scores read. A PCA rotation keeps the order of typical neighbour or random pairs better than plain
    truncation at every size, yet on STS-B it loses 4 Spearman points at 16 dims: on these pairs it does lose order
    (held-out STS-B train rows, 16 dims: 0.80 against truncation's 0.84), so they are the pairs the gate checks."""
    unit = F.normalize(embeddings, dim=-1)
    scores = unit[rows] @ unit.T
    scores[torch.arange(len(rows)), rows] = -math.inf
    near = scores.topk(min(k, len(unit) - 1), dim=1).indices
    return rows.repeat_interleave(near.shape[1]), near.flatten()


def _centered_ranks(values):
    """Ranks along the last dimension (ties broken by order), minus their mean."""
    ranks = values.argsort(dim=-1).argsort(dim=-1).double()
    return ranks - ranks.mean(dim=-1, keepdim=True)


def spearman(x, y):
    """Spearman rank correlation of two tensors along their last dimension (ties broken by order; the pairs' cosines
    rarely tie): a float for 1-D tensors, a tensor of correlations for batches of rows."""
    rx, ry = _centered_ranks(x), _centered_ranks(y)
    rho = (rx * ry).sum(-1) / (rx.norm(dim=-1) * ry.norm(dim=-1)).clamp_min(1e-12)
    return float(rho) if rho.dim() == 0 else rho


def similarity_correlation(original, candidate, dim, pairs):
    """Spearman correlation between the full-size original cosines of `pairs` and `candidate`'s cosines at `dim`.

    Neighbour recall only asks whether the same rows come back; this asks whether every pair keeps its place in
    the order of similarities, which is what STS-style scores read (see `closest_pairs`)."""
    a, b = pairs
    full, small = F.normalize(original, dim=-1), truncate_embeddings(candidate, dim, True)
    return spearman((full[a] * full[b]).sum(-1), (small[a] * small[b]).sum(-1))


def correlation_gain_bound(original, candidate, baseline, dim, pairs, quantile=0.05, resamples=200, seed=0):
    """A lower bound on `similarity_correlation(original, candidate, dim, pairs)` minus the same for `baseline`: the
    `quantile` of its paired bootstrap distribution, the pairs drawn with replacement `resamples` times (seeded).

    The closest pairs' Spearman on one held-out sample is noisy at small sizes: on 800 held-out sentences a PCA
    rotation's change at 16 dims ranged from -6.5 to +1.5 points over six random splits of the same corpus (standard
    deviation about 2 within one sample), so a single split can pass a map that costs STS-style order."""
    a, b = pairs
    full = F.normalize(original, dim=-1)
    target = (full[a] * full[b]).sum(-1)
    small = [truncate_embeddings(x, dim, True) for x in (candidate, baseline)]
    cosines = [(x[a] * x[b]).sum(-1) for x in small]
    rows = torch.randint(len(a), (resamples, len(a)), generator=torch.Generator().manual_seed(seed))
    gains = spearman(target[rows], cosines[0][rows]) - spearman(target[rows], cosines[1][rows])
    return float(torch.quantile(gains, quantile))


def retrieval_ndcg(queries, documents, relevant, dim, k=VALIDATION_K):
    """nDCG@k of binary relevance: `relevant[i]` is the set of document rows relevant to query `i`."""
    scores = truncate_embeddings(queries, dim, True) @ truncate_embeddings(documents, dim, True).T
    ranked = scores.topk(min(k, scores.shape[1]), dim=1).indices.tolist()
    total = 0.0
    for row, wanted in zip(ranked, relevant):
        gain = sum(1 / math.log2(rank + 2) for rank, doc in enumerate(row) if doc in wanted)
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(wanted), k)))
        total += gain / ideal
    return total / len(relevant)
