"""Configuration of a Matryoshka image-text dual encoder: a wrapped dual encoder's config plus the nesting.

This file imports only transformers and the text configuration file, as a sibling (relative import): in a saved
model folder the files sit side by side, and in the package mrl_text/image_text/__init__.py provides the sibling.
So ``trust_remote_code=True`` loads a saved folder without mrl-text.
"""

from transformers import AutoConfig

from .configuration_matryoshka import WrappingConfig, encoder_config_from, validate_nesting


def tower_embedding_sizes(encoder):
    """`(text_size, image_size)`: what `get_text_features` and `get_image_features` of this dual encoder return.

    CLIP and VisionTextDualEncoder project both towers to `projection_dim`. ALIGN projects only the text tower to
    `projection_dim`; its image embedding is the pooled EfficientNet output, whose width is the last block's
    channel count scaled by `width_coefficient` (640 for kakaobrain/align-base).
    """
    if encoder.model_type == "align":
        from transformers.models.align.modeling_align import round_filters

        vision = encoder.vision_config
        return encoder.projection_dim, round_filters(vision, vision.out_channels[-1])
    projection_dim = getattr(encoder, "projection_dim", None)
    if projection_dim is None or not hasattr(encoder, "text_config") or not hasattr(encoder, "vision_config"):
        raise ValueError(
            f"Cannot tell the embedding sizes of model type '{encoder.model_type}': expected an image-text dual "
            "encoder with text_config, vision_config and projection_dim (ALIGN, CLIP, VisionTextDualEncoder)."
        )
    return projection_dim, projection_dim


class MatryoshkaDualEncoderConfig(WrappingConfig):
    r"""
    Configuration of a [`MatryoshkaDualEncoder`]: an image-text dual encoder (ALIGN, CLIP, VisionTextDualEncoder:
    any model with `get_text_features` and `get_image_features`) whose image and text embeddings are both trained
    so that their first `d` coordinates, re-normalized, are an embedding for every `d` in `matryoshka_dimensions`
    (Kusupati et al., 2022, trained ALIGN this way).

    Both towers must give embeddings of the same size (`embedding_size`); the nesting ends at that size.

    Args:
        encoder (`dict` or `PreTrainedConfig`, *optional*):
            Config of the wrapped dual encoder (`AlignConfig`, `CLIPConfig`, `VisionTextDualEncoderConfig`; a dict
            needs its `model_type`). Defaults to an ALIGN-base config.
        matryoshka_dimensions (`list[int]`, *optional*):
            The nested sizes, e.g. `[640, 512, 256, 128, 64, 32, 16]`. Stored largest first; the full embedding size
            is always included (added with a warning when missing). Defaults to `default_dimensions` (the full size
            and every power of two below it down to 16).
        matryoshka_weights (`list[float]`, *optional*):
            Loss weight of each size, in the order of `matryoshka_dimensions`. Defaults to 1.0 for every size.
        truncate_dim (`int`, *optional*):
            The size `get_text_features`, `get_image_features` and `forward` return by default; one of
            `matryoshka_dimensions`. `None` means full size.
        is_matryoshka (`bool`, defaults to `True`):
            Tells serving engines that `matryoshka_dimensions` may be requested as `dimensions=`.

    Example:

    ```python
    >>> from transformers import CLIPConfig
    >>> from mrl_text import MatryoshkaDualEncoderConfig
    >>> config = MatryoshkaDualEncoderConfig(encoder=CLIPConfig(projection_dim=64), matryoshka_dimensions=[64, 32, 8])
    >>> config.embedding_size
    64
    ```
    """

    model_type = "matryoshka_dual_encoder"
    sub_configs = {"encoder": AutoConfig}

    def __init__(
        self,
        encoder=None,
        matryoshka_dimensions=None,
        matryoshka_weights=None,
        truncate_dim=None,
        is_matryoshka=True,
        **kwargs,
    ):
        self.encoder = encoder_config_from(encoder, default_model_type="align")
        self.is_matryoshka = True if is_matryoshka is None else bool(is_matryoshka)
        self.truncate_dim = truncate_dim
        self.matryoshka_dimensions, self.matryoshka_weights = validate_nesting(
            matryoshka_dimensions, matryoshka_weights, truncate_dim, self.embedding_size
        )
        super().__init__(**kwargs)

    @property
    def embedding_size(self):
        """The size both towers' embeddings share; a clear error when the towers disagree."""
        text_size, image_size = tower_embedding_sizes(self.encoder)
        if text_size != image_size:
            hint = (
                "In ALIGN the image embedding is the un-projected vision output, so set the text `projection_dim` to "
                f"the vision width {image_size}."
                if self.encoder.model_type == "align"
                else "Give both towers the same `projection_dim`."
            )
            raise ValueError(
                f"The towers of this {self.encoder.model_type} model give embeddings of different sizes: text "
                f"{text_size}, image {image_size}. Nested image and text embeddings must share one size. {hint}"
            )
        return text_size


__all__ = ["MatryoshkaDualEncoderConfig", "tower_embedding_sizes"]
