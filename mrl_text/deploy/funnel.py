"""Funnel retrieval with Matryoshka embeddings: shortlist on a small prefix, rerank on larger ones.

The adaptive retrieval of Kusupati et al. (2022, section 4.3): a first stage searches the whole corpus with a small
prefix of every embedding (FAISS: exact flat, HNSW or IVF; optionally int8 or binary codes), then each later stage
rescores the survivors with exact dot products on a larger prefix and keeps fewer of them. Most of the corpus is
only ever touched at the small size, so a search costs a fraction of an exact full-size scan. Example:

```python
>>> from mrl_text.deploy.funnel import FunnelIndex, exact_search
>>> index = FunnelIndex(doc_embeddings, stages=[(32, 400), (128, 100), (384, 10)])
>>> scores, ids = index.search(query_embeddings, k=10)
>>> index.save("my_index"); index = FunnelIndex.load("my_index")
```
"""

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..file_utils import parked_folder, staged_folder
from ..models.modeling_matryoshka import truncate_embeddings
from ..models.quantization import calibration_ranges, check_ranges, dequantize, quantize, step_sizes
from ..progress import progress_enabled

SHORTLISTS = ("flat", "hnsw", "ivf")
QUANTIZATIONS = (None, "int8", "binary")
_CONFIG_FILE, _EMBEDDINGS_FILE, _SHORTLIST_FILE = "funnel_index.json", "embeddings.npy", "shortlist.faiss"
_FILES = (_CONFIG_FILE, _EMBEDDINGS_FILE, _SHORTLIST_FILE)
_ADD_CHUNK = 50_000  # rows added to the FAISS stage per progress-bar step
# IVF probes lists holding at least this many times the first stage's count (and at least 1/8 of its lists): on
# small corpora nlist / 8 rounds down to one list of a few dozen documents, and a shortlist of 400 from 40 loses
# most true neighbours (recall@10 0.5 on 300 documents); 4x keeps recall@10 >= 0.95 of exact search on clustered
# corpora of 300 to 20,000 documents (tests/test_retrieval.py).
_IVF_COVERAGE = 4
_NORM_EPS = 1e-12  # the floor torch.nn.functional.normalize puts under a norm (truncate_embeddings)

logger = logging.getLogger(__name__)


def default_stages(full_dim, dims=None):
    """Three stages in the paper's proportions: (full/12, 400), (full/3, 100), (full, 10).

    With `dims` (the model's trained sizes) each size is rounded up to the nearest trained size; without, to a
    power of two. For a 384-d model trained at 384/256/128/64/32/16 this gives [(32, 400), (128, 100), (384, 10)].
    """
    trained = sorted(d for d in dims or () if d <= full_dim)

    def size(target):
        if trained:
            return next((d for d in trained if d >= target), full_dim)
        return min(full_dim, 2 ** max(0, round(math.log2(target))))

    sizes = sorted({size(full_dim / 12), size(full_dim / 3), full_dim})
    return [(d, n) for d, n in zip(sizes, [400, 100, 10][-len(sizes):])]


def _as_matrix(embeddings, what):
    """A float32 C-contiguous `(n, dim)` numpy array (no copy when it already is one)."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, dim); got shape {embeddings.shape}.")
    if not np.issubdtype(embeddings.dtype, np.number):
        raise ValueError(f"{what} must hold numbers; got dtype {embeddings.dtype}.")
    return np.ascontiguousarray(embeddings, dtype=np.float32)


def _prefix_tensor(embeddings, dim, normalize):
    """The `dim`-prefix of numpy rows `(n, full)` as truncation makes it (re-normalized when `normalize`), a torch
    tensor. Only the prefix is copied: the rows may be a read-only memory map, which torch.from_numpy warns about."""
    return truncate_embeddings(torch.from_numpy(np.array(embeddings[:, :dim])), dim, normalize)


def _refuse_rows(bad, what, problem):
    """Name the rows flagged in `bad`: FAISS takes NaN or zero rows silently, then ranks them arbitrarily or as -1."""
    rows = np.flatnonzero(bad)
    if len(rows):
        raise ValueError(f"{what} rows {rows[:10].tolist()}{' ...' if len(rows) > 10 else ''} {problem}.")


def _check_k(k, available, what):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k={k!r} must be a positive integer.")
    if k > available:
        raise ValueError(f"k={k} is larger than {what} ({available}); ask for at most {available} results.")


def check_stages(stages, full_dim, dims=None):
    """`stages` as a list of `(size, keep)` int pairs, checked: sizes strictly increasing, counts non-increasing, the
    last size at most `full_dim`, and every size one of `dims` (the model's trained sizes) when given."""
    try:
        stages = [(int(d), int(n)) for d, n in stages]
    except (TypeError, ValueError):
        raise ValueError(
            f"stages={stages!r} must be a list of (size, keep) pairs, e.g. [(32, 400), (384, 10)]."
        ) from None
    if not stages:
        raise ValueError("stages is empty; give at least one (size, keep) pair, e.g. [(32, 400), (384, 10)].")
    sizes, counts = [d for d, _ in stages], [n for _, n in stages]
    if any(d <= 0 for d in sizes) or any(n <= 0 for n in counts):
        raise ValueError(f"stages={stages}: sizes and counts must be positive integers.")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"stage sizes {sizes} must be strictly increasing: each stage reranks on a larger prefix.")
    if any(b > a for a, b in zip(counts, counts[1:])):
        raise ValueError(f"stage counts {counts} must not increase: a stage can only keep what the one before kept.")
    if sizes[-1] > full_dim:
        raise ValueError(f"stage size {sizes[-1]} is larger than the embeddings' size {full_dim}.")
    if dims is not None:
        lacking = [d for d in sizes if d not in dims]
        if lacking:
            raise ValueError(f"stage size(s) {lacking} are not sizes the model was trained with {sorted(dims)}; "
                             "use only trained sizes (untrained prefixes are not good embeddings).")
    return stages


def prefix_norms(embeddings, dim, chunk=65_536):
    """L2 norms `(n,)` of the `dim`-prefixes of `embeddings` `(n, full)`, computed in chunks (no full-size copy)."""
    norms = np.empty(len(embeddings), dtype=np.float32)
    for start in range(0, len(embeddings), chunk):
        rows = embeddings[start : start + chunk, :dim]
        norms[start : start + chunk] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return norms


def rerank(queries, candidates, reranks, embeddings, normalize=True, norms=None):
    """Rescore candidate rows `(q, c)` of `embeddings` stage by stage on larger prefixes: `reranks` lists
    `(size, keep)`; candidates < 0 (FAISS's padding) are missing. Returns `(scores, ids)` numpy arrays `(q, keep)`,
    padded with -inf / -1 where fewer candidates exist; equal scores keep the candidates' order.

    A score is the dot product of the re-normalized prefixes (`truncate_embeddings`' rule), computed as the raw
    prefix dot product divided by the document prefix's norm: `norms` maps a size to the norms of every row
    (`prefix_norms`, stored once), else they are computed from the candidate rows.
    """
    queries = np.asarray(queries, dtype=np.float32)
    ids = np.array(candidates, dtype=np.int64, ndmin=2)
    scores = np.full(ids.shape, -np.inf, dtype=np.float32)
    for dim, keep in reranks:
        scores = _candidate_scores(queries, ids, dim, embeddings, normalize, norms)
        if keep < ids.shape[1]:  # each row's best `keep`, back in candidate order so that ties keep it below
            best = np.sort(np.argpartition(-scores, keep - 1, axis=1)[:, :keep], axis=1)
            ids, scores = np.take_along_axis(ids, best, 1), np.take_along_axis(scores, best, 1)
        order = np.argsort(-scores, axis=1, kind="stable")
        ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    return scores, ids


def _candidate_scores(queries, ids, dim, embeddings, normalize, norms):
    """Dot products `(q, c)` of each query's re-normalized `dim`-prefix with its candidate rows' `dim`-prefixes,
    divided by the rows' prefix norms when `normalize`; -inf where an id is < 0.

    At the full size FAISS reads each candidate row where it lies (one C call for all queries): gathering the rows
    into a copy first cost as much as the dot products, the rows being scattered over memory (or a mapped file). A
    smaller prefix is gathered one query at a time (FAISS's call reads whole rows only), its copy still in cache for
    the dot products."""
    import faiss

    missing = ids < 0
    rows = np.where(missing, 0, ids)
    prefixes = np.ascontiguousarray(truncate_embeddings(queries, dim, normalize), dtype=np.float32)
    scores = np.empty(ids.shape, dtype=np.float32)
    if dim == embeddings.shape[1] and embeddings.dtype == np.float32 and embeddings.flags.c_contiguous:
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(scores), faiss.swig_ptr(prefixes),
                                         faiss.swig_ptr(embeddings), faiss.swig_ptr(rows), dim, *ids.shape)
    else:
        for row, (query, found) in enumerate(zip(prefixes, rows)):
            scores[row] = embeddings[found, :dim] @ query
    if normalize:
        if norms:
            row_norms = norms[dim][rows]
        else:  # each distinct candidate row once
            distinct, where = np.unique(rows, return_inverse=True)
            row_norms = prefix_norms(embeddings[distinct], dim)[where].reshape(rows.shape)
        scores /= np.maximum(row_norms, _NORM_EPS)
    scores[missing] = -np.inf
    return scores


def build_exact_index(doc_embeddings, dim=None, normalize=True):
    """A FAISS exact inner-product index (`IndexFlatIP`) over the `dim`-prefix of the documents (re-normalized)."""
    import faiss

    docs = _as_matrix(doc_embeddings, "doc_embeddings")
    index = faiss.IndexFlatIP(dim or docs.shape[1])
    index.add(np.ascontiguousarray(truncate_embeddings(docs, dim, normalize)))
    return index


def exact_search(doc_embeddings, queries, k, dim=None, normalize=True):
    """Exact top-`k` search by dot product of the `dim`-prefixes (full size when `dim` is None), re-normalized.

    The reference the funnel is measured against. Returns `(scores, ids)`, both `(n_queries, k)`.
    """
    docs = _as_matrix(doc_embeddings, "doc_embeddings")
    queries = _as_matrix(queries, "queries")
    if len(docs) == 0:
        raise ValueError("exact_search got an empty corpus (0 documents); pass at least k documents.")
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"queries have size {queries.shape[1]} but documents have size {docs.shape[1]}; "
                         "embed both with the same model at full size.")
    _check_k(k, len(docs), "the corpus size")
    index = build_exact_index(docs, dim, normalize)
    return index.search(np.ascontiguousarray(truncate_embeddings(queries, dim, normalize)), k)


class FunnelIndex:
    r"""Funnel search over Matryoshka embeddings.

    The full embeddings are stored once (float32, `(n, full_dim)`); every later stage reads prefixes of those rows.
    The first stage's FAISS index holds its own copy of the small prefix only (`stages[0][0]` floats per document,
    or 1 byte / 1 bit per coordinate with int8 / binary codes).

    Args:
        doc_embeddings (`numpy.ndarray` or `torch.Tensor` of shape `(n, full_dim)`): full-size document
            embeddings; `n` may be 0 (then `add` documents before searching).
        stages (`list[tuple[int, int]]`, *optional*): `(size, keep)` pairs, sizes strictly increasing, counts
            non-increasing. Stage 1 searches the corpus at `size` and keeps `keep` candidates; each later stage
            rescores the previous survivors exactly at its `size` and keeps `keep`. The last count is the default
            `k`. Defaults to [`default_stages`], e.g. `[(32, 400), (128, 100), (384, 10)]` for 384-d embeddings.
        shortlist (`str`): the first stage's FAISS index: `"flat"` (exact), `"hnsw"` (graph) or `"ivf"`
            (inverted lists); the approximate ones pay off on large corpora.
        quantization (`str`, *optional*): codes of the first stage: `None` (float32), `"int8"` (one byte per
            coordinate, `mrl_text.models.quantization`'s codes, searched with float queries) or `"binary"` (sign bits,
            Hamming distance; the first size must be a multiple of 8).
        quantization_ranges (*optional*): int8 ranges `(2, first size)`; default: measured on the first documents
            added.
        normalize (`bool`): re-normalize every prefix (of documents and queries) to unit length, as the model does.
            Set False only for a model trained without normalization (raw dot products).
        dims (`list[int]`, *optional*): the sizes the model was trained with; every stage size must be one of them.
        hnsw_m (`int`): HNSW graph degree. ef_search (`int`, *optional*): HNSW search breadth (at least the first
            stage's count; default twice it). nlist / nprobe (`int`, *optional*): IVF lists (default ~4 sqrt(n)) and
            lists visited per query (default: enough lists to hold 4x the first stage's count, and at least
            nlist / 8; on small corpora that is every list, as exact as `"flat"`).
        query_chunk_size (`int`): queries reranked together (their candidates' scores are held at once).
        show_progress_bar (`bool`, *optional*): a bar while indexing; default where someone watches (see progress).
    """

    def __init__(
        self,
        doc_embeddings,
        stages=None,
        shortlist="flat",
        quantization=None,
        normalize=True,
        dims=None,
        quantization_ranges=None,
        hnsw_m=32,
        ef_search=None,
        nlist=None,
        nprobe=None,
        query_chunk_size=256,
        show_progress_bar=None,
    ):
        embeddings = _as_matrix(doc_embeddings, "doc_embeddings")
        self.full_dim = embeddings.shape[1]
        if shortlist not in SHORTLISTS:
            raise ValueError(f"shortlist={shortlist!r} is not supported; choose one of {SHORTLISTS}.")
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization={quantization!r} is not supported; choose one of {QUANTIZATIONS}.")
        self.dims = sorted({int(d) for d in dims}, reverse=True) if dims is not None else None
        stages = default_stages(self.full_dim, self.dims) if stages is None else stages
        self.stages = check_stages(stages, self.full_dim, self.dims)
        if quantization == "binary" and self.stages[0][0] % 8:
            raise ValueError(f"binary codes need a first-stage size that is a multiple of 8; got {self.stages[0][0]}.")
        self.shortlist, self.quantization, self.normalize = shortlist, quantization, bool(normalize)
        int8_ranges = quantization_ranges is not None and quantization == "int8"
        self.quantization_ranges = check_ranges(quantization_ranges, self.stages[0][0]) if int8_ranges else None
        self.hnsw_m, self.ef_search, self.nlist, self.nprobe = hnsw_m, ef_search, nlist, nprobe
        self.query_chunk_size = int(query_chunk_size)
        self._embeddings = embeddings[:0]
        # Each stage size's document prefix norms, stored once: a rerank is then a dot product and a scale
        self._norms = {d: np.zeros(0, dtype=np.float32) for d, _ in self.stages} if self.normalize else None
        self._index = None
        self.add(embeddings, show_progress_bar=show_progress_bar)

    @classmethod
    def from_model(cls, model, texts, stages=None, batch_size=256, max_length=None, show_progress_bar=None, **kwargs):
        """Embed `texts` with a [`MatryoshkaModel`] at full size and index them; sizes (and int8 ranges, when the
        model is calibrated at the first stage's size) come from its config.

        Stage sizes must be among `model.config.matryoshka_dimensions`; `normalize` follows the config. Other
        keyword arguments go to the constructor. `show_progress_bar`: bars while encoding and indexing.
        """
        config, show = model.config, progress_enabled(show_progress_bar)
        embeddings = model.encode(list(texts), dim=config.embedding_size, batch_size=batch_size,
                                  max_length=max_length, convert_to_numpy=True, show_progress_bar=show)
        kwargs.setdefault("normalize", config.normalize)
        first = (stages or default_stages(config.embedding_size, config.matryoshka_dimensions))[0][0]
        if kwargs.get("quantization") == "int8" and str(int(first)) in (config.quantization_ranges or {}):
            kwargs.setdefault("quantization_ranges", config.quantization_ranges[str(int(first))])  # the model's codes
        return cls(embeddings, stages=stages, dims=config.matryoshka_dimensions, show_progress_bar=show, **kwargs)

    def __len__(self):
        return len(self._embeddings)

    def __repr__(self):
        return (f"FunnelIndex({len(self)} x {self.full_dim}, stages={self.stages}, shortlist={self.shortlist!r}, "
                f"quantization={self.quantization!r})")

    @property
    def embeddings(self):
        """The stored full-size document embeddings `(n, full_dim)` (read-only view)."""
        view = self._embeddings.view()
        view.flags.writeable = False
        return view

    @property
    def shortlist_index(self):
        """The first stage's FAISS index (None while the index is empty): for tuning, e.g. `nprobe`/`efSearch`."""
        return self._index

    # --- first stage ----------------------------------------------------------------------------------------------

    def _codes(self, embeddings, queries=False):
        """The first stage's rows for full-size documents (or queries): the re-normalized prefix, its bits, or (int8
        documents) its dequantized codes, which FAISS stores as exactly those codes (`_new_index`)."""
        prefix = _prefix_tensor(embeddings, self.stages[0][0], self.normalize)
        if self.quantization == "binary":
            prefix = quantize(prefix, "ubinary")
        elif self.quantization == "int8" and not queries:
            if self.quantization_ranges is None:  # measured on the first documents added
                self.quantization_ranges = calibration_ranges(prefix)
            prefix = dequantize(quantize(prefix, "int8", self.quantization_ranges), "int8", self.quantization_ranges)
        return np.ascontiguousarray(prefix.numpy())

    def _new_index(self, codes):
        """The first stage's FAISS index, trained on the first documents' `codes` where it needs training."""
        import faiss

        dim = self.stages[0][0]
        if self.shortlist == "ivf":
            self.nlist = self.nlist or max(1, min(int(4 * math.sqrt(len(codes))), len(codes) // 39))
        if self.quantization == "binary":
            kind = {"flat": "BFlat", "hnsw": f"BHNSW{self.hnsw_m}", "ivf": f"BIVF{self.nlist}"}[self.shortlist]
            index = faiss.index_binary_factory(dim, kind)
        else:
            rows = {None: "Flat", "int8": "SQ8"}[self.quantization]  # how FAISS stores each prefix
            kind = {"flat": rows, "hnsw": f"HNSW{self.hnsw_m},{rows}", "ivf": f"IVF{self.nlist},{rows}"}[
                self.shortlist
            ]
            index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
        if self.shortlist == "ivf" and self.quantization == "int8":
            faiss.extract_index_ivf(index).by_residual = False  # our codes of the vectors, not of their residuals
        if not index.is_trained:  # IVF centroids come from the first documents added
            index.train(codes)
        if self.quantization == "int8":
            # FAISS's 8-bit quantizer with our ranges maps each step's middle (`_codes`) back to our code, and decodes
            # codes as `dequantize` does: the float queries are scored against our dequantized documents.
            owner = faiss.downcast_index(index.storage if self.shortlist == "hnsw" else index)
            vmin_and_width = torch.cat([self.quantization_ranges[0], 255 * step_sizes(self.quantization_ranges)])
            faiss.copy_array_to_vector(vmin_and_width.numpy(), owner.sq.trained)
            owner.is_trained = index.is_trained = True
        return index

    def _configure_search(self):
        """Search breadth of the first stage, for the documents it holds now (run after every `add`)."""
        import faiss

        first_count = self.stages[0][1]
        if self.shortlist == "hnsw":
            hnsw = faiss.downcast_index(self._index).hnsw if self.quantization != "binary" else self._index.hnsw
            hnsw.efSearch = max(self.ef_search or 2 * first_count, first_count)
        elif self.shortlist == "ivf":
            ivf = self._index if self.quantization == "binary" else faiss.extract_index_ivf(self._index)
            previous, ivf.nprobe = ivf.nprobe, self._ivf_nprobe(ivf.ntotal)
            if self.nprobe is None and ivf.nprobe == self.nlist and previous != ivf.nprobe:
                logger.info("shortlist='ivf' on %d documents probes all its %d lists (to keep about %dx the first "
                            "stage's %d candidates in reach): as exact as shortlist='flat', which is as fast here.",
                            ivf.ntotal, self.nlist, _IVF_COVERAGE, first_count)

    def _ivf_nprobe(self, n):
        """The IVF lists probed per query: `nprobe` if given, else enough lists to hold `_IVF_COVERAGE` times the
        first stage's count (lists hold n / nlist documents on average), and at least nlist / 8."""
        if self.nprobe is not None:
            return min(self.nlist, int(self.nprobe))
        covering = math.ceil(_IVF_COVERAGE * self.stages[0][1] * self.nlist / max(n, 1))
        return min(self.nlist, max(1, math.ceil(self.nlist / 8), covering))

    def add(self, doc_embeddings, show_progress_bar=None):
        """Append documents (full-size embeddings); their ids continue from `len(self)`. Returns the new ids.

        Rows holding NaN / inf, or whose first-stage prefix is all zeros (no direction to search by), are refused.
        `show_progress_bar`: a bar over the FAISS insertion (default: where someone watches, see
        `progress_enabled`)."""
        new = _as_matrix(doc_embeddings, "doc_embeddings")
        if new.shape[1] != self.full_dim:
            raise ValueError(f"added embeddings have size {new.shape[1]}, the index holds size {self.full_dim}; "
                             "embed them with the same model at full size.")
        _refuse_rows(~np.isfinite(new).all(1), "doc_embeddings", "hold NaN or infinite values; drop them or fix them")
        _refuse_rows(~new[:, : self.stages[0][0]].any(1), "doc_embeddings", f"are all zeros in the first "
                     f"{self.stages[0][0]} coordinates, which the first stage ranks by; drop them (empty texts?)")
        first = len(self)
        if len(new) == 0:
            return np.arange(first, first, dtype=np.int64)
        codes = self._codes(new)
        if self._index is None:
            self._index = self._new_index(codes)
        with tqdm(total=len(codes), desc="Indexing", unit="doc", disable=not progress_enabled(show_progress_bar),
                  delay=1) as bar:  # the delay keeps small indexes quiet
            for start in range(0, len(codes), _ADD_CHUNK):
                chunk = codes[start : start + _ADD_CHUNK]
                self._index.add(chunk)
                bar.update(len(chunk))
        self._configure_search()
        self._embeddings = new if first == 0 else np.concatenate([self._embeddings, new])
        if self.normalize:
            self._norms = {d: np.concatenate([norms, prefix_norms(new, d)]) for d, norms in self._norms.items()}
        return np.arange(first, first + len(new), dtype=np.int64)

    # --- search ---------------------------------------------------------------------------------------------------

    def search(self, queries, k=None):
        """Top-`k` documents for each query: `(scores, ids)`, each `(n_queries, k)` (or `(k,)` for one 1-D query).

        Scores are exact dot products of the re-normalized prefixes at the last stage's size, best first. `k`
        defaults to the last stage's count and may not exceed the count of the stage before it (the candidates
        the last stage ranks) nor the corpus size.
        """
        if len(self) == 0:
            raise ValueError("The FunnelIndex is empty (0 documents); add() documents before searching.")
        single = isinstance(queries, (np.ndarray, torch.Tensor)) and queries.ndim == 1
        queries = _as_matrix(queries[None] if single else queries, "queries")
        _refuse_rows(~np.isfinite(queries).all(1), "queries", "hold NaN or infinite values; drop them or fix them")
        if queries.shape[1] != self.full_dim:
            raise ValueError(f"queries have size {queries.shape[1]} but the index holds size {self.full_dim}; "
                             "pass full-size query embeddings from the same model.")
        n = len(self)
        k = self.stages[-1][1] if k is None else k
        _check_k(k, n, "the number of indexed documents")
        counts = [min(c, n) for _, c in self.stages]
        if len(self.stages) > 1 and k > counts[-2]:
            raise ValueError(f"k={k} is larger than the {counts[-2]} candidates the last stage reranks; raise the "
                             f"count of stage {self.stages[-2]} to at least {k}.")
        # The approximate or quantized first stage only shortlists; the reranks give exact scores.
        exact_first = self.shortlist == "flat" and self.quantization is None
        reranks = [(d, c) for (d, _), c in zip(self.stages[1:], counts[1:])]
        if not reranks and not exact_first:
            reranks = [(self.stages[0][0], counts[0])]
        if reranks:
            reranks[-1] = (reranks[-1][0], k)
        first_count = counts[0] if reranks else k
        scores, ids = self._index.search(self._codes(queries, queries=True), first_count)
        if not reranks:
            return (scores[0], ids[0]) if single else (scores, ids)
        out_scores = np.empty((len(queries), k), dtype=np.float32)
        out_ids = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), self.query_chunk_size):
            part = slice(start, start + self.query_chunk_size)
            out_scores[part], out_ids[part] = self._rerank(queries[part], ids[part], reranks)
        return (out_scores[0], out_ids[0]) if single else (out_scores, out_ids)

    def _rerank(self, queries, candidates, reranks):
        """Rescore candidate ids `(q, c)` on larger prefixes, with the prefix norms stored at `add`."""
        return rerank(queries, candidates, reranks, self._embeddings, self.normalize, self._norms)

    # --- persistence ----------------------------------------------------------------------------------------------

    def _config(self):
        names = ("stages", "shortlist", "quantization", "normalize", "dims", "hnsw_m", "ef_search", "nlist", "nprobe",
                 "query_chunk_size")
        ranges = None if self.quantization_ranges is None else self.quantization_ranges.tolist()
        return {**{name: getattr(self, name) for name in names}, "quantization_ranges": ranges}

    def save(self, path):
        """Write the index to folder `path`: its settings (JSON), the full embeddings (.npy) and the FAISS stage.

        The files go to a new folder beside `path`, which then replaces `path` (so a `path` holding other files is
        refused): an interrupted save leaves the previous index loadable, and saving over the folder the index was
        loaded or mapped from is safe.
        """
        import faiss

        path = Path(path)
        foreign = sorted({p.name for p in path.iterdir()} - set(_FILES)) if path.is_dir() else [path.name]
        if path.exists() and foreign:
            raise ValueError(f"{path} holds {foreign[:5]}, which are not FunnelIndex files, and save replaces the "
                             "whole folder; save into a new or empty folder (or one written by FunnelIndex.save).")
        with staged_folder(path) as staging:
            (staging / _CONFIG_FILE).write_text(json.dumps({**self._config(), "full_dim": self.full_dim}, indent=2))
            np.save(staging / _EMBEDDINGS_FILE, self._embeddings)
            if self._index is not None:
                write = faiss.write_index_binary if self.quantization == "binary" else faiss.write_index
                write(self._index, str(staging / _SHORTLIST_FILE))
        if isinstance(self._embeddings, np.memmap):  # read the saved file from now on, not the replaced one
            self._embeddings = np.load(path / _EMBEDDINGS_FILE, mmap_mode="r")
        return path

    @classmethod
    def load(cls, path, mmap=False):
        """Read an index written by `save`. `mmap=True` maps the embeddings from disk instead of reading them.

        A missing, unreadable or inconsistent file (e.g. embeddings of another width or count than the settings and
        the FAISS stage say) raises an error naming it."""
        import faiss

        path = Path(path)
        config_file, embeddings_file, shortlist_file = (path / name for name in _FILES)
        parked = parked_folder(path)
        for required in (config_file, embeddings_file):
            if not required.is_file():
                raise FileNotFoundError(f"{required}: not found; " + (
                    f"a save was interrupted and left the previous index in {parked}: rename it to {path}."
                    if parked.is_dir() else f"is {path} a folder written by FunnelIndex.save?"))

        def broken(file, problem):
            return ValueError(f"{file}: {problem}; the folder is damaged or mixed up, save the index again.")

        try:
            config = json.loads(config_file.read_text())
            full_dim = int(config.pop("full_dim"))
            index = cls(np.zeros((0, full_dim), dtype=np.float32), **config)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise broken(config_file, f"not valid FunnelIndex settings ({error})") from None
        try:
            embeddings = np.load(embeddings_file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise broken(embeddings_file, f"unreadable ({error})") from None
        if embeddings.ndim != 2 or embeddings.shape[1] != full_dim or embeddings.dtype != np.float32:
            raise broken(embeddings_file, f"holds {embeddings.dtype} of shape {embeddings.shape}, but {_CONFIG_FILE} "
                                          f"says float32 rows of size {full_dim}")
        index._embeddings = embeddings
        if index.normalize:
            index._norms = {d: prefix_norms(embeddings, d) for d, _ in index.stages}
        if shortlist_file.is_file():
            read = faiss.read_index_binary if index.quantization == "binary" else faiss.read_index
            try:
                index._index = read(str(shortlist_file))
                index._configure_search()
            except (RuntimeError, AttributeError) as error:
                raise broken(shortlist_file, f"unreadable, or not a {index.shortlist} index ({error})") from None
            if index._index.d != index.stages[0][0]:
                raise broken(shortlist_file, f"indexes {index._index.d}-d codes, but the first stage of "
                                             f"{_CONFIG_FILE} has size {index.stages[0][0]}")
        stored = index._index.ntotal if index._index is not None else 0
        if stored != len(embeddings):
            raise broken(shortlist_file, f"holds {stored} documents, but {_EMBEDDINGS_FILE} holds {len(embeddings)}")
        return index


__all__ = [
    "FunnelIndex", "build_exact_index", "check_stages", "default_stages", "exact_search", "prefix_norms", "rerank",
]
