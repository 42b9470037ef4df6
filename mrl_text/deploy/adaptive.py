"""Adaptive classification with Matryoshka embeddings: stop at the smallest size that is confident enough.

Kusupati et al. (2022, section 4.2.2): a classifier per nested size; a sample is classified at the smallest size
whose top softmax probability clears that size's threshold, else passed on to the next size (the largest size
always answers). Thresholds are calibrated on a validation split to keep accuracy within a tolerance of the
full size while using as few dimensions as possible on average.

Example:

```python
>>> from mrl_text import AdaptiveClassifier
>>> clf = AdaptiveClassifier.fit(model, (train_texts, train_labels), (val_texts, val_labels), tolerance=0.01)
>>> clf.predict(test_texts)
>>> clf.evaluate(test_texts, test_labels)   # {"accuracy": ..., "expected_dims": ..., ...}
```
"""

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..evaluation import fit_linear_probe
from ..models.modeling_matryoshka import MatryoshkaModel, truncate_embeddings
from ..models.modeling_matryoshka_classification import MatryoshkaForSequenceClassification
from ..progress import progress_enabled

# Lagrange weights trading accuracy for dimensions when searching thresholds (0 = accuracy only).
_TRADE_OFFS = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
_NEVER = 1.01  # a threshold no probability reaches: this size never answers


def _is_embeddings(value):
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 2


def _split(data, what):
    """`(inputs, labels)` from a pair or from a `datasets.Dataset` / dict with "text" (or "embedding") and "label"."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        inputs, labels = data
    elif hasattr(data, "column_names") or isinstance(data, dict):
        columns = data.column_names if hasattr(data, "column_names") else list(data)
        source = next((c for c in ("embedding", "text") if c in columns), None)
        if source is None or "label" not in columns:
            raise ValueError(f"{what} has columns {columns}; expected 'text' (or 'embedding') and 'label'.")
        inputs, labels = data[source], data["label"]
    else:
        raise ValueError(f"{what} must be an (inputs, labels) pair or a dataset with 'text' and 'label' columns; "
                         f"got {type(data).__name__}.")
    labels = np.asarray(labels)
    if len(inputs) != len(labels) or len(labels) == 0:
        raise ValueError(f"{what} has {len(inputs)} inputs and {len(labels)} labels; give one label per input "
                         "(and at least one).")
    return inputs, labels


class AdaptiveClassifier:
    r"""A cascade of per-size classifiers over one Matryoshka embedding, with calibrated confidence thresholds.

    Build it with [`AdaptiveClassifier.fit`]. Attributes:
        dims (`list[int]`): the cascade's sizes, smallest first.
        thresholds (`dict[int, float]`): a sample stops at size `d` when its top probability there is at least
            `thresholds[d]`; the largest size always answers (threshold 0).
        report (`dict`): calibration on the validation split: accuracy, full-size accuracy, the target, expected
            dimensions, the fraction of samples answered at each size, and each fixed size's accuracy.
    """

    def __init__(self, dims, heads, thresholds, model=None, normalize=True, classes=None, encode_kwargs=None):
        self.dims = sorted(int(d) for d in dims)
        self.heads = dict(heads)
        self.thresholds = {int(d): float(t) for d, t in thresholds.items()}
        self.model = model
        self.normalize = normalize
        self.classes = classes
        self.encode_kwargs = dict(encode_kwargs or {})
        self.report = {}

    # --- building -------------------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        model,
        train,
        val,
        dims=None,
        target_accuracy=None,
        tolerance=0.01,
        seed=0,
        max_iter=1_000,
        batch_size=64,
        max_length=None,
        show_progress_bar=None,
    ):
        """Fit the per-size classifiers and calibrate the thresholds.

        Args:
            model: a [`MatryoshkaModel`] (a logistic-regression probe is trained per size on its frozen, truncated
                and re-normalized embeddings), a [`MatryoshkaForSequenceClassification`] (its own nested heads are
                used; `train` may be None), or None when `train`/`val` hold precomputed full-size embeddings.
            train, val: `(texts, labels)` or `(full_size_embeddings, labels)` pairs, or datasets with "text" and
                "label" columns. `val` must be disjoint from `train`: the thresholds are calibrated on it.
            dims (`list[int]`, *optional*): the sizes to use; default the model's `matryoshka_dimensions`
                (required when `model` is None). Must be sizes the model was trained with.
            target_accuracy (`float`, *optional*): validation accuracy to keep; default full-size accuracy minus
                `tolerance`.
            tolerance (`float`): accuracy (fraction) the cascade may lose against the full size on validation.
            seed, max_iter: of the logistic-regression probes. batch_size, max_length: of the encoding.
            show_progress_bar (`bool`, *optional*): bars while encoding and over the per-size probe fits; default
                on where someone watches (a terminal or a notebook, see `mrl_text.progress.progress_enabled`).
        """
        if model is not None and not isinstance(model, (MatryoshkaModel, MatryoshkaForSequenceClassification)):
            raise ValueError(f"model must be a MatryoshkaModel, a MatryoshkaForSequenceClassification or None; got "
                             f"{type(model).__name__}.")
        trained = list(model.config.matryoshka_dimensions) if model is not None else None
        if dims is None:
            if trained is None:
                raise ValueError("Pass dims=[...] (the sizes the embeddings were trained with) when model is None.")
            dims = trained
        dims = sorted(int(d) for d in dims)
        if trained is not None and any(d not in trained for d in dims):
            raise ValueError(f"dims {[d for d in dims if d not in trained]} are not sizes the model was trained "
                             f"with {trained}.")
        normalize = model.config.normalize if model is not None else True
        show = progress_enabled(show_progress_bar)
        encode_kwargs = {"batch_size": batch_size, "max_length": max_length, "show_progress_bar": show}
        clf = cls(dims, {}, {}, model=model, normalize=normalize, encode_kwargs=encode_kwargs)

        if isinstance(model, MatryoshkaForSequenceClassification):
            clf.heads = {d: d for d in dims}  # the model's own head of size d
        else:
            train_inputs, train_labels = _split(train, "train")
            classes = np.unique(train_labels)
            if len(classes) < 2:  # checked before encoding; sklearn's own message names neither the split nor a fix
                raise ValueError(
                    f"train has one class only ({classes[0].item()!r} in all {len(train_labels)} labels): a "
                    "classifier learns to tell classes apart, so it needs examples of at least two; add examples of "
                    "the others."
                )
            train_features = clf._features(train_inputs)
            sizes = tqdm(dims, desc="Fitting probes", unit="size", disable=not show)
            for d in sizes:
                sizes.set_postfix(dim=d)
                clf.heads[d] = fit_linear_probe(clf._prefix(train_features, d), train_labels, seed=seed,
                                                max_iter=max_iter)
            clf.classes = clf.heads[dims[0]].classes_
        return clf.calibrate(val, target_accuracy=target_accuracy, tolerance=tolerance)

    def calibrate(self, val, target_accuracy=None, tolerance=0.01):
        """(Re)choose the thresholds on a validation split `(inputs, labels)`; the heads stay as they are.

        Keeps validation accuracy at `target_accuracy` (default: full-size accuracy minus `tolerance`) with the
        least expected size; fills `self.report`. Returns `self`.
        """
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance={tolerance!r} must be a fraction of accuracy in [0, 1), e.g. 0.01.")
        val_inputs, val_labels = _split(val, "val")
        self._check_features_size(val_inputs)
        probabilities = self._probabilities(self._features(val_inputs))
        confidence = np.stack([p.max(1) for p in probabilities], axis=1)
        correct = np.stack([self._decode(p.argmax(1)) == val_labels for p in probabilities], axis=1)
        full_accuracy = float(correct[:, -1].mean())
        target = full_accuracy - tolerance if target_accuracy is None else float(target_accuracy)
        thresholds = self._calibrate(confidence, correct, target)
        self.thresholds = dict(zip(self.dims, thresholds))
        accuracy, expected = self._cascade_quality(confidence, correct, thresholds)
        self.report = {
            "split": "val", "n": len(val_labels), "accuracy": accuracy, "expected_dims": expected,
            "full_size_accuracy": full_accuracy, "target_accuracy": target, "tolerance": tolerance,
            "thresholds": self.thresholds,
            "exit_fractions": self._exit_fractions(confidence, thresholds),
            "per_size_accuracy": {d: float(correct[:, i].mean()) for i, d in enumerate(self.dims)},
        }
        return self

    # --- features and per-size probabilities ----------------------------------------------------------------------

    def _features(self, inputs):
        """What the heads read: full-size embeddings (given, or computed by the model from texts)."""
        if _is_embeddings(inputs):
            return torch.as_tensor(
                np.asarray(inputs, dtype=np.float32) if isinstance(inputs, np.ndarray) else inputs
            ).float()
        if self.model is None:
            raise ValueError(
                "This classifier was fitted on embeddings; pass full-size embeddings (n, dim), not texts."
            )
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if isinstance(self.model, MatryoshkaModel):
            return self.model.encode(texts, dim=self.model.config.embedding_size, **self.encode_kwargs)
        return self._classifier_embeddings(texts)

    @torch.inference_mode()
    def _classifier_embeddings(self, texts):
        """Full pooled embeddings of a sequence-classification model (its heads' input), in batches."""
        model, size = self.model, self.encode_kwargs["batch_size"]
        if model.tokenizer is None:
            raise ValueError("The classification model has no tokenizer; set model.tokenizer first.")
        model.eval()
        chunks = []
        starts = range(0, len(texts), size)
        for start in tqdm(starts, desc="Encoding", unit="batch", disable=not self.encode_kwargs["show_progress_bar"]):
            inputs = model.tokenizer(texts[start : start + size], padding=True, truncation=True,
                                     max_length=self.encode_kwargs["max_length"], return_tensors="pt").to(model.device)
            chunks.append(model.matryoshka(**inputs).full_embeddings.float().cpu())
        return torch.cat(chunks)

    def _check_features_size(self, inputs):
        if _is_embeddings(inputs) and inputs.shape[1] < self.dims[-1]:
            raise ValueError(f"embeddings have size {inputs.shape[1]}, smaller than the largest size {self.dims[-1]}; "
                             "pass full-size embeddings.")

    def _prefix(self, features, dim):
        return truncate_embeddings(features, dim, self.normalize).numpy()

    def _probabilities_at(self, features, dim):
        if isinstance(self.model, MatryoshkaForSequenceClassification):
            with torch.inference_mode():
                logits = self.model.classifier(features.to(self.model.dtype).to(self.model.device), dim=dim)
            return torch.softmax(logits.float(), -1).cpu().numpy()
        return self.heads[dim].predict_proba(self._prefix(features, dim))

    def _probabilities(self, features):
        return [self._probabilities_at(features, d) for d in self.dims]

    def _decode(self, indices):
        return np.asarray(self.classes)[indices] if self.classes is not None else indices

    # --- thresholds -------------------------------------------------------------------------------------------------

    def _exits(self, confidence, thresholds):
        """Index of the size that answers each sample: the first whose confidence reaches its threshold."""
        stops = confidence >= np.asarray(thresholds)[None, :]
        stops[:, -1] = True
        return stops.argmax(1)

    def _cascade_quality(self, confidence, correct, thresholds):
        exits = self._exits(confidence, thresholds)
        accuracy = float(correct[np.arange(len(exits)), exits].mean())
        return accuracy, float(np.asarray(self.dims)[exits].mean())

    def _exit_fractions(self, confidence, thresholds):
        exits = self._exits(confidence, thresholds)
        return {d: float((exits == i).mean()) for i, d in enumerate(self.dims)}

    def _calibrate(self, confidence, correct, target):
        """Thresholds of least expected size whose validation accuracy reaches `target`.

        The candidates are found without looking at `target` (coordinate descent on accuracy - w * size/full for
        a fixed ladder of trade-offs w, over a grid of confidence quantiles), and the cheapest one that reaches the
        target is chosen: so a stricter target never gives a smaller expected size.
        """
        sizes = len(self.dims)
        grids = [np.unique(np.concatenate([np.quantile(confidence[:, i], np.linspace(0, 1, 41)), [_NEVER]]))
                 for i in range(sizes - 1)]
        dims = np.asarray(self.dims, dtype=np.float64)
        candidates = {tuple([_NEVER] * (sizes - 1) + [0.0])}  # everything at full size
        for trade_off in _TRADE_OFFS:
            current = [_NEVER] * (sizes - 1) + [0.0]
            for _ in range(3):
                for i in range(sizes - 1):
                    values = grids[i]
                    # Every grid value of threshold i at once: samples that stop before size i are unaffected;
                    # the others stop at i when confident enough there, else where they would stop after i.
                    stops = confidence >= np.asarray(current)[None, :]
                    stops[:, -1] = True
                    before = stops[:, :i].any(1)
                    first = stops.argmax(1)
                    after = np.where(stops[:, i + 1 :].any(1), i + 1 + stops[:, i + 1 :].argmax(1), sizes - 1)
                    at_i = (confidence[:, i, None] >= values[None, :]) & ~before[:, None]
                    exit_index = np.where(before[:, None], first[:, None], np.where(at_i, i, after[:, None]))
                    accuracy = np.take_along_axis(correct, exit_index, 1).mean(0)
                    objective = accuracy - trade_off * dims[exit_index].mean(0) / dims[-1]
                    current = current[:i] + [float(values[int(np.argmax(objective))])] + current[i + 1 :]
                    candidates.add(tuple(current))
        scored = [(*self._cascade_quality(confidence, correct, c), c) for c in candidates]
        feasible = [s for s in scored if s[0] >= target - 1e-12]
        if not feasible:
            warnings.warn(f"No thresholds reach the target accuracy {target:.4f} on validation (full size gives "
                          f"{correct[:, -1].mean():.4f}); answering everything at full size.", stacklevel=3)
            return [_NEVER] * (sizes - 1) + [0.0]
        return list(min(feasible, key=lambda s: (s[1], -s[0], s[2]))[2])

    # --- inference --------------------------------------------------------------------------------------------------

    def predict(self, inputs, return_dims=False):
        """Labels for texts (when fitted with a model) or full-size embeddings; with `return_dims`, also the size
        that answered each one. Each size's classifier only runs on the samples the smaller sizes passed on."""
        features = self._features(inputs)
        if len(features) == 0:
            raise ValueError("predict() got no inputs.")
        if features.shape[1] < self.dims[-1]:
            raise ValueError(f"embeddings have size {features.shape[1]}, smaller than the largest size "
                             f"{self.dims[-1]}; pass full-size embeddings.")
        labels = np.empty(len(features), dtype=object)
        used = np.zeros(len(features), dtype=np.int64)
        pending = np.arange(len(features))
        for d in self.dims:
            probabilities = self._probabilities_at(features[torch.from_numpy(pending)], d)
            done = probabilities.max(1) >= self.thresholds[d] if d != self.dims[-1] else np.ones(len(pending), bool)
            labels[pending[done]] = list(self._decode(probabilities[done].argmax(1)))
            used[pending[done]] = d
            pending = pending[~done]
            if len(pending) == 0:
                break
        labels = np.asarray(labels.tolist())
        return (labels, used) if return_dims else labels

    def evaluate(self, inputs, labels):
        """Accuracy and expected dimensions of the cascade on labelled data, with each fixed size for comparison."""
        labels = np.asarray(labels)
        features = self._features(inputs)
        probabilities = self._probabilities(features)
        confidence = np.stack([p.max(1) for p in probabilities], axis=1)
        correct = np.stack([self._decode(p.argmax(1)) == labels for p in probabilities], axis=1)
        thresholds = [self.thresholds[d] for d in self.dims]
        accuracy, expected = self._cascade_quality(confidence, correct, thresholds)
        return {
            "n": len(labels), "accuracy": accuracy, "expected_dims": expected,
            "full_size_accuracy": float(correct[:, -1].mean()),
            "exit_fractions": self._exit_fractions(confidence, thresholds),
            "per_size_accuracy": {d: float(correct[:, i].mean()) for i, d in enumerate(self.dims)},
        }


__all__ = ["AdaptiveClassifier"]
