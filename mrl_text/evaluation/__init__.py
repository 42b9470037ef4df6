"""Evaluate an embedding model at every Matryoshka size: STS, retrieval and classification on frozen embeddings.

Every evaluator encodes each of its texts once, at full size, and scores every size from the prefixes with
`truncate_embeddings` (slice, then re-normalize): evaluating seven sizes costs one encoding pass, not seven.
The same evaluators take a `MatryoshkaModel`, a plain transformers encoder, or a sentence-transformers model, read at
one `max_length` (default: a Matryoshka model's saved `max_seq_length`, else 256 tokens), so baselines are measured on
equal terms. Results come back as one tidy table of rows `{"model", "task", "metric", "dim", "value"}` (values are
fractions), with each task's type and primary metric, written as JSON, markdown and a plot.

```python
>>> from mrl_text.data import load_sts
>>> from mrl_text.evaluation import STSEvaluator, evaluate
>>> results = evaluate("out/", [STSEvaluator(*load_sts("stsb/test.tsv"), name="stsb")])
>>> results.value("stsb", "spearman", 64), results.task_type("stsb"), results.primary_metric("stsb")
```

Files: `embedders` (models -> [`Embedder`]), `base` (the evaluator contract), `text` (the text evaluators),
`results` ([`Results`]), `runner` ([`evaluate`]), `grid` ([`evaluate_grid`]: every (layers, size, precision)
cell). Image-text evaluators live in `mrl_text.evaluation.image_text`.
"""

from ..metrics import fit_linear_probe
from .base import Evaluator
from .embedders import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, Embedder, as_embedder
from .grid import evaluate_grid
from .image_text import (
    DualEmbedder,
    ImageKNNEvaluator,
    ImageTextEvaluator,
    ImageTextRetrievalEvaluator,
    ZeroShotClassificationEvaluator,
    as_dual_embedder,
)
from .results import Results
from .runner import evaluate
from .text import ClassificationEvaluator, RetrievalEvaluator, STSEvaluator

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DualEmbedder",
    "ImageKNNEvaluator",
    "ImageTextEvaluator",
    "ImageTextRetrievalEvaluator",
    "ZeroShotClassificationEvaluator",
    "as_dual_embedder",
    "DEFAULT_MAX_LENGTH",
    "ClassificationEvaluator",
    "Embedder",
    "Evaluator",
    "Results",
    "RetrievalEvaluator",
    "STSEvaluator",
    "as_embedder",
    "evaluate",
    "evaluate_grid",
    "fit_linear_probe",
]
