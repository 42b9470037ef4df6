"""A Matryoshka adaptor inside a `MatryoshkaModel`: fit it on texts with the model's own `encode`, then attach it.

`MatryoshkaModel.add_adaptor` (attached in mrl_text/__init__.py: the modeling file travels alone and cannot import
training code) calls `add_adaptor` below; `mrl-text adapt` reads its corpus and pairs with `read_corpus` and
`read_pairs`. The fit itself is `mrl_text.adaptor.fitting.fit`; the attached adaptor runs after pooling and projection,
before truncation, in `forward`, `encode` and the saved sentence-transformers folder alike.
"""

import copy
import csv
import json
from pathlib import Path

from ..models.configuration_matryoshka import default_dimensions, validate_nesting
from ..models.modeling_matryoshka_adaptor import MatryoshkaAdaptor
from .fitting import fit


def check_texts(texts, what):
    """`texts` as a non-empty list of strings, or a clear error naming the first bad entry."""
    if isinstance(texts, str):
        raise ValueError(f"{what} is one string; pass a list of texts (e.g. the documents you index).")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty; the adaptor is fit on a few hundred texts or more.")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{what}[{i}] is {text!r}; every entry must be a non-empty string.")
    return texts


def check_pairs(pairs):
    """`pairs` as a list of (query, document) string tuples, or a clear error naming the first bad pair."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty; give (query, relevant document) text pairs, or pairs=None.")
    for i, pair in enumerate(pairs):
        if not (
            isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)
        ):
            raise ValueError(f"pairs[{i}] is {pair!r}; each pair must be (query text, document text).")
    return [tuple(pair) for pair in pairs]


def add_adaptor(model, corpus=None, pairs=None, *, adaptor=None, matryoshka_dimensions=None, batch_size=32,
                max_length=None, show_progress_bar=True, description=None, **fit_kwargs):
    """Fit a Matryoshka adaptor on `corpus` (and `pairs`) with this model's own embeddings, and attach it.

    The encoder stays frozen: every distinct text is encoded once (at full size, without any adaptor already
    attached) and `mrl_text.adaptor.fitting.fit` trains on those embeddings, with its validation gate (a size keeps
    plain truncation unless the adaptor beats it on held-out data). A failed fit leaves the model as it was.

    Args:
        corpus (`list[str]`, *optional*): texts like the ones the model will embed (e.g. the documents you index).
            Without it, `adaptor` (already fitted) is attached as it is.
        pairs (`list[tuple[str, str]]`, *optional*): (query, relevant document) texts for the supervised objective.
        adaptor (`MatryoshkaAdaptor`, *optional*): attach this one; with a corpus, continue fitting a copy of it
            (e.g. `model.adaptor`, supervised after an unsupervised fit).
        matryoshka_dimensions (`list[int]`, *optional*): sizes to fit for; default the model's, or, for a model with
            its full size only, the default nesting (`default_dimensions`: the full size and every power of two below
            it down to 16). Sizes the model lacks are added to its `matryoshka_dimensions` (weight 1.0).
        batch_size, max_length: for `encode`.
        show_progress_bar (`bool`): bars for encoding and for the fit's epochs.
        description (`str`, *optional*): what the corpus is, for the model card.
        **fit_kwargs: `mrl_text.adaptor.fitting.fit`'s arguments (objective, hidden_size, num_layers, rotation, epochs,
            supervised_epochs, validation_fraction, seed, ...).

    Returns:
        The attached `MatryoshkaAdaptor` (`adaptor.config.fit_summary` holds the validation figures at every size).
    """
    config = model.config
    if adaptor is not None and not isinstance(adaptor, MatryoshkaAdaptor):
        raise ValueError(f"adaptor must be a MatryoshkaAdaptor, got {type(adaptor).__name__}.")
    if corpus is None:
        if adaptor is None:
            raise ValueError("add_adaptor needs a corpus of texts to fit on, or a fitted adaptor= to attach.")
        if pairs is not None:
            raise ValueError("pairs need a corpus to fit on; pass corpus= as well.")
        dims = adaptor.config.matryoshka_dimensions
    else:
        corpus = check_texts(corpus, "corpus")
        pairs = check_pairs(pairs) if pairs is not None else None
        dims = matryoshka_dimensions or (adaptor.config.matryoshka_dimensions if adaptor is not None else None)
        if dims is None:
            dims = (
                config.matryoshka_dimensions
                if len(config.matryoshka_dimensions) > 1
                else default_dimensions(config.embedding_size)
            )
    # The model's sizes with the adaptor's added; checked now, changed only once the adaptor is ready.
    weights = dict(zip(config.matryoshka_dimensions, config.matryoshka_weights))
    sizes = sorted(set(config.matryoshka_dimensions) | set(dims), reverse=True)
    if adaptor is not None:
        config.check_adaptor(adaptor.config.to_dict(), sizes)
    nesting = validate_nesting(sizes, [weights.get(d, 1.0) for d in sizes], config.truncate_dim, config.embedding_size)
    if corpus is not None:
        adaptor = fit_on_texts(model, corpus, pairs, dims, adaptor, batch_size, max_length, show_progress_bar,
                               description, fit_kwargs)
    before = config.matryoshka_dimensions, config.matryoshka_weights
    config.matryoshka_dimensions, config.matryoshka_weights = nesting
    try:
        model.set_adaptor(adaptor)
    except ValueError:
        config.matryoshka_dimensions, config.matryoshka_weights = before
        raise
    return model.adaptor


def fit_on_texts(
    model, corpus, pairs, dims, adaptor, batch_size, max_length, show_progress_bar, description, fit_kwargs
):
    """Encode the distinct texts once with the model (no adaptor) and fit; returns the fitted adaptor.

    The pairs' documents join the corpus (once each), so a relevant document is never also an irrelevant copy of
    itself among the candidates the validation ranks."""
    documents = list(dict.fromkeys(corpus + [d for _, d in pairs or []]))
    queries = list(dict.fromkeys(q for q, _ in pairs or []))
    texts = list(dict.fromkeys(documents + queries))
    attached, model.adaptor = model.adaptor, None  # fit on the encoder's own embeddings
    try:
        embeddings = model.encode(texts, dim=model.config.embedding_size, batch_size=batch_size,
                                  max_length=max_length, show_progress_bar=show_progress_bar)
    finally:
        model.adaptor = attached
    row = {text: i for i, text in enumerate(texts)}
    supervision = {} if pairs is None else dict(
        query_embeddings=embeddings[[row[q] for q in queries]], query_ids=queries, corpus_ids=documents)
    if adaptor is not None:  # an attached adaptor is frozen; fit a trainable copy (the original stays as it was)
        adaptor = copy.deepcopy(adaptor).float().requires_grad_(True)
    name = model.name_or_path or type(model).__name__
    fitted = fit(embeddings[: len(documents)], dims, pairs, adaptor=adaptor, show_progress_bar=show_progress_bar,
                 description=description or f"{len(corpus):,} texts embedded by {name}", **supervision, **fit_kwargs)
    fitted.config.fit_summary.update(corpus_texts=len(corpus), pairs=len(pairs) if pairs else 0)
    return fitted


def read_corpus(path, column="text"):
    """Texts from a file: `.txt` one per line (blank lines skipped); `.jsonl`/`.json`/`.tsv`/`.csv`/`.parquet` the
    `column` of a table (a BEIR corpus.jsonl's title is prefixed to its text, as the retrieval evaluator does)."""
    from ..data import read_table, utf8_error

    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected texts, one per line).")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise utf8_error(path) from None
        texts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        table = read_table(path, [column])
        titles = table["title"] if "title" in table.column_names and column == "text" else [None] * len(table)
        texts = [
            f"{title} {text}".strip() if title else str(text or "").strip()
            for title, text in zip(titles, table[column])
        ]
        texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{path}: no texts found (blank file or empty column {column!r}).")
    return texts


def read_pairs(path):
    """(query, document) pairs from a tab-separated file, one `query<TAB>document` per line (an optional header row
    `query<TAB>document` or `anchor<TAB>positive` is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected query<TAB>document lines).")
    from ..data import utf8_error

    not_utf8 = utf8_error(path)
    if not_utf8 is not None:
        raise not_utf8
    pairs = []
    with open(path, encoding="utf-8", newline="") as f:
        for number, fields in enumerate(csv.reader(f, delimiter="\t"), start=1):  # standard quoting, as data.py
            if not any(field.strip() for field in fields):
                continue
            if len(fields) != 2 or not all(field.strip() for field in fields):
                raise ValueError(f"{path}, line {number}: expected query<TAB>document (two non-empty fields), got "
                                 f"{len(fields)} field(s): {json.dumps(fields)[:200]}.")
            if number == 1 and [f.strip().lower() for f in fields] in (["query", "document"], ["anchor", "positive"]):
                continue
            pairs.append((fields[0].strip(), fields[1].strip()))
    if not pairs:
        raise ValueError(f"{path}: no query<TAB>document pairs found.")
    return pairs


__all__ = ["add_adaptor", "default_dimensions", "read_corpus", "read_pairs"]
