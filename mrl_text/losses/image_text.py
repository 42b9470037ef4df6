"""The image-text contrastive loss for Matryoshka dual encoders (ALIGN, CLIP), with the text losses' call:
`loss([image_embeds, text_embeds], labels=None)`. Wrap it in `MatryoshkaLoss` to apply it to every nested prefix of
both towers' embeddings, computed once per step.
"""

from torch import nn

from ..distributed import in_batch_targets
from .base import unpack


class ImageTextInfoNCELoss(nn.Module):
    """Symmetric image-text InfoNCE with the model's learnable temperature (the CLIP / ALIGN contrastive loss).

    Each image must pick its own caption among every caption of the (global) batch, and each caption its image;
    the two cross-entropies are averaged. The loss holds the model, as sentence-transformers' losses do, and reads
    its inverse temperature (`MatryoshkaDualEncoder.logit_scale`, trained with the towers) at every call.

    References: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021);
    Jia et al., "Scaling Up Visual and Vision-Language Representation Learning With Noisy Text Supervision" (2021).

    Args:
        model: the dual encoder (or a DDP wrapper around it), or anything with a `logit_scale` scalar tensor.
        gather_across_devices (`bool`): under DDP, score against every process's images and captions (gathered
            with gradients), so negatives span the global batch.

    Inputs: `loss([image_embeds, text_embeds], labels=None)`: unit-length `(batch, dim)` tensors where row `i` of
    each is a pair.

    Example:

    ```python
    >>> matryoshka_loss = MatryoshkaLoss.from_config(model.config, ImageTextInfoNCELoss(model))
    >>> out = model(input_ids=..., attention_mask=..., pixel_values=...)
    >>> loss = matryoshka_loss([out.full_image_embeds, out.full_text_embeds])
    ```
    """

    citation = """@inproceedings{radford2021learning,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning},
  year      = {2021},
  url       = {https://arxiv.org/abs/2103.00020}
}
@inproceedings{jia2021scaling,
  title     = {Scaling Up Visual and Vision-Language Representation Learning With Noisy Text Supervision},
  author    = {Jia, Chao and Yang, Yinfei and Xia, Ye and Chen, Yi-Ting and Parekh, Zarana and Pham, Hieu and Le, Quoc and Sung, Yun-Hsuan and Li, Zhen and Duerig, Tom},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning},
  year      = {2021},
  url       = {https://arxiv.org/abs/2102.05918}
}"""  # noqa: E501 (BibTeX: one author list per line, as the references give them)

    def __init__(self, model, gather_across_devices=True):
        super().__init__()
        if not hasattr(getattr(model, "module", model), "logit_scale"):
            raise ValueError(
                f"ImageTextInfoNCELoss reads the learnable temperature from the model's `logit_scale`; "
                f"{type(model).__name__} has none. Pass the MatryoshkaDualEncoder being trained."
            )
        self.model = model
        self.gather_across_devices = gather_across_devices

    def forward(self, embeddings, labels=None):
        image_embeds, text_embeds = unpack(embeddings, ["image_embeds", "text_embeds"], self)
        logit_scale = getattr(self.model, "module", self.model).logit_scale
        gather, targets = in_batch_targets(image_embeds.shape[0], image_embeds.device, self.gather_across_devices)
        image_to_text = nn.functional.cross_entropy(logit_scale * image_embeds @ gather(text_embeds).T, targets)
        text_to_image = nn.functional.cross_entropy(logit_scale * text_embeds @ gather(image_embeds).T, targets)
        return (image_to_text + text_to_image) / 2

    def get_config_dict(self):
        return {"gather_across_devices": self.gather_across_devices}

    def extra_repr(self):
        return f"gather_across_devices={self.gather_across_devices}"


__all__ = ["ImageTextInfoNCELoss"]
