"""Funnel retrieval on Milvus: the `FunnelIndex` stages, kept in a vector database with ids, filters and deletes.

Milvus cannot search a prefix of a stored vector, so one collection holds one vector field per stage: the
(re-normalized) `size`-prefix of every document, `prefix_<size>` (the first stage's as sign bits with
`quantization="binary"`). Stage 1 searches the whole collection on the small field (with the user's scalar filter);
each later stage is a search on its larger field restricted to the survivors' ids, so the reranking runs inside
the engine and only ids and scores cross the wire. Scores are those of `FunnelIndex`: dot products of the
re-normalized prefixes at the last stage's size.

`uri` is a local file for Milvus Lite (the default, `pip install "mrl-text[milvus]"`: the engine runs inside this
process) or a server address (`"http://host:19530"`, Milvus standalone or distributed): the same code serves both.

```python
>>> from mrl_text.deploy.milvus import MilvusFunnelIndex
>>> index = MilvusFunnelIndex("funnel.db", stages=[(64, 200), (384, 10)])
>>> index.add(doc_embeddings, ids=doc_ids, fields={"lang": langs})  # an upsert: reruns replace, never duplicate
>>> scores, ids = index.search(query_embeddings, k=10, filter="lang == 'en'")
```
"""

import json
import re

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.quantization import quantize
from ..progress import progress_enabled
from .funnel import _as_matrix, _check_k, _prefix_tensor, _refuse_rows, check_stages, default_stages

QUANTIZATIONS = (None, "binary")
_ID_FIELD = "id"
_SETTINGS_KEY = "mrl_text_funnel"  # the collection property holding this class's settings (JSON)
_INSTALL = 'pip install "mrl-text[milvus]"'
_MAX_FILTER_IDS = 16_384  # Milvus's largest `limit` (topk): a stage never reranks more survivors than this


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise ImportError(f"MilvusFunnelIndex needs pymilvus (and milvus-lite for a local file): {_INSTALL}") from None
    return pymilvus


def is_server_uri(uri):
    """Whether `uri` names a Milvus server (`http(s)://`, `tcp://`, `grpc://`) rather than a Milvus Lite file."""
    return re.match(r"^(https?|tcp|grpc|unix)://", str(uri)) is not None


def _field(dim):
    return f"prefix_{dim}"


class MilvusFunnelIndex:
    r"""Funnel search over Matryoshka embeddings stored in a Milvus collection (Milvus Lite or a server).

    The contract of [`FunnelIndex`]: `add` full-size embeddings, `search(queries, k)` returns `(scores, ids)`, stages
    are `[(size, keep), ...]`; here ids are the user's (int64), `add` is an upsert, and `delete` and scalar filters
    work. The collection is created at the first `add` and records its settings (stages, full size, normalization,
    quantization) in its properties; opening it again adopts them, and a mismatch raises an error naming both.

    Args:
        uri (`str`): a local file ending in `.db` (Milvus Lite, in this process) or a server address such as
            `"http://localhost:19530"`.
        collection (`str`): the collection's name.
        stages (`list[tuple[int, int]]`, *optional*): as for `FunnelIndex` (default [`default_stages`] of the
            full size, or the existing collection's stages).
        full_dim (`int`, *optional*): the embeddings' full size; default: the first `add`'s, or the collection's.
        dims (`list[int]`, *optional*): the model's trained sizes; every stage size must be one of them.
        normalize (`bool`): re-normalize every prefix (documents and queries), as the model does.
        quantization (`str`, *optional*): `None` (float first stage) or `"binary"` (sign bits of the first prefix,
            Hamming distance; Milvus servers only: Milvus Lite has no binary vectors. On Lite, a compact first stage
            is `index_type="IVF_SQ8"`, one byte per coordinate).
        index_type (`str`, *optional*): the first stage's Milvus index, e.g. `"FLAT"` (exact, the default),
            `"HNSW"`, `"IVF_FLAT"`, `"IVF_SQ8"` (`"BIN_FLAT"` / `"BIN_IVF_FLAT"` for binary). Later stages are FLAT:
            they only ever score the survivors.
        index_params (`dict`, *optional*): the first stage's index parameters (e.g. `{"M": 32, "efConstruction":
            200}`); search_params (`dict`, *optional*): its search parameters (e.g. `{"ef": 800}`, `{"nprobe": 32}`).
        token (`str`, *optional*): credentials for a server (`"user:password"` or an API key).
        timeout (`float`): seconds to wait for a server before saying it cannot be reached.
        insert_batch_size (`int`): rows per upsert call (and per progress-bar step).
    """

    def __init__(self, uri="mrl_funnel.db", collection="mrl_funnel", stages=None, full_dim=None, dims=None,
                 normalize=True, quantization=None, index_type=None, index_params=None, search_params=None,
                 token=None, timeout=10.0, insert_batch_size=1000):
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization={quantization!r} is not supported by MilvusFunnelIndex; choose one of "
                             f"{QUANTIZATIONS} (for one-byte codes use index_type='IVF_SQ8').")
        self.uri, self.collection = str(uri), str(collection)
        self.is_lite = not is_server_uri(self.uri)
        if self.is_lite and not self.uri.endswith(".db"):
            raise ValueError(f"uri={self.uri!r} is neither a server address (http://host:19530) nor a Milvus Lite "
                             "file; a Milvus Lite file name must end in .db, e.g. 'funnel.db'.")
        if self.is_lite and quantization == "binary":
            raise ValueError("Milvus Lite does not support binary vectors (BinaryVector fields), so "
                             "quantization='binary' needs a Milvus server (uri='http://host:19530'); on Milvus Lite "
                             "use quantization=None, optionally with index_type='IVF_SQ8' (one byte per coordinate).")
        self.dims = sorted({int(d) for d in dims}, reverse=True) if dims is not None else None
        self.normalize, self.quantization = bool(normalize), quantization
        self.index_type = index_type or ("BIN_FLAT" if quantization == "binary" else "FLAT")
        self.index_params, self.search_params = dict(index_params or {}), dict(search_params or {})
        self.insert_batch_size = int(insert_batch_size)
        self.client = self._connect(token, timeout)
        self.full_dim = None if full_dim is None else int(full_dim)
        self.stages = None if stages is None else stages
        if self.client.has_collection(self.collection):
            self._adopt_settings()
        elif self.full_dim is not None:
            self._set_stages()

    def _connect(self, token, timeout):
        pymilvus = _pymilvus()
        if self.is_lite:
            try:
                import milvus_lite  # noqa: F401  (pymilvus starts it for a .db uri)
            except ImportError:
                raise ImportError(f"uri={self.uri!r} is a Milvus Lite file, which needs milvus-lite: {_INSTALL} "
                                  "(or pass a server address, uri='http://host:19530').") from None
        try:
            return pymilvus.MilvusClient(uri=self.uri, token=token or "", timeout=timeout)
        except pymilvus.MilvusException as error:
            where = f"Milvus at {self.uri}" if not self.is_lite else f"the Milvus Lite file {self.uri}"
            raise ConnectionError(f"cannot reach {where} ({error.message}); start the server and check the address "
                                  "and token, or use a local Milvus Lite file (uri='funnel.db').") from None

    # --- settings -------------------------------------------------------------------------------------------------

    def _set_stages(self):
        stages = self.stages if self.stages is not None else default_stages(self.full_dim, self.dims)
        self.stages = check_stages(stages, self.full_dim, self.dims)
        if self.quantization == "binary":
            if self.stages[0][0] % 8:
                raise ValueError(f"binary codes need a first-stage size that is a multiple of 8; "
                                 f"got {self.stages[0][0]}.")
            if len(self.stages) < 2:
                raise ValueError("quantization='binary' only shortlists: add a float stage to rerank on, e.g. "
                                 f"stages=[({self.stages[0][0]}, 400), ({self.full_dim}, 10)].")

    def _settings(self):
        return {"stages": self.stages, "full_dim": self.full_dim, "normalize": self.normalize,
                "quantization": self.quantization}

    def _adopt_settings(self):
        """Read the existing collection's settings; refuse ones that contradict the arguments."""
        properties = self.client.describe_collection(self.collection).get("properties") or {}
        try:
            stored = json.loads(properties[_SETTINGS_KEY])
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"collection {self.collection!r} at {self.uri} was not made by MilvusFunnelIndex (its "
                             "properties hold no funnel settings); pass another collection name.") from None
        stored_stages = [tuple(s) for s in stored["stages"]]
        # The stage sizes are stored fields; their counts only steer the search, so new counts are taken as given
        asked_stages = None if self.stages is None else check_stages(self.stages, stored["full_dim"])
        asked = {"full_dim": self.full_dim, "normalize": self.normalize, "quantization": self.quantization,
                 "stage sizes": None if asked_stages is None else [d for d, _ in asked_stages]}
        for name, value in asked.items():
            have = [d for d, _ in stored_stages] if name == "stage sizes" else stored[name]
            if value is not None and value != have and not (name == "normalize" and value):
                raise ValueError(f"collection {self.collection!r} at {self.uri} holds {name} {have}, but {value} "
                                 "was asked; use the same settings, or another collection (or drop this one with "
                                 "index.drop()) to re-index.")
        self.full_dim, self.stages = int(stored["full_dim"]), asked_stages or stored_stages
        self.normalize, self.quantization = bool(stored["normalize"]), stored["quantization"]
        if self.dims is not None:
            check_stages(self.stages, self.full_dim, self.dims)

    def _create_collection(self):
        pymilvus = _pymilvus()
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field(_ID_FIELD, pymilvus.DataType.INT64, is_primary=True)
        index_params = self.client.prepare_index_params()
        for position, (dim, _) in enumerate(self.stages):
            binary = position == 0 and self.quantization == "binary"
            kind = pymilvus.DataType.BINARY_VECTOR if binary else pymilvus.DataType.FLOAT_VECTOR
            schema.add_field(_field(dim), kind, dim=dim)
            if position == 0:
                index_params.add_index(_field(dim), index_type=self.index_type, params=self.index_params,
                                       metric_type="HAMMING" if binary else "IP")
            else:  # searched only among the survivors' ids: exact
                index_params.add_index(_field(dim), index_type="FLAT", metric_type="IP")
        try:
            self.client.create_collection(self.collection, schema=schema, index_params=index_params,
                                          properties={_SETTINGS_KEY: json.dumps(self._settings())})
        except pymilvus.MilvusException as error:
            if self.client.has_collection(self.collection):  # some servers keep the collection, refusing its index
                self.client.drop_collection(self.collection)
            hint = (" Milvus Lite supports float vectors with FLAT, IVF_FLAT, IVF_SQ8 and HNSW; use one of those, or "
                    "a Milvus server (uri='http://host:19530')." if self.is_lite else "")
            raise ValueError(f"Milvus refused the funnel collection {self.collection!r} (first stage "
                             f"index_type={self.index_type!r}): {error.message}.{hint}") from None

    def drop(self):
        """Delete the collection and everything in it."""
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)

    def __len__(self):
        if not self.client.has_collection(self.collection):
            return 0
        self.client.load_collection(self.collection)  # a reopened collection starts released
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __repr__(self):
        return (f"MilvusFunnelIndex(uri={self.uri!r}, collection={self.collection!r}, stages={self.stages}, "
                f"index_type={self.index_type!r}, quantization={self.quantization!r})")

    # --- ingestion ------------------------------------------------------------------------------------------------

    def _prefixes(self, embeddings):
        """`{field: rows}` for full-size embeddings: each stage's re-normalized prefix (the first as bits when
        binary)."""
        out = {}
        for position, (dim, _) in enumerate(self.stages):
            prefix = _prefix_tensor(embeddings, dim, self.normalize)
            if position == 0 and self.quantization == "binary":
                prefix = quantize(prefix, "ubinary")
            out[_field(dim)] = prefix.numpy()
        return out

    def _check_embeddings(self, embeddings, what):
        embeddings = _as_matrix(embeddings, what)
        if self.full_dim is None:
            self.full_dim = embeddings.shape[1]
            self._set_stages()
        if embeddings.shape[1] != self.full_dim:
            raise ValueError(f"{what} have size {embeddings.shape[1]}, but collection {self.collection!r} holds size "
                             f"{self.full_dim}; embed with the same model at full size (or use another collection).")
        _refuse_rows(~np.isfinite(embeddings).all(1), what, "hold NaN or infinite values; drop them or fix them")
        return embeddings

    def existing_ids(self, ids):
        """The subset of `ids` already in the collection (what a resumed ingestion skips)."""
        if not self.client.has_collection(self.collection) or len(ids) == 0:
            return set()
        found = set()
        self.client.load_collection(self.collection)
        for start in range(0, len(ids), _MAX_FILTER_IDS):
            part = [int(i) for i in ids[start : start + _MAX_FILTER_IDS]]
            rows = self.client.query(self.collection, filter=f"{_ID_FIELD} in {part}", output_fields=[_ID_FIELD])
            found.update(int(row[_ID_FIELD]) for row in rows)
        return found

    def add(self, doc_embeddings, ids=None, fields=None, show_progress_bar=None, flush=True):
        """Upsert documents (full-size embeddings) with their `ids` (int64; default: continuing from `len(self)`)
        and scalar `fields` (`{name: values}`, one value per document, e.g. `{"lang": [...]}`), in batches of
        `insert_batch_size`. Returns the ids.

        An id already present is replaced, never duplicated: rerunning an interrupted ingestion completes it. Rows
        holding NaN / inf, or whose first-stage prefix is all zeros, are refused. `flush` seals the data into
        indexed segments at the end (searches are faster on them).
        """
        new = self._check_embeddings(doc_embeddings, "doc_embeddings")
        _refuse_rows(~new[:, : self.stages[0][0]].any(1), "doc_embeddings", f"are all zeros in the first "
                     f"{self.stages[0][0]} coordinates, which the first stage ranks by; drop them (empty texts?)")
        if ids is None:
            ids = np.arange(len(self), len(self) + len(new), dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (len(new),) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be {len(new)} integers, one per embedding; got {ids.dtype} of shape "
                             f"{ids.shape}.")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids hold duplicates; give every document its own id (a later row would silently "
                             "replace an earlier one).")
        fields = dict(fields or {})
        for name, values in fields.items():
            if name == _ID_FIELD or name.startswith("prefix_"):
                raise ValueError(f"field name {name!r} is reserved by the funnel; rename it.")
            if len(values) != len(new):
                raise ValueError(f"fields[{name!r}] has {len(values)} values for {len(new)} documents.")
        if len(new) == 0:
            return ids.astype(np.int64)
        if not self.client.has_collection(self.collection):
            self._create_collection()
        step = self.insert_batch_size
        with tqdm(total=len(new), desc="Upserting", unit="doc", disable=not progress_enabled(show_progress_bar),
                  delay=1) as bar:
            for start in range(0, len(new), step):
                part = slice(start, start + step)
                vectors = self._prefixes(new[part])
                rows = [
                    {_ID_FIELD: int(ids[start + i]), **{f: _plain(v[i]) for f, v in vectors.items()},
                     **{name: _plain(values[start + i]) for name, values in fields.items()}}
                    for i in range(len(vectors[_field(self.stages[0][0])]))
                ]
                self.client.upsert(self.collection, rows)
                bar.update(len(rows))
        if flush:
            self.client.flush(self.collection)
        return ids.astype(np.int64)

    def delete(self, ids):
        """Remove the documents with these ids (absent ids are ignored)."""
        ids = [int(i) for i in np.atleast_1d(np.asarray(ids))]
        if ids and self.client.has_collection(self.collection):
            self.client.delete(self.collection, ids=ids)

    @classmethod
    def from_model(cls, model, texts, ids=None, fields=None, uri="mrl_funnel.db", collection="mrl_funnel",
                   stages=None, batch_size=256, max_length=None, overwrite=False, show_progress_bar=None, **kwargs):
        """Embed `texts` with a [`MatryoshkaModel`] at full size and upsert them, `insert_batch_size` at a time.

        `ids` default to the texts' positions. Resumable: ids already in the collection are skipped (not
        re-encoded) unless `overwrite=True`, so rerunning after a crash encodes and inserts only the rest. Stage
        sizes must be among `model.config.matryoshka_dimensions`; `normalize` follows the config. Other keyword
        arguments go to the constructor.
        """
        config, show = model.config, progress_enabled(show_progress_bar)
        kwargs.setdefault("normalize", config.normalize)
        index = cls(uri, collection, stages=stages, full_dim=config.embedding_size,
                    dims=config.matryoshka_dimensions, **kwargs)
        texts = list(texts)
        ids = np.arange(len(texts), dtype=np.int64) if ids is None else np.asarray(ids)
        if len(ids) != len(texts):
            raise ValueError(f"ids has {len(ids)} values for {len(texts)} texts.")
        step = index.insert_batch_size
        with tqdm(total=len(texts), desc="Embedding and upserting", unit="text", disable=not show) as bar:
            for start in range(0, len(texts), step):
                part = np.arange(start, min(start + step, len(texts)))
                if not overwrite:
                    present = index.existing_ids(ids[part])
                    part = np.array([i for i in part if int(ids[i]) not in present], dtype=np.int64)
                if len(part):
                    embeddings = model.encode([texts[i] for i in part], dim=config.embedding_size,
                                              batch_size=batch_size, max_length=max_length, convert_to_numpy=True,
                                              show_progress_bar=False)
                    part_fields = {name: [values[i] for i in part] for name, values in (fields or {}).items()}
                    index.add(embeddings, ids=ids[part], fields=part_fields, show_progress_bar=False, flush=False)
                bar.update(min(step, len(texts) - start))
        if index.client.has_collection(index.collection):
            index.client.flush(index.collection)
        return index

    # --- search ---------------------------------------------------------------------------------------------------

    def search(self, queries, k=None, filter=None, query_chunk_size=256):
        """Top-`k` documents for each query: `(scores, ids)`, each `(n_queries, k)` (or `(k,)` for one 1-D query).

        `filter` is a Milvus boolean expression on the scalar fields (e.g. `"lang == 'en'"`), applied by the first
        stage. Scores are dot products of the re-normalized prefixes at the last stage's size, best first; where
        fewer than `k` documents pass the filter, ids are padded with -1 and scores with -inf.
        """
        if self.full_dim is None or not self.client.has_collection(self.collection):
            raise ValueError(f"collection {self.collection!r} at {self.uri} is empty; add() documents first.")
        single = isinstance(queries, (np.ndarray, torch.Tensor)) and queries.ndim == 1
        queries = self._check_embeddings(queries[None] if single else queries, "queries")
        k = self.stages[-1][1] if k is None else k
        _check_k(k, _MAX_FILTER_IDS, "Milvus's largest result count")
        if len(self.stages) > 1 and k > self.stages[-2][1]:
            raise ValueError(f"k={k} is larger than the {self.stages[-2][1]} candidates the last stage reranks; raise "
                             f"the count of stage {self.stages[-2]} to at least {k}.")
        counts = [c for _, c in self.stages]
        counts[-1] = k
        if max(counts) > _MAX_FILTER_IDS:
            raise ValueError(f"stage counts {counts} exceed Milvus's largest result count {_MAX_FILTER_IDS}.")
        self.client.load_collection(self.collection)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), query_chunk_size):
            chunk = queries[start : start + query_chunk_size]
            prefixes = self._prefixes(chunk)
            first = _field(self.stages[0][0])
            hits = self.client.search(self.collection, data=[_plain(row) for row in prefixes[first]], anns_field=first,
                                      limit=counts[0], filter=filter or "", search_params=self._search_params(),
                                      output_fields=[_ID_FIELD])
            for row, found in enumerate(hits):
                found = [(hit["distance"], int(hit["id"])) for hit in found]
                for (dim, _), keep in zip(self.stages[1:], counts[1:]):
                    if not found:
                        break
                    survivors = [i for _, i in found]
                    reranked = self.client.search(
                        self.collection, data=[prefixes[_field(dim)][row]], anns_field=_field(dim),
                        limit=min(keep, len(survivors)), filter=f"{_ID_FIELD} in {survivors}",
                        search_params={"metric_type": "IP"}, output_fields=[_ID_FIELD])[0]
                    found = [(hit["distance"], int(hit["id"])) for hit in reranked]
                found = found[:k]
                out_scores[start + row, : len(found)] = [s for s, _ in found]
                out_ids[start + row, : len(found)] = [i for _, i in found]
        return (out_scores[0], out_ids[0]) if single else (out_scores, out_ids)

    def _search_params(self):
        params = {"metric_type": "HAMMING" if self.quantization == "binary" else "IP"}
        if self.search_params:
            params["params"] = self.search_params
        return params


def _plain(value):
    """A value pymilvus serializes: numpy scalars as Python ones, uint8 code rows as bytes."""
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    return value.item() if isinstance(value, np.generic) else value


__all__ = ["MilvusFunnelIndex", "is_server_uri"]
