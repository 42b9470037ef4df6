"""Losses for Matryoshka training, all called alike: `loss(embeddings: list[Tensor], labels: Tensor | None)`.

`embeddings` holds one full-size tensor per text column (anchor, positive, ...), computed once per step; `labels` the
batch's targets (scores, class ids, a teacher's embeddings) or None. `MatryoshkaLoss` wraps a base loss with the same
call and applies it to every nested prefix of the same embeddings, re-normalized (one truncation rule:
`truncate_embeddings`), so the number of sizes adds only cheap similarity computations, never encoder passes.

What a loss may declare, read by `MatryoshkaTrainer` (never the loss's name): the layout it reads
(`min_text_columns`, `max_text_columns`, `needs_labels`); targets it computes from the batch (`compute_labels`, over
texts tokenized with `teacher_tokenizer`); labels that are embeddings, truncated like the student's
(`embedding_labels`); sizes it weights itself (`sums_over_sizes`, never wrapped); and `get_config_dict()` and
`citation` (BibTeX), so a model card says exactly what trained the model.
"""

import inspect
import random
import warnings

import torch
from torch import nn

from ..distributed import gather_with_grad, in_batch_targets
from ..models.modeling_matryoshka import truncate_embeddings
from ..models.modeling_matryoshka_utils import scaled_size_weights

MATRYOSHKA_CITATION = """@inproceedings{kusupati2022matryoshka,
  title     = {Matryoshka Representation Learning},
  author    = {Kusupati, Aditya and Bhatt, Gantavya and Rege, Aniket and Wallingford, Matthew and Sinha, Aditya and Ramanujan, Vivek and Howard-Snyder, William and Chen, Kaifeng and Kakade, Sham and Jain, Prateek and Farhadi, Ali},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2022},
  url       = {https://arxiv.org/abs/2205.13147}
}"""


def unpack(embeddings, names, loss):
    """`embeddings` as the tensors `names` lists (a `*name` takes any number more), or an error saying the call."""
    required = len([name for name in names if not name.startswith("*")])
    count = -1 if isinstance(embeddings, torch.Tensor) else len(embeddings)
    if count != required and not (count > required and required < len(names)):
        raise ValueError(
            f"{type(loss).__name__} is called as loss([{', '.join(names)}], labels), one full-size tensor per text "
            f"column; got {'one tensor' if count < 0 else f'{count} tensor(s)'}."
        )
    return embeddings


class InfoNCELoss(nn.Module):
    """InfoNCE with in-batch negatives and optional hard negatives (the MultipleNegativesRanking loss).

    Each anchor must pick its own positive out of every positive and hard negative in the (global) batch: a
    cross-entropy over `scale * cos(anchor, candidate)`.

    References: van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018);
    Henderson et al., "Efficient Natural Language Response Suggestion for Smart Reply" (2017).

    Args:
        scale (`float`): inverse temperature applied to cosine similarities (20.0 = temperature 0.05).
        symmetric (`bool`): add the positive -> anchor direction (each positive picks its anchor among all
            anchors) and average the two terms.
        gather_across_devices (`bool`): under DDP, use every process's positives/negatives as candidates
            (gathered with gradients), so in-batch negatives span the global batch.
        temperature (`float`, *optional*): the same knob as `scale`, written as `1 / scale`; overrides `scale`.

    Inputs: `loss([anchor, positive, *negatives], labels=None)`, each `(batch, dim)` and unit length. Anchor `i`'s
    positive is candidate `i` of the global batch; all other positives and all hard negatives are its negatives.
    Wrap it in `MatryoshkaLoss` (example there) to train every size.
    """

    # What the trainer's data must hold: text columns (anchor, positive, hard negatives...) and no label column.
    min_text_columns, max_text_columns, needs_labels = 2, None, False
    citation = """@article{oord2018representation,
  title   = {Representation Learning with Contrastive Predictive Coding},
  author  = {van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  journal = {arXiv preprint arXiv:1807.03748},
  year    = {2018}
}"""

    def __init__(self, scale=20.0, symmetric=False, gather_across_devices=True, temperature=None):
        super().__init__()
        if temperature is not None:
            if not temperature > 0:
                raise ValueError(f"temperature={temperature!r} must be > 0 (0.05 is usual).")
            scale = 1.0 / temperature
        if not scale > 0:
            raise ValueError(f"scale={scale!r} must be > 0 (20.0 is usual, i.e. temperature 0.05).")
        self.scale = float(scale)
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices

    def logits(self, embeddings):
        """`(scale * cos(anchor, candidate), targets)`: each anchor's scores over the global batch's candidates."""
        anchor, positive, *negatives = unpack(embeddings, ["anchor", "positive", "*negatives"], self)
        gather, targets = in_batch_targets(anchor.shape[0], anchor.device, self.gather_across_devices)
        candidates = torch.cat([gather(positive)] + [gather(n) for n in negatives], dim=0)
        return self.scale * anchor @ candidates.T, targets

    def forward(self, embeddings, labels=None):
        anchor, positive, *_ = unpack(embeddings, ["anchor", "positive", "*negatives"], self)
        loss = nn.functional.cross_entropy(*self.logits(embeddings))
        if self.symmetric:
            gather, targets = in_batch_targets(anchor.shape[0], anchor.device, self.gather_across_devices)
            loss = (loss + nn.functional.cross_entropy(self.scale * positive @ gather(anchor).T, targets)) / 2
        return loss

    def get_config_dict(self):
        return {"scale": self.scale, "symmetric": self.symmetric, "gather_across_devices": self.gather_across_devices}

    def extra_repr(self):
        return ", ".join(f"{key}={value}" for key, value in self.get_config_dict().items())


class CoSENTLoss(nn.Module):
    """CoSENT: a ranking loss for scored pairs; every pair scored higher must have the higher cosine similarity.

    loss = log(1 + sum over pairs (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i))).
    Only the order of the scores matters, so STS-style 0-5 scores need no rescaling.

    Reference: Su Jianlin, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT" (2022),
    https://kexue.fm/archives/8847.

    Args:
        scale (`float`): inverse temperature applied to the cosine differences (20.0 as in the reference).

    Inputs: `loss([embeddings1, embeddings2], labels)`: two `(batch, dim)` tensors and the pairs' scores `(batch,)`.
    """

    min_text_columns, max_text_columns, needs_labels = 2, 2, True
    citation = """@online{su2022cosent,
  title  = {CoSENT: A more efficient sentence vector scheme than Sentence-BERT},
  author = {Su, Jianlin},
  year   = {2022},
  url    = {https://kexue.fm/archives/8847}
}"""

    def __init__(self, scale=20.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale={scale!r} must be > 0 (20.0 is usual).")
        self.scale = float(scale)

    def forward(self, embeddings, labels):
        embeddings1, embeddings2 = unpack(embeddings, ["embeddings1", "embeddings2"], self)
        if labels is None:
            raise ValueError("CoSENTLoss needs the pairs' scores: pass `labels` (a 'score' or 'label' column).")
        cosines = nn.functional.cosine_similarity(embeddings1, embeddings2, dim=-1) * self.scale
        differences = cosines[None, :] - cosines[:, None]  # [i, j] = cos_j - cos_i
        ranked = labels[:, None] > labels[None, :]  # pair i should score above pair j
        differences = differences[ranked.to(differences.device)]
        # The leading zero is the "1 +" inside the log.
        return torch.logsumexp(torch.cat([differences.new_zeros(1), differences]), dim=0)

    def get_config_dict(self):
        return {"scale": self.scale}

    def extra_repr(self):
        return f"scale={self.scale}"


class MatryoshkaCrossEntropyLoss(nn.Module):
    """The paper's Matryoshka cross-entropy: the weighted sum over sizes of each nested head's classification loss.

    The nested heads (MRL, or weight-tied MRL-E by `config.efficient_heads`) and the math (`matryoshka_loss`, weights
    from `config.matryoshka_weights`) live in `MatryoshkaForSequenceClassification`, which computes this loss itself
    when called with `labels` (transformers' convention; `MatryoshkaTrainer` trains on that). This class holds the
    model, as sentence-transformers' losses do: it applies the heads to full-size embeddings computed elsewhere and
    tells a model card what trained them. It weights the sizes itself, so it is never wrapped in `MatryoshkaLoss`.

    Reference: Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022, Eq. 1 (MRL) and Sec. 3 (MRL-E).

    Args:
        model ([`MatryoshkaForSequenceClassification`]): the classification model (or a DDP wrapper around it).

    Inputs: `loss([pooled], labels)`: the full pooled embeddings `(batch, embedding_size)` (the model output's
    `embeddings`) and the labels `(batch,)`.
    """

    min_text_columns, max_text_columns, needs_labels = 1, 1, True
    sums_over_sizes = True
    citation = MATRYOSHKA_CITATION

    def __init__(self, model):
        super().__init__()
        classifier = getattr(model, "module", model)  # DDP / DataParallel wrappers keep the model in .module
        if not hasattr(classifier, "matryoshka_loss"):
            raise ValueError(
                f"loss='cross_entropy' trains nested classification heads; {type(classifier).__name__} has none. "
                "Use mrl_text.MatryoshkaForSequenceClassification (config with num_labels)."
            )
        self.model = model

    def forward(self, embeddings, labels):
        (pooled,) = unpack(embeddings, ["pooled"], self)
        classifier = getattr(self.model, "module", self.model)
        return classifier.matryoshka_loss(classifier.classifier(pooled), labels)

    def get_config_dict(self):
        config = getattr(self.model, "module", self.model).config
        return {
            "matryoshka_dimensions": list(config.matryoshka_dimensions),
            "matryoshka_weights": list(config.matryoshka_weights),
            "efficient_heads": config.efficient_heads,
            "num_labels": config.num_labels,
        }


class DistillMSELoss(nn.Module):
    """Distillation: mean squared error between the student's embeddings and a teacher's embeddings.

    The teacher belongs to this loss: it is frozen here and embeds each batch's texts (`compute_labels`, called by
    the trainer with the texts tokenized by `teacher_tokenizer`). Without a teacher, the labels carry the teacher's
    embeddings, precomputed (one vector per row). Wrapped in `MatryoshkaLoss`, the teacher's embeddings are truncated
    (and re-normalized) to every size by the same `truncate_embeddings` call as the student's, so each student
    prefix learns the matching teacher prefix.

    Reference: Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
    Distillation", EMNLP 2020.

    Args:
        teacher (*optional*): a model whose output has `full_embeddings` (e.g. a `MatryoshkaModel`, with its
            `tokenizer`); frozen (eval mode, no gradients).

    Inputs: `loss([student], labels)`: the student's `(batch, dim)` embeddings and the teacher's, same shape; no
    gradient flows into the teacher.
    """

    min_text_columns, max_text_columns = 1, 1
    embedding_labels = True
    citation = """@inproceedings{reimers2020multilingual,
  title     = {Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation},
  author    = {Reimers, Nils and Gurevych, Iryna},
  booktitle = {Proceedings of the 2020 Conference on Empirical Methods in Natural Language Processing},
  year      = {2020},
  url       = {https://arxiv.org/abs/2004.09813}
}"""

    def __init__(self, teacher=None):
        super().__init__()
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False)

    @property
    def needs_labels(self):
        return self.teacher is None

    @property
    def teacher_tokenizer(self):
        return getattr(self.teacher, "tokenizer", None)

    def compute_labels(self, columns, labels):
        """The teacher's full-size embeddings of the batch's one text column (`columns`: column -> tokenizer
        outputs), or, without a teacher, the precomputed embeddings in `labels`."""
        if self.teacher is None:
            if labels is None or labels.dim() != 2:
                raise ValueError(
                    "Distillation needs a teacher: pass DistillMSELoss(teacher=...) (MatryoshkaTrainer(teacher=...)), "
                    "or put the teacher's embeddings (one vector per row) in the 'label' column."
                )
            return labels.float()
        (features,) = columns.values()
        with torch.no_grad():
            return self.teacher(**features).full_embeddings

    def forward(self, embeddings, labels):
        (student,) = unpack(embeddings, ["student"], self)
        if labels is None:
            raise ValueError("DistillMSELoss needs the teacher's embeddings as `labels` (see compute_labels).")
        if student.shape != labels.shape:
            raise ValueError(
                f"Student embeddings {tuple(student.shape)} and teacher embeddings {tuple(labels.shape)} differ in "
                "shape; the teacher's embedding size must be at least the student's."
            )
        return nn.functional.mse_loss(student, labels.detach())

    def get_config_dict(self):
        name = getattr(getattr(self.teacher, "config", None), "name_or_path", None)
        return {"teacher": None if self.teacher is None else name or type(self.teacher).__name__}


class MatryoshkaLoss(nn.Module):
    """Apply a base loss to every nested prefix of embeddings computed once, weighted per size.

    Called like its base loss, `loss(embeddings, labels)`: each size's prefix of every tensor (and of the labels when
    they are embeddings) is cut, re-normalized with `normalize` and handed to the base loss; the weighted losses sum.
    Reference: Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022 (`citation`).

    Args:
        base_loss (`nn.Module`): a loss with the same call, `base_loss(prefixes, labels)`, returning a scalar.
        matryoshka_dimensions (`list[int]`): the sizes; take them from the model's config
            (`MatryoshkaLoss.from_config`), the single source of truth.
        matryoshka_weights (`list[float]`, *optional*): one weight per size (default 1.0 each).
        n_dims_per_step (`int`, *optional*): sample this many sizes per step (cheaper steps); the sample is always
            sorted largest first.
        keep_full_dim (`bool`): with `n_dims_per_step`, always include the full size in the sample.
        normalize (`bool`): re-normalize each prefix (cosine-similarity losses want True).
        prefix_targets (`str`): `"labels"` (the paper): every size learns the task's targets; `"full_size"`: the
            largest size learns them and every smaller prefix matches the largest size's detached score
            distribution (KL divergence over the base loss's `logits`, e.g. `InfoNCELoss`'s in-batch scores).
    Attributes the trainer sets per step: `full_size_only = True` trains only the largest size; `smaller_sizes_scale`
    multiplies every smaller size's weight (`full_size_only_fraction`, `smaller_sizes_warmup_fraction`).

    Example:

    ```python
    >>> loss_fn = MatryoshkaLoss.from_config(model.config, InfoNCELoss(scale=20.0))
    >>> out_a, out_p = model(**anchor_inputs), model(**positive_inputs)
    >>> loss = loss_fn([out_a.full_embeddings, out_p.full_embeddings])
    >>> loss_fn.get_config_dict()["matryoshka_dimensions"], loss_fn.citation  # what a model card reports
    ```
    """

    citation = MATRYOSHKA_CITATION

    def __init__(self, base_loss, matryoshka_dimensions, matryoshka_weights=None, n_dims_per_step=None,
                 keep_full_dim=True, normalize=True, prefix_targets="labels"):
        super().__init__()
        if prefix_targets not in ("labels", "full_size"):
            raise ValueError(f"prefix_targets={prefix_targets!r}; choose 'labels' or 'full_size'.")
        if prefix_targets == "full_size" and not hasattr(base_loss, "logits"):
            raise ValueError(f"prefix_targets='full_size' distils scores; {type(base_loss).__name__} has no `logits`.")
        if getattr(base_loss, "sums_over_sizes", False):
            raise ValueError(f"{type(base_loss).__name__} already weights every size (nested heads); use it alone.")
        dims = [int(d) for d in matryoshka_dimensions]
        weights = [1.0] * len(dims) if matryoshka_weights is None else [float(w) for w in matryoshka_weights]
        if len(weights) != len(dims):
            raise ValueError(f"{len(weights)} weights for {len(dims)} sizes {dims}; give one weight per size.")
        if n_dims_per_step is not None and not 1 <= n_dims_per_step <= len(dims):
            raise ValueError(f"n_dims_per_step={n_dims_per_step} must be between 1 and the {len(dims)} sizes.")
        order = sorted(range(len(dims)), key=lambda i: -dims[i])
        self.base_loss = base_loss
        self.matryoshka_dimensions = [dims[i] for i in order]
        self.matryoshka_weights = [weights[i] for i in order]
        self.n_dims_per_step = n_dims_per_step
        self.keep_full_dim = keep_full_dim
        self.normalize = normalize
        self.prefix_targets = prefix_targets
        self.full_size_only, self.smaller_sizes_scale = False, 1.0

    @classmethod
    def from_config(cls, config, base_loss, **kwargs):
        """Sizes, weights and normalization from a `MatryoshkaConfig`."""
        kwargs.setdefault("normalize", True)
        return cls(base_loss, config.matryoshka_dimensions, config.matryoshka_weights, **kwargs)

    # The dataset layout and the batch-computed targets are the base loss's.
    min_text_columns = property(lambda self: getattr(self.base_loss, "min_text_columns", 1))
    max_text_columns = property(lambda self: getattr(self.base_loss, "max_text_columns", None))
    needs_labels = property(lambda self: getattr(self.base_loss, "needs_labels", None))
    teacher_tokenizer = property(lambda self: getattr(self.base_loss, "teacher_tokenizer", None))

    def compute_labels(self, columns, labels):
        """The base loss's targets computed from the batch (see `DistillMSELoss`); `labels` unchanged otherwise."""
        compute = getattr(self.base_loss, "compute_labels", None)
        return labels if compute is None else compute(columns, labels)

    def sizes_for_step(self):
        """The (size, weight) pairs this step trains, largest first."""
        pairs = list(zip(self.matryoshka_dimensions, scaled_size_weights(self.matryoshka_weights, self.smaller_sizes_scale)))
        if self.full_size_only:
            return pairs[:1]
        if self.n_dims_per_step is None or self.n_dims_per_step == len(pairs):
            return pairs
        if self.keep_full_dim:
            chosen = [pairs[0]] + random.sample(pairs[1:], self.n_dims_per_step - 1)
        else:
            chosen = random.sample(pairs, self.n_dims_per_step)
        return sorted(chosen, key=lambda p: -p[0])

    def forward(self, embeddings, labels=None):
        """`embeddings`: a list of full-size tensors (e.g. anchor, positive[, negative]); returns a scalar."""
        if isinstance(embeddings, torch.Tensor):
            embeddings = [embeddings]
        embedding_labels = labels is not None and getattr(self.base_loss, "embedding_labels", False)
        total, full = 0.0, self.matryoshka_dimensions[0]
        if self.prefix_targets == "full_size":
            with torch.no_grad():
                teacher = self.base_loss.logits([truncate_embeddings(e, full, self.normalize) for e in embeddings])[0]
            teacher = teacher.log_softmax(-1)
        for dim, weight in self.sizes_for_step():
            if weight == 0:
                continue
            prefixes = [truncate_embeddings(e, dim, self.normalize) for e in embeddings]
            if self.prefix_targets == "full_size" and dim != full:  # KL(full size's distribution || the prefix's)
                student = self.base_loss.logits(prefixes)[0].log_softmax(-1)
                loss = nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True)
            else:
                sized_labels = truncate_embeddings(labels, dim, self.normalize) if embedding_labels else labels
                loss = self.base_loss(prefixes, sized_labels)
            total = total + weight * loss
        return total

    def get_config_dict(self):
        """What trained the model, for its card: the base loss and its options, the sizes and weights, sampling."""
        base_config = getattr(self.base_loss, "get_config_dict", dict)
        return {
            "loss": type(self.base_loss).__name__,
            "loss_config": base_config(),
            "matryoshka_dimensions": list(self.matryoshka_dimensions),
            "matryoshka_weights": list(self.matryoshka_weights),
            "n_dims_per_step": self.n_dims_per_step,
            "keep_full_dim": self.keep_full_dim,
            "normalize": self.normalize,
            "prefix_targets": self.prefix_targets,
        }


LOSSES = {
    "infonce": InfoNCELoss,
    "cosent": CoSENTLoss,
    "cross_entropy": MatryoshkaCrossEntropyLoss,
    "distill_mse": DistillMSELoss,
}


def get_loss(name, **options):
    """Build the base loss registered as `name` ("infonce", "cosent", "cross_entropy", "distill_mse") with `options`
    (e.g. `get_loss("infonce", scale=20.0)`, `get_loss("distill_mse", teacher=teacher)`,
    `get_loss("cross_entropy", model=classifier)`).

    Wrap an embedding loss in `MatryoshkaLoss.from_config(model.config, base)`; the trainer does. `cross_entropy`
    weights the sizes itself (`sums_over_sizes`).
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}.")
    loss_class = LOSSES[name]
    parameters = list(inspect.signature(loss_class.__init__).parameters.values())[1:]
    accepted = [p.name for p in parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"Loss {name!r} takes no option(s) {unknown}; it accepts {accepted or 'none'}.")
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise ValueError(f"Loss {name!r} needs the option(s) {missing}, e.g. get_loss({name!r}, {missing[0]}=...).")
    return loss_class(**options)


__all__ = [
    "CoSENTLoss", "DistillMSELoss", "InfoNCELoss", "LOSSES", "MATRYOSHKA_CITATION", "MatryoshkaCrossEntropyLoss",
    "MatryoshkaLoss", "gather_with_grad", "get_loss", "in_batch_targets", "unpack",
]
