"""Image-text dual encoders at every Matryoshka size: zero-shot classification, image<->text retrieval, and
k-nearest-neighbour classification on image embeddings.

The evaluators follow the text evaluators' contract (`mrl_text.evaluation.base.Evaluator`): images and texts are
encoded once at full size, every size is scored from the prefixes, and each class declares its Hub `task_type`
and `primary_metric`.
"""

import os

import torch

from .. import metrics
from ..models.modeling_matryoshka import truncate_embeddings
from .base import Evaluator, require_examples
from .embedders import DEFAULT_BATCH_SIZE, Embedder, check_max_length, encode_once


class DualEmbedder(Embedder):
    """An image-text dual encoder as the evaluators see it: `encode(texts)` and `encode_images(pixel_values)` give
    full-size embeddings in one shared space; prefixes are always re-normalized (contrastive models are cosine)."""

    def __init__(self, encode_fn, encode_images_fn, full_dim, dims, name, max_length=None):
        super().__init__(encode_fn, full_dim, dims, normalize=True, name=name, max_length=max_length)
        self._encode_images_fn = encode_images_fn

    def with_dims(self, dims):
        return DualEmbedder(
            self._encode_fn, self._encode_images_fn, self.full_dim, dims, self.name, max_length=self.max_length
        )

    def encode_images(self, pixel_values):
        """Full-size embeddings of preprocessed images `(n, C, H, W)` as a CPU float tensor `(n, full_dim)`."""
        with torch.inference_mode():
            embeddings = torch.as_tensor(self._encode_images_fn(pixel_values)).float().cpu().clone()
        if embeddings.shape != (len(pixel_values), self.full_dim):
            raise ValueError(
                f"{self.name}: encoding {len(pixel_values)} images gave shape {tuple(embeddings.shape)}, expected "
                f"({len(pixel_values)}, {self.full_dim})."
            )
        return embeddings


def as_dual_embedder(model, dims=None, batch_size=DEFAULT_BATCH_SIZE, max_length=None, device=None):
    """Wrap a `MatryoshkaDualEncoder` (or its folder / hub id) as a [`DualEmbedder`] scored at `dims` (default: the
    config's `matryoshka_dimensions`). `max_length` caps the captions' tokens (default: the text tower's own limit,
    e.g. 64 for ALIGN, 77 for CLIP)."""
    from ..models.modeling_matryoshka_dual_encoder import MatryoshkaDualEncoder

    if isinstance(model, DualEmbedder):
        return model if dims is None else model.with_dims(dims)
    if max_length is not None:
        max_length = check_max_length(max_length)
    name = None
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        model = MatryoshkaDualEncoder.from_pretrained(model)
        model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    if not isinstance(model, MatryoshkaDualEncoder):
        raise TypeError(
            f"Image-text evaluators take a MatryoshkaDualEncoder (or its folder), not a {type(model).__name__}; wrap "
            "ALIGN/CLIP with MatryoshkaDualEncoder.from_pretrained_dual(...)."
        )
    config = model.config
    return DualEmbedder(
        lambda texts: model.encode_texts(texts, config.embedding_size, batch_size, max_length, device),
        lambda pixels: model.encode_images(pixels, config.embedding_size, batch_size, device),
        config.embedding_size,
        dims or config.matryoshka_dimensions,
        name or model.name_or_path or "MatryoshkaDualEncoder",
        max_length=max_length,
    )


class ImageTextEvaluator(Evaluator):
    """Base class of the image-text evaluators: `evaluate` takes a `MatryoshkaDualEncoder` (or a `DualEmbedder`)."""

    def evaluate(self, model, dims=None, **embedder_kwargs):
        return super().evaluate(as_dual_embedder(model, dims, **embedder_kwargs))


def _check_images(name, pixel_values, labels=None):
    pixel_values = torch.as_tensor(pixel_values)
    if pixel_values.ndim != 4 or len(pixel_values) == 0:
        raise ValueError(
            f"{name}: pixel_values must be a non-empty (n, channels, height, width) batch; got shape "
            f"{tuple(pixel_values.shape)}."
        )
    if labels is not None and len(labels) != len(pixel_values):
        raise ValueError(f"{name}: {len(pixel_values)} images but {len(labels)} labels.")
    return pixel_values


class ZeroShotClassificationEvaluator(ImageTextEvaluator):
    """Zero-shot classification (CLIP/ALIGN): each image gets the class whose prompt embedding is nearest.

    A class's embedding at size `d` is the mean of its prompts' unit `d`-prefixes, re-normalized (prompt
    ensembling, Radford et al. 2021). Metric: `accuracy`.

    Args:
        pixel_values (`torch.Tensor` `(n, C, H, W)`): preprocessed images.
        labels (`list[int]`): the class index of each image.
        class_names (`list[str]`): one name per class index.
        templates (`list[str]`): prompts with one `{}` for the class name, e.g. `["a photo of a {}."]`.
    """

    task_type = "zero-shot-image-classification"
    primary_metric = "accuracy"

    def __init__(self, pixel_values, labels, class_names, templates=("a photo of a {}.",), name="zero-shot"):
        super().__init__(name)
        self.labels = [int(label) for label in labels]
        self.pixel_values = _check_images(name, pixel_values, self.labels)
        self.class_names, self.templates = list(class_names), list(templates)
        require_examples(name, class_names=self.class_names, templates=self.templates)
        if any("{}" not in t for t in self.templates):
            raise ValueError(f"{name}: every template needs a '{{}}' for the class name; got {self.templates}.")
        bad = sorted({label for label in self.labels if not 0 <= label < len(self.class_names)})
        if bad:
            raise ValueError(f"{name}: labels {bad[:10]} have no class name ({len(self.class_names)} names given).")

    def _embed(self, embedder):
        prompts = [t.format(c) for c in self.class_names for t in self.templates]
        return embedder.encode_images(self.pixel_values), embedder.encode(prompts)

    def _score(self, embedder, embedded, dim):
        images, prompts = embedded
        prompts = truncate_embeddings(prompts, dim, True).view(len(self.class_names), len(self.templates), dim)
        classes = truncate_embeddings(prompts.mean(1), None, True)
        predictions = (truncate_embeddings(images, dim, True) @ classes.T).argmax(1).tolist()
        return {"accuracy": metrics.accuracy(predictions, self.labels)}


class ImageTextRetrievalEvaluator(ImageTextEvaluator):
    """Image->text and text->image retrieval by cosine: Recall@1/5/10 in each direction.

    Recall@k here is the image-text convention (Flickr30k, COCO): the share of queries with at least one relevant
    item among the top k. Metrics: `image_to_text_recall@k`, `text_to_image_recall@k` (primary: image->text R@1).

    Args:
        pixel_values (`torch.Tensor` `(n_images, C, H, W)`): preprocessed images.
        texts (`list[str]`): the captions.
        relevant (`list[list[int]]`, *optional*): per image, the indices of its captions. Default: caption `i`
            belongs to image `i` (then `texts` and images must be equally many).
    """

    task_type = "image-text-retrieval"
    primary_metric = "image_to_text_recall@1"
    ks = (1, 5, 10)

    def __init__(self, pixel_values, texts, relevant=None, name="image-text-retrieval"):
        super().__init__(name)
        self.pixel_values = _check_images(name, pixel_values)
        self.texts = list(texts)
        require_examples(name, texts=self.texts)
        if relevant is None:
            if len(self.texts) != len(self.pixel_values):
                raise ValueError(
                    f"{name}: {len(self.pixel_values)} images but {len(self.texts)} captions; pass `relevant` (the "
                    "caption indices of each image) when they are not paired one to one."
                )
            relevant = [[i] for i in range(len(self.texts))]
        if len(relevant) != len(self.pixel_values):
            raise ValueError(f"{name}: `relevant` has {len(relevant)} entries for {len(self.pixel_values)} images.")
        self.relevance = torch.zeros(len(self.pixel_values), len(self.texts), dtype=torch.bool)
        for image, captions in enumerate(relevant):
            for caption in captions:
                if not 0 <= caption < len(self.texts):
                    raise ValueError(
                        f"{name}: image {image} names caption {caption}, but there are {len(self.texts)}."
                    )
                self.relevance[image, caption] = True

    def _embed(self, embedder):
        texts, rows = encode_once(embedder, self.texts)
        return embedder.encode_images(self.pixel_values), texts[rows]

    @staticmethod
    def _recall_at(scores, relevance, k):
        """Share of rows of `scores` (queries x candidates) with a relevant candidate in their top k."""
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        return relevance.gather(1, top).any(1).float().mean().item()

    def _score(self, embedder, embedded, dim):
        images, texts = (truncate_embeddings(e, dim, True) for e in embedded)
        similarity = images @ texts.T
        scores = {}
        for direction, matrix, relevance in (
            ("image_to_text", similarity, self.relevance),
            ("text_to_image", similarity.T, self.relevance.T),
        ):
            for k in self.ks:
                scores[f"{direction}_recall@{k}"] = self._recall_at(matrix, relevance, k)
        return scores


class ImageKNNEvaluator(ImageTextEvaluator):
    """k-nearest-neighbour classification on image embeddings (the MRL paper's ALIGN metric): each test image
    takes the majority label of its `k` most cosine-similar training images. Metric: `knn_accuracy`."""

    task_type = "image-classification"
    primary_metric = "knn_accuracy"

    def __init__(self, train_pixel_values, train_labels, test_pixel_values, test_labels, k=10, name="image-knn"):
        super().__init__(name)
        self.train_labels, self.test_labels = list(train_labels), list(test_labels)
        self.train_pixel_values = _check_images(name, train_pixel_values, self.train_labels)
        self.test_pixel_values = _check_images(name, test_pixel_values, self.test_labels)
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"{name}: k={k!r} must be a positive integer.")
        self.k = k

    def _embed(self, embedder):
        return embedder.encode_images(self.train_pixel_values), embedder.encode_images(self.test_pixel_values)

    def _score(self, embedder, embedded, dim):
        from sklearn.neighbors import KNeighborsClassifier

        train, test = (truncate_embeddings(e, dim, True).numpy() for e in embedded)
        neighbours = KNeighborsClassifier(n_neighbors=min(self.k, len(train)), metric="cosine")
        predictions = neighbours.fit(train, self.train_labels).predict(test).tolist()
        return {"knn_accuracy": metrics.accuracy(predictions, self.test_labels)}


__all__ = [
    "DualEmbedder",
    "ImageKNNEvaluator",
    "ImageTextEvaluator",
    "ImageTextRetrievalEvaluator",
    "ZeroShotClassificationEvaluator",
    "as_dual_embedder",
]
