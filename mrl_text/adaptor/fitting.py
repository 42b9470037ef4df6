"""Fit a `MatryoshkaAdaptor` on frozen embeddings (computed once, from any model or API).

Reference: Yoon et al., "Matryoshka-Adaptor: Unsupervised and Supervised Tuning for Smaller Embedding Dimensions",
EMNLP 2024. The encoder never runs here: the adaptor sees cached embeddings only, so a fit takes minutes on a CPU.

Objectives, at every nested size `m` of the adapted embeddings `e' = adaptor(e)` (prefixes re-normalized by the one
truncation rule, `truncate_embeddings`):
- unsupervised, from a corpus alone: the prefix similarities `cos(e'_i[:m], e'_j[:m])` match the full original
  similarities `cos(e_i, e_j)`, over every pair of a batch (pairwise) and over each row's `k` nearest full-size
  neighbours (top-k, the pairs a search returns), plus a reconstruction term keeping `e'` near `R e`;
- supervised, from (query, relevant document) pairs: the library's `MatryoshkaLoss(InfoNCELoss)` on the adapted
  query and document embeddings, with random corpus documents as extra negatives, and the unsupervised terms as a
  regularizer.
`objective="both"` runs the unsupervised fit, then the supervised one from where it ended.

Several candidate maps (`rotation="auto"`: the MLP, a PCA rotation, a learned rotation) are fit on one split, and
at each size the one that validates best is kept (`config.chosen`): a 64-d prefix may come from a rotation while the
256-d one comes from the MLP.

The validation gate (why a size can never get worse than plain truncation on validation data): a slice of the
corpus (and of the pairs) is held out. After every epoch the adaptor is scored on it at every size, next to plain
truncation of the original embeddings; the epoch with the best gated gain is kept, and then a size stays adapted
only if the adaptor beats plain truncation there on every validation metric (`config.adapted_dimensions`); at
every other size the adaptor returns its input, which *is* plain truncation. Unsupervised metrics: how well a size's
search reproduces the full-size original neighbours (recall@10 of the full-size top 10 among held-out rows; must
rise), and how well it keeps the order of the held-out rows' closest pairs' full-size similarities (Spearman; must
not drop, and its gain must hold on 95% of bootstrap resamples of the pairs: `correlation_gain_bound`). The second one
is what catches STS-style losses: a PCA rotation raises recall at every size on STS-B's sentences but costs STS-B
Spearman at 64 dims and below, and only the closest pairs show it (`closest_pairs`); on one held-out sample its order
gain is noisy enough to look positive on some splits, hence the bound.
The supervised metric is the held-out queries' nDCG@10 over the corpus; training drops the queries that share a
relevant document with a held-out one, so the gate sees answers the fit was not trained on.
"""

import copy
import math

import numpy as np
import torch
from torch.nn import functional as F

from ..data import disjoint_qrels
from ..losses import InfoNCELoss, MatryoshkaLoss
from ..models.modeling_matryoshka import truncate_embeddings
from ..models.modeling_matryoshka_adaptor import MatryoshkaAdaptor, MatryoshkaAdaptorConfig
from .metrics import (
    VALIDATION_K,
    closest_pairs,
    correlation_gain_bound,
    cosine_matrix,
    nearest_neighbours,
    neighbour_recall,
    retrieval_ndcg,
    similarity_correlation,
)

OBJECTIVES = ("unsupervised", "supervised", "both")


def as_embedding_matrix(embeddings, what, size=None):
    """`(n, d)` float32 tensor from numpy / torch / lists, or a clear error naming what is wrong."""
    try:
        tensor = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be a 2-D array of numbers (rows = texts); {error}.") from None
    tensor = tensor.detach().float().cpu()
    if tensor.dim() != 2:
        raise ValueError(f"{what} have shape {tuple(tensor.shape)}; expected a 2-D array (texts, embedding size).")
    if tensor.shape[0] == 0:
        raise ValueError(f"{what} are empty (0 rows); fit needs at least a few hundred embeddings.")
    if size is not None and tensor.shape[1] != size:
        raise ValueError(f"{what} have size {tensor.shape[1]}, but the adaptor maps embeddings of size {size}.")
    bad = torch.nonzero(~torch.isfinite(tensor).all(dim=1)).flatten()
    if len(bad):
        raise ValueError(f"{what} hold NaN or infinite values in {len(bad)} row(s), e.g. rows {bad[:10].tolist()}.")
    return tensor


def pca_rotation(embeddings):
    """Orthogonal matrix whose rows are the principal axes of `embeddings`, largest variance first."""
    centered = embeddings.double() - embeddings.double().mean(dim=0)
    _, vectors = torch.linalg.eigh(centered.T @ centered)  # ascending eigenvalues; d x d, cheap for any n
    return vectors.flip(1).T.contiguous().float()


class _Data:
    """The tensors one fit works on: train/validation corpus rows and, for a supervised fit, the queries, the
    documents they point to (the corpus, plus the pairs' own documents when given as arrays) and the split."""

    def __init__(self, corpus, validation_fraction, generator, pairs=None):
        n = corpus.shape[0]
        n_val = _held_out(n, validation_fraction)
        if n - n_val < 2 * VALIDATION_K or (n_val and n_val <= VALIDATION_K):
            enough = int(4 * VALIDATION_K / max(validation_fraction, 0.02))
            raise ValueError(
                f"The corpus holds {n} embeddings: too few to fit and hold out validation_fraction="
                f"{validation_fraction} of them; give at least {enough}."
            )
        order = torch.randperm(n, generator=generator)
        self.corpus, self.val_rows, self.train_rows = corpus, order[:n_val], order[n_val:]
        if pairs is None:
            return
        self.queries, self.relevant, extra = pairs
        self.documents = corpus if extra is None else torch.cat([corpus, extra])
        query_order = torch.randperm(len(self.queries), generator=generator).tolist()
        n_qval = _held_out(len(query_order), validation_fraction)
        if len(query_order) - n_qval < 2:
            raise ValueError(f"{len(query_order)} query(ies) are too few for a supervised fit; give at least 20.")
        self.val_queries = query_order[:n_qval]
        # Validation must judge the map on answers it was not trained on: a training query whose relevant document
        # is also a held-out query's would teach that answer (SciFact's queries share many), and the gate would then
        # keep maps that lose on new documents. Such training queries are dropped.
        train_qrels, _ = disjoint_qrels(
            {q: dict.fromkeys(self.relevant[q], 1) for q in query_order[n_qval:]},
            {q: dict.fromkeys(self.relevant[q], 1) for q in self.val_queries},
        )
        if len(train_qrels) < 2:
            raise ValueError(
                f"Only {len(train_qrels)} of {len(query_order) - n_qval} training queries have no relevant document "
                "in common with the held-out queries: give more pairs over more distinct documents, or a smaller "
                f"validation_fraction (now {validation_fraction})."
            )
        self.train_pairs = [(q, d) for q in query_order[n_qval:] if q in train_qrels for d in self.relevant[q]]


def _held_out(n, fraction):
    return max(int(round(n * fraction)), 1) if fraction > 0 else 0


def _prefix_similarity_loss(adapted_a, adapted_b, target, dims):
    """Mean over sizes of |cos(a'[:m], b'[:m]) - target| (row-wise when shapes match the target)."""
    total = 0.0
    for dim in dims:
        a, b = truncate_embeddings(adapted_a, dim, True), truncate_embeddings(adapted_b, dim, True)
        similarity = a @ b.T if target.dim() == 2 and adapted_b.dim() == 2 else (a[:, None, :] * b).sum(-1)
        total = total + (similarity - target).abs().mean()
    return total / len(dims)


def _listwise_loss(anchors, candidates, adapted_anchors, adapted_candidates, dims, temperature):
    """Mean over sizes of KL(full-size softmax over candidates || prefix softmax): the order of each anchor's
    nearest candidates matters most, as it does for search, and distant ones barely count."""
    self_mask = torch.zeros(len(anchors), len(candidates), dtype=torch.bool)
    self_mask[torch.arange(len(anchors)), torch.arange(len(anchors))] = True  # the first rows are the anchors
    target = F.log_softmax((cosine_matrix(anchors, candidates) / temperature).masked_fill(self_mask, -math.inf), dim=1)
    total = 0.0
    for dim in dims:
        a = truncate_embeddings(adapted_anchors, dim, True)
        c = truncate_embeddings(adapted_candidates, dim, True)
        predicted = F.log_softmax((a @ c.T / temperature).masked_fill(self_mask, -math.inf), dim=1)
        total = total + F.kl_div(predicted.masked_fill(self_mask, 0), target.masked_fill(self_mask, 0),
                                 log_target=True, reduction="batchmean")
    return total / len(dims)


class _Fitter:
    def __init__(self, adaptor, data, options, generator):
        self.adaptor, self.data, self.options, self.generator = adaptor, data, options, generator
        self.dims = adaptor.config.matryoshka_dimensions
        self.small_dims = [d for d in self.dims if d < adaptor.config.embedding_size] or self.dims
        train = data.corpus[data.train_rows]
        self.train = train
        self.neighbours, self.neighbour_sims = nearest_neighbours(train, options["k"])
        # The held-out rows' closest pairs in the whole corpus, as indices into the rows they touch.
        self.pair_rows, self.val_pairs = torch.unique(torch.cat(closest_pairs(data.corpus, data.val_rows)),
                                                      return_inverse=True)
        self.val_pairs = self.val_pairs.view(2, -1)
        self.baselines = {}
        self.skew = None
        if adaptor.config.rotation == "learned":
            self.skew = torch.nn.Parameter(torch.zeros_like(adaptor.rotation))
            self.base_rotation = adaptor.rotation.clone()

    def rotation(self):
        if self.skew is None:
            return
        self.adaptor.rotation = self.base_rotation @ torch.linalg.matrix_exp(self.skew - self.skew.T)

    def unsupervised_loss(self, rows):
        o = self.options
        anchors = self.train[rows]
        adapted = self.adaptor.adapt(anchors)
        loss = o["pair_weight"] * _prefix_similarity_loss(adapted, adapted, cosine_matrix(anchors, anchors), self.dims)
        # A few of each row's k full-size neighbours per step (all of them over the epochs): the MLP's cost is
        # per row, and k neighbours per anchor would multiply it by k.
        pool = self.neighbours.shape[1]
        picks = torch.rand(len(rows), pool, generator=self.generator).argsort(dim=1)[:, : o["neighbours_per_step"]]
        chosen = self.neighbours[rows].gather(1, picks)  # (batch, per_step)
        adapted_neighbours = self.adaptor.adapt(self.train[chosen])  # (batch, per_step, d)
        loss = loss + o["topk_weight"] * _prefix_similarity_loss(
            adapted, adapted_neighbours, self.neighbour_sims[rows].gather(1, picks), self.dims
        )
        if o["listwise_weight"]:
            candidates = torch.cat([anchors, self.train[chosen].flatten(0, 1)])
            adapted_candidates = torch.cat([adapted, adapted_neighbours.flatten(0, 1)])
            loss = loss + o["listwise_weight"] * _listwise_loss(
                anchors, candidates, adapted, adapted_candidates, self.dims, o["listwise_temperature"])
        reference = anchors @ self.adaptor.rotation.T if self.adaptor.rotation.numel() else anchors
        return loss + o["reconstruction_weight"] * (adapted - reference).pow(2).sum(-1).mean()

    def supervised_loss(self, batch, ranking_loss):
        o, data = self.options, self.data
        queries = data.queries[[q for q, _ in batch]]
        positives = data.documents[[d for _, d in batch]]
        negatives = self.train[torch.randint(len(self.train), (o["negatives"],), generator=self.generator)]
        embeddings = [self.adaptor.adapt(queries), self.adaptor.adapt(positives)]
        if o["negatives"]:
            embeddings.append(self.adaptor.adapt(negatives))
        loss = ranking_loss(embeddings)
        if o["regularization"]:
            rows = torch.randint(len(self.train), (o["batch_size"],), generator=self.generator)
            loss = loss + o["regularization"] * self.unsupervised_loss(rows)
        return loss

    @torch.no_grad()
    def validation_scores(self, supervised):
        """`{dim: {metric: (adapted score, truncation score)}}` on the held-out rows (or held-out queries)."""
        data, adapt = self.data, self.adaptor.adapt
        if supervised:
            relevant = [set(data.relevant[q]) for q in data.val_queries]
            queries = data.queries[data.val_queries]
            adapted = (adapt(queries), adapt(data.documents))
            metrics = {"ndcg": lambda q, d, dim: retrieval_ndcg(q, d, relevant, dim)}
            original = (queries, data.documents)
        else:
            held_out, paired = data.corpus[data.val_rows], data.corpus[self.pair_rows]
            adapted = (held_out, adapt(held_out), paired, adapt(paired))
            metrics = {"recall": lambda o, c, po, pc, dim: neighbour_recall(o, c, dim),
                       "correlation": lambda o, c, po, pc, dim: similarity_correlation(po, pc, dim, self.val_pairs)}
            original = (held_out, held_out, paired, paired)
        if supervised not in self.baselines:  # plain truncation's scores do not change during a fit
            self.baselines[supervised] = {d: {m: f(*original, d) for m, f in metrics.items()} for d in self.dims}
        baseline = self.baselines[supervised]
        scores = {d: {m: (f(*adapted, d), baseline[d][m]) for m, f in metrics.items()} for d in self.dims}
        if not supervised:  # the order check's third figure: a lower bound on its gain (see `beats_truncation`)
            for d in self.dims:
                bound = correlation_gain_bound(paired, adapted[3], paired, d, self.val_pairs)
                scores[d]["correlation"] = (*scores[d]["correlation"], bound)
        return scores

    def run(self, supervised, epochs, progress):
        o, adaptor = self.options, self.adaptor
        parameters = [p for p in adaptor.parameters() if p.requires_grad]
        if self.skew is not None:
            parameters.append(self.skew)
        if not parameters:  # nothing to train (a fixed rotation): the bar counts only the epochs that run
            progress.total -= epochs
            progress.refresh()
            return self.validation_scores(supervised)
        optimizer = torch.optim.AdamW(parameters, lr=o["learning_rate"], weight_decay=o["weight_decay"])
        ranking_loss = MatryoshkaLoss(InfoNCELoss(scale=o["scale"], gather_across_devices=False), self.dims)
        best = (self.validation_scores(supervised), -math.inf, copy.deepcopy(adaptor.state_dict()))
        best = (best[0], self.mean_gain(best[0]), best[2])
        for _ in range(epochs):
            adaptor.train()
            if supervised:
                order = torch.randperm(len(self.data.train_pairs), generator=self.generator).tolist()
                batches = [[self.data.train_pairs[i] for i in order[s : s + o["batch_size"]]]
                           for s in range(0, len(order), o["batch_size"])]
            else:
                order = torch.randperm(len(self.train), generator=self.generator)
                batches = [order[s : s + o["batch_size"]] for s in range(0, len(order), o["batch_size"])]
            for batch in batches:
                self.rotation()
                loss = self.supervised_loss(batch, ranking_loss) if supervised else self.unsupervised_loss(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            adaptor.eval()
            with torch.no_grad():
                self.rotation()
            scores = self.validation_scores(supervised)
            gain = self.mean_gain(scores)
            if gain > best[1]:
                best = (scores, gain, copy.deepcopy(adaptor.state_dict()))
            progress.set_postfix(stage="supervised" if supervised else "unsupervised", loss=f"{loss.item():.4f}",
                                 val_gain=f"{gain:+.4f}")
            progress.update(1)
        adaptor.load_state_dict(best[2])
        if self.skew is not None:  # continue (next stage) from the kept rotation
            self.base_rotation = adaptor.rotation.clone()
            self.skew.data.zero_()
        return best[0]

    def mean_gain(self, scores):
        """Mean over the smaller sizes of the gain the gate would keep (0 where it keeps the identity)."""
        return float(np.mean([gated_gain(scores[d]) for d in self.small_dims]))


def beats_truncation(metrics):
    """The gate: a size is adapted only when the adaptor beats truncation on the first metric and loses on none.

    A metric's figures are `(adapted, truncation)` or `(adapted, truncation, lower bound of the gain)`; with a bound
    (the closest pairs' order, `correlation_gain_bound`), the gain must also hold on 95% of bootstrap resamples of the
    held-out pairs: one held-out sample alone let a PCA rotation through at 16 dims on a split where its order gain
    was +1.5 points, though it costs 7 points of STS-B Spearman on other sentences (and its gain was -6.5 on
    another split of the same corpus)."""
    values = list(metrics.values())
    return values[0][0] > values[0][1] and all(v[0] >= v[1] and (len(v) < 3 or v[2] >= 0) for v in values)


def gated_gain(metrics):
    return raw_gain(metrics) if beats_truncation(metrics) else 0.0


DEFAULTS = dict(
    epochs=30, supervised_epochs=30, batch_size=256, learning_rate=1e-3, weight_decay=0.0, k=10, neighbours_per_step=3,
    pair_weight=1.0, topk_weight=1.0, reconstruction_weight=0.1, listwise_weight=0.0, listwise_temperature=0.05,
    scale=20.0, negatives=256, regularization=0.1,
)


def _pairs_as_rows(pairs, query_embeddings, query_ids, corpus_ids, corpus):
    """(queries `(q, d)`, relevant document rows per query) from aligned arrays or id pairs / qrels."""
    if isinstance(pairs, dict):  # qrels {query_id: {doc_id: relevance}}
        pairs = [(q, d) for q, docs in pairs.items() for d, rel in docs.items() if rel > 0]
    if isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], (str, int)):
        queries = as_embedding_matrix(pairs[0], "pair query embeddings", corpus.shape[1])
        documents = as_embedding_matrix(pairs[1], "pair document embeddings", corpus.shape[1])
        if len(queries) != len(documents):
            raise ValueError(f"pairs hold {len(queries)} query and {len(documents)} document embeddings; align them.")
        start = corpus.shape[0]
        return queries, [[start + i] for i in range(len(queries))], documents
    if query_embeddings is None or query_ids is None or corpus_ids is None:
        raise ValueError("pairs given as ids need query_embeddings, query_ids and corpus_ids (one id per row).")
    queries = as_embedding_matrix(query_embeddings, "query_embeddings", corpus.shape[1])
    query_row = {str(q): i for i, q in enumerate(query_ids)}
    doc_row = {str(d): i for i, d in enumerate(corpus_ids)}
    if len(query_row) != len(queries) or len(doc_row) != len(corpus):
        raise ValueError(
            f"query_ids ({len(query_ids)}) and corpus_ids ({len(corpus_ids)}) need one distinct id per row."
        )
    relevant = {}
    for query, doc in pairs:
        if str(query) not in query_row:
            raise ValueError(f"pairs name query id {query!r}, which is not among query_ids.")
        if str(doc) not in doc_row:
            raise ValueError(f"pairs name document id {doc!r}, which is not among corpus_ids.")
        relevant.setdefault(query_row[str(query)], set()).add(doc_row[str(doc)])
    if not relevant:
        raise ValueError("pairs are empty; give (query id, document id) pairs or qrels with relevance > 0.")
    rows = sorted(relevant)
    return queries[rows], [sorted(relevant[r]) for r in rows], None


def fit(
    corpus_embeddings,
    matryoshka_dimensions=None,
    pairs=None,
    *,
    objective=None,
    adaptor=None,
    query_embeddings=None,
    query_ids=None,
    corpus_ids=None,
    rotation="auto",
    hidden_size=512,
    num_layers=1,
    validation_fraction=0.1,
    gate=True,
    seed=0,
    show_progress_bar=True,
    description=None,
    **options,
):
    """Fit a Matryoshka adaptor on frozen embeddings; returns the fitted `MatryoshkaAdaptor`.

    Args:
        corpus_embeddings (`numpy.ndarray` or `torch.Tensor`, `(n, d)`): embeddings of the texts the adaptor will
            serve (e.g. the corpus you index), from any model or API; the unsupervised objective's data.
        matryoshka_dimensions (`list[int]`): the nested sizes (default: `adaptor`'s).
        pairs: supervision, in one of three forms: `(query_embeddings, document_embeddings)` (two aligned arrays);
            a list of `(query_id, corpus_id)`; or qrels `{query_id: {corpus_id: relevance}}` (relevance > 0
            counts). The id forms need `query_embeddings`, `query_ids` (one per row) and `corpus_ids` (one per
            corpus row).
        objective (`str`): `"unsupervised"`, `"supervised"` or `"both"` (unsupervised first, then supervised);
            default `"both"` with pairs, else `"unsupervised"`.
        adaptor (`MatryoshkaAdaptor`, *optional*): continue fitting this one (e.g. supervised after an earlier
            unsupervised fit); it is changed only when the fit succeeds.
        rotation (`str`, *optional*): for a new adaptor, `"auto"` (default: fit the MLP alone, a PCA rotation alone
            and a learned rotation alone on the same split and keep, at each size, the one with the largest gated
            validation gain, or plain truncation where none passes: `config.chosen`; see `candidate_shapes`),
            `"pca"`, `"learned"` (starts from PCA, then trained) or `None` (the MLP alone).
        hidden_size, num_layers: the residual MLP's shape, for a new adaptor (`num_layers=0`: rotation only).
        validation_fraction (`float`): share of the corpus (and of the queries) held out for the validation gate.
        gate (`bool`): keep the identity at every size where the adaptor does not beat plain truncation on the
            validation data (see the module docstring). `False` adapts every size (for comparisons).
        seed (`int`): the split, the batches and the initialization.
        description (`str`, *optional*): what the embeddings are (e.g. "SciFact corpus, all-MiniLM-L6-v2"),
            recorded in `config.fit_summary` for the model card.
        **options: training settings, defaults in `DEFAULTS` (epochs, supervised_epochs, batch_size,
            learning_rate, k, neighbours_per_step, pair_weight, topk_weight, reconstruction_weight, listwise_weight,
            listwise_temperature, scale, negatives, regularization). `listwise_weight` > 0 adds a listwise term: the
            KL divergence between each row's full-size softmax over a batch's rows (and its neighbours) and each
            prefix's, which weighs the nearest rows most.
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown fit option(s) {unknown}; the options are {sorted(DEFAULTS)}.")
    options = {**DEFAULTS, **options}
    objective = objective or ("both" if pairs is not None else "unsupervised")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is not one of {list(OBJECTIVES)}.")
    if objective != "unsupervised" and pairs is None:
        raise ValueError(f"objective={objective!r} needs `pairs` (query/document pairs or qrels).")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction!r} must be in [0, 1); 0.1 is usual.")
    if gate and validation_fraction == 0:
        raise ValueError("gate=True needs held-out data: give validation_fraction > 0 (0.1 is usual) or gate=False.")
    size = adaptor.config.embedding_size if adaptor is not None else None
    corpus = as_embedding_matrix(corpus_embeddings, "corpus_embeddings", size)
    if adaptor is None:
        if not matryoshka_dimensions:
            raise ValueError("matryoshka_dimensions is required for a new adaptor, e.g. [384, 256, 128, 64, 32, 16].")
        # Checks the shape arguments before any work (the candidates below are built the same way).
        MatryoshkaAdaptorConfig(corpus.shape[1], list(matryoshka_dimensions), hidden_size, num_layers,
                                None if rotation == "auto" else rotation)
    elif matryoshka_dimensions and sorted(matryoshka_dimensions) != sorted(adaptor.config.matryoshka_dimensions):
        raise ValueError(
            f"matryoshka_dimensions {list(matryoshka_dimensions)} differ from the adaptor's "
            f"{adaptor.config.matryoshka_dimensions}; omit them to keep the adaptor's."
        )
    supervision = (
        None if objective == "unsupervised" else _pairs_as_rows(pairs, query_embeddings, query_ids, corpus_ids, corpus)
    )

    fits, data = fit_candidates(corpus, matryoshka_dimensions, supervision, objective, adaptor, rotation, hidden_size,
                                num_layers, validation_fraction, seed, show_progress_bar, options)
    chosen = choose_per_size(fits, gate)
    working = combine(fits, chosen, hidden_size)
    working.eval()
    config = working.config
    scores_at = {d: (fits[chosen[d]] if d in chosen else best_failing(fits, d))["scores"][d]
                 for d in config.matryoshka_dimensions}
    metrics = {"ndcg": "nDCG@10 of held-out queries",
               "recall": f"recall@{VALIDATION_K} of full-size neighbours among held-out rows",
               "correlation": "Spearman of held-out rows' closest pairs' cosines against full size (must not drop, "
                              "also at the 5% bootstrap bound of its gain)"}
    first = next(iter(scores_at.values()))
    config.fit_summary = {
        "description": description,
        "objective": objective,
        "corpus_embeddings": int(corpus.shape[0]),
        "validation_rows": int(len(data.val_rows)),
        "queries": None if supervision is None else int(len(data.queries)),
        "validation_metric": "; ".join(metrics[m] for m in first),
        # Per size: the kept candidate's figures (where none passed the gate, the closest one's, for reference).
        "validation": {
            str(d): {**validation_row(m), "adapted": d in chosen, "candidate": chosen.get(d)}
            for d, m in scores_at.items()
        },
        "candidates": {
            name: {"mean_gain": round(f["mean_gain"], 4),
                   "validation": {str(d): validation_row(m) for d, m in f["scores"].items()}}
            for name, f in fits.items()
        } if len(fits) > 1 else None,
        # Each candidate's mean gated gain, under the key adaptors fit before the per-size choice used: readers of
        # older fit summaries keep working.
        "rotation_candidates": {name: round(f["mean_gain"], 4) for name, f in fits.items()} if len(fits) > 1 else None,
        "options": options,
        "seed": seed,
    }
    if adaptor is None:
        return working
    # In place (the caller's object becomes the fitted adaptor), whatever maps the choice kept.
    state = working.state_dict()
    MatryoshkaAdaptor.__init__(adaptor, config)
    adaptor.load_state_dict(state)
    return adaptor.eval()


def candidate_name(rotation, num_layers):
    """"mlp", "pca", "learned", "pca+mlp", ...: what a candidate map is made of."""
    parts = [rotation] if rotation else []
    return "+".join(parts + (["mlp"] if num_layers else [])) or "identity"


def candidate_shapes(rotation, num_layers):
    """`[(rotation, num_layers)]` of the candidates `fit(rotation=...)` tries for a new adaptor.

    "auto": the MLP alone, a PCA rotation alone and a learned rotation alone; `fit` keeps, at each size, the one
    that validates best. An MLP on top of the PCA rotation is not among them: it did not raise validation recall
    over the rotation alone and, on STS-B, passed the gate while costing test Spearman at 32 and 16 dims."""
    if rotation == "auto":
        return [(None, num_layers), ("pca", 0), ("learned", 0)] if num_layers else [("pca", 0), ("learned", 0)]
    return [(rotation, num_layers)]


def fit_candidates(corpus, dims, supervision, objective, adaptor, rotation, hidden_size, num_layers,
                   validation_fraction, seed, show_progress_bar, options):
    """Fit every candidate on one split; `({name: {"adaptor", "scores", "mean_gain"}}, the split)`.

    Each candidate is a single-map adaptor fit on its own (its best epoch by mean gated gain); `scores` are its
    validation scores `{dim: {metric: (adapted, truncation)}}`. Continuing a fitted `adaptor` refits its map (or,
    for a per-size choice, each of its candidates' maps)."""
    options = {**DEFAULTS, **options}
    generator = torch.Generator().manual_seed(seed)
    stages = {"unsupervised": [False], "supervised": [True], "both": [False, True]}[objective]
    epochs = {False: options["epochs"], True: options["supervised_epochs"]}
    if adaptor is None:
        shapes = candidate_shapes(rotation, num_layers)
        names = [candidate_name(*shape) for shape in shapes]
    elif adaptor.config.candidates:
        names = list(adaptor.config.candidates)
    else:
        names = [candidate_name(adaptor.config.rotation, adaptor.config.num_layers)]
    from tqdm.auto import tqdm

    fits = {}
    with torch.random.fork_rng(), tqdm(total=len(names) * sum(epochs[s] for s in stages), desc="Fitting adaptor",
                                       unit="epoch", disable=not show_progress_bar) as progress:
        torch.manual_seed(seed)
        data = _Data(corpus, validation_fraction, generator, supervision)
        for i, name in enumerate(names):
            torch.manual_seed(seed)
            if adaptor is None:
                candidate, layers = shapes[i]
                working = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(corpus.shape[1], list(dims), hidden_size, layers,
                                                                    candidate))
                if candidate in ("pca", "learned"):  # a learned rotation starts from PCA's
                    working.rotation.copy_(pca_rotation(corpus[data.train_rows]))
            else:  # a copy: a failed fit must leave `adaptor` as it was
                working = copy.deepcopy(adaptor.candidates[name] if adaptor.config.candidates else adaptor)
                working = working.float().requires_grad_(True)
            fitter = _Fitter(working, data, options, torch.Generator().manual_seed(seed + 1))
            for supervised in stages:
                scores = fitter.run(supervised, epochs[supervised], progress)
            working.eval()
            fits[name] = {"adaptor": working, "scores": scores, "mean_gain": fitter.mean_gain(scores)}
    return fits, data


# A validation gain within this of the best is a tie: the fit then keeps the candidate with the best mean gain over
# the sizes (one map rather than two chosen on noise). Held-out recall@10 over ~1,000 rows moves by about this much.
CHOICE_TOLERANCE = 0.002


def choose_per_size(fits, gate=True, tolerance=CHOICE_TOLERANCE):
    """`{dim: candidate name}` for the sizes to adapt: at each size the candidate with the largest gated validation
    gain among those passing the gate (with `gate=False`, the largest summed gain, passing or not), where the one
    with the best mean gain wins every tie within `tolerance`; a size no candidate passes is left out (plain
    truncation)."""
    chosen = {}
    overall = max(fits, key=lambda name: fits[name]["mean_gain"])
    dims = next(iter(fits.values()))["scores"]
    for dim in dims:
        gains = {name: gated_gain(f["scores"][dim]) if gate else raw_gain(f["scores"][dim])
                 for name, f in fits.items() if not gate or beats_truncation(f["scores"][dim])}
        if not gains:
            continue
        best = max(gains, key=gains.get)
        chosen[dim] = overall if overall in gains and gains[overall] >= gains[best] - tolerance else best
    return chosen


def best_failing(fits, dim):
    """The candidate closest to passing at `dim` (largest summed gain), for the record of a size none passed."""
    return max(fits.values(), key=lambda f: raw_gain(f["scores"][dim]))


def combine(fits, chosen, hidden_size):
    """One adaptor applying `chosen` per size: the lone candidate used (or, when none is used, the one with the
    largest mean gain) as a plain single-map adaptor; else a per-size choice holding each used candidate's map."""
    used = list(dict.fromkeys(chosen.values()))
    if len(used) <= 1:
        name = used[0] if used else max(fits, key=lambda n: fits[n]["mean_gain"])
        single = fits[name]["adaptor"]
        single.config.adapted_dimensions = sorted(chosen, reverse=True)
        single.config.candidates = single.config.chosen = None
        return single
    first = fits[used[0]]["adaptor"].config
    specs = {name: {"rotation": fits[name]["adaptor"].config.rotation,
                    "hidden_size": fits[name]["adaptor"].config.hidden_size,
                    "num_layers": fits[name]["adaptor"].config.num_layers} for name in used}
    config = MatryoshkaAdaptorConfig(first.embedding_size, first.matryoshka_dimensions, hidden_size, 0, None,
                                     sorted(chosen, reverse=True), candidates=specs,
                                     chosen={str(d): n for d, n in chosen.items()})
    combined = MatryoshkaAdaptor(config)
    for name in used:
        combined.candidates[name].load_state_dict(fits[name]["adaptor"].state_dict())
    return combined.eval()


def raw_gain(metrics):
    return sum(v[0] - v[1] for v in metrics.values())


def validation_row(metrics):
    """`{"adaptor", "truncation", "<metric>_adaptor", "<metric>_truncation", ...}` of one size, rounded: the first
    metric under the plain keys (the gate's main one), the others prefixed by their names (with
    "<metric>_gain_lower_bound" where the gate has a bound on that metric's gain)."""
    (a, t, *_), rest = next(iter(metrics.values())), list(metrics.items())[1:]
    return {"adaptor": round(a, 4), "truncation": round(t, 4),
            **{f"{name}_{side}": round(pair[i], 4) for name, pair in rest
               for i, side in enumerate(("adaptor", "truncation", "gain_lower_bound")[:len(pair)])}}


def transform(adaptor, embeddings, dim=None, normalize=True):
    """`adaptor.transform(embeddings, dim)`: adapt, keep the first `dim` coordinates and re-normalize."""
    return adaptor.transform(embeddings, dim=dim, normalize=normalize)


__all__ = ["DEFAULTS", "MatryoshkaAdaptor", "MatryoshkaAdaptorConfig", "fit", "pca_rotation", "transform"]
