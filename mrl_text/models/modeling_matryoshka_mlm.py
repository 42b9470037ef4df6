"""Matryoshka masked-language-model pretraining: a BERT-family encoder whose MLM prediction is made from every prefix
of each token's final representation (the paper's BERT setting; Kusupati et al., 2022, https://arxiv.org/abs/2205.13147).

Like modeling_matryoshka.py, this file imports only torch, transformers and its sibling files (relative imports), so
that ``save_pretrained`` copies it next to the weights and ``trust_remote_code=True`` loads it without mrl-text.
"""

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .modeling_matryoshka import MatryoshkaModel, MatryoshkaPreTrainedModel
from .modeling_matryoshka_classification import MatryoshkaLinear
from .modeling_matryoshka_utils import head_index, weighted_size_sum

IGNORE_INDEX = -100  # label of the tokens that are not predicted (transformers' MLM collator writes it)


@dataclass
class MatryoshkaMaskedLMOutput(ModelOutput):
    """
    Output of [`MatryoshkaForMaskedLM`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): weighted sum over sizes of each size's MLM loss.
        logits (`torch.FloatTensor`): vocabulary logits of the size `dim` (or the config's `truncate_dim`, else full
            size). Without `labels`: `(batch_size, sequence_length, vocab_size)`. With `labels`: only the predicted
            (masked) tokens, `(num_masked, vocab_size)` in the order of `labels[labels != -100]` (as ModernBERT's
            sparse prediction): a full-sequence, full-vocabulary tensor per size would dominate training memory.
        matryoshka_logits (`tuple(torch.FloatTensor)`, *optional*): with `labels`, the masked tokens' logits of every
            size, `(num_masked, vocab_size)` each, in `matryoshka_dimensions` order.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`): token states.
        full_size_loss (`torch.FloatTensor` of shape `()`, *optional*): with `labels`, the full size's MLM loss alone
            (unweighted): what a trainer logs beside `loss`, which rises while a size schedule ramps the smaller
            sizes' weights in.
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    matryoshka_logits: Optional[tuple] = None
    last_hidden_state: Optional[torch.FloatTensor] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    full_size_loss: Optional[torch.FloatTensor] = None


class MatryoshkaLMHead(nn.Module):
    """Vocabulary logits from every prefix size `d` of a token state: a transform `d -> hidden` (dense, activation,
    LayerNorm, as in BERT's head) per size, then one decoder `hidden -> vocab` shared by all sizes.

    Why a per-size transform into the full width, and not the decoder's first `d` columns: where the encoder ties
    its output embedding to its input embedding, the decoder *is* the input embedding, whose rows are full-size token
    vectors. Reading size `d` from their first `d` columns would make the input embedding's first coordinates serve
    as every size's output space as well, and tie the input side to each prefix. With a transform, the tied decoder
    stays exactly BERT's, the full size is BERT's MLM head unchanged, and a smaller size costs `d * hidden`
    parameters (MRL), or none with `efficient=True` (MRL-E: size `d` uses the first `d` columns of one full transform,
    [`MatryoshkaLinear`]). Only the transform's input is a prefix: the gradient of every size reaches the encoder
    through its first `d` coordinates alone, which is what makes each prefix a representation of its own.
    """

    def __init__(self, dims, hidden_size, vocab_size, hidden_act="gelu", layer_norm_eps=1e-12, efficient=False):
        super().__init__()
        self.dims = list(dims)
        self.transform = MatryoshkaLinear(self.dims, hidden_size, efficient=efficient)
        self.activation = ACT2FN[hidden_act] if isinstance(hidden_act, str) else hidden_act
        self.layer_norms = nn.ModuleList(nn.LayerNorm(hidden_size, eps=layer_norm_eps) for _ in self.dims)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, token_states, index):
        """Logits `(..., vocab_size)` of size `self.dims[index]` from full-size token states `(..., hidden)`."""
        transformed = self.transform(token_states, dim=self.dims[index])
        return self.decoder(self.layer_norms[index](self.activation(transformed)))


class MatryoshkaForMaskedLM(MatryoshkaPreTrainedModel):
    r"""
    A Matryoshka encoder pretrained with masked language modelling at every nested size: the MLM head
    ([`MatryoshkaLMHead`]) predicts each masked token from the first `d` coordinates of its final representation,
    for every `d` in `config.matryoshka_dimensions`, and the loss is the weighted sum (`matryoshka_weights`) of the
    per-size MLM losses. MRL (a transform per size) or weight-tied MRL-E by `config.efficient_heads`; the decoder is
    the input embedding where the encoder ties them (`tie_word_embeddings`, BERT's default).

    Inference: `logits` at `dim` (one of the sizes; default `config.truncate_dim`, else full size). For embedding
    fine-tuning, [`to_embedding_model`] gives a [`MatryoshkaModel`] with the same encoder weights and sizes (a saved
    folder also loads directly with `MatryoshkaModel.from_pretrained` / `AutoModel.from_pretrained`).

    Example:

    ```python
    >>> from transformers import BertConfig
    >>> from mrl_text import MatryoshkaConfig, MatryoshkaForMaskedLM
    >>> config = MatryoshkaConfig(encoder=BertConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
    ...                           intermediate_size=512), matryoshka_dimensions=[128, 64, 32, 16])
    >>> model = MatryoshkaForMaskedLM(config)  # from scratch; train with transformers' MLM collator
    >>> embedder = model.to_embedding_model()   # then fine-tune it as an embedding model
    ```
    """

    _tied_weights_keys = None  # set per instance: the input embedding's name depends on the encoder type

    def __init__(self, config, encoder=None):
        super().__init__(config)
        if config.projection_dim is not None:
            raise ValueError(
                f"MatryoshkaForMaskedLM predicts tokens from the encoder's token states (hidden size "
                f"{config.encoder.hidden_size}); projection_dim={config.projection_dim} does not apply to them. "
                "Remove projection_dim (set it when fine-tuning the embedding model instead)."
            )
        self.matryoshka = MatryoshkaModel(config, encoder=encoder)
        encoder_config = self.matryoshka.encoder.config
        self.lm_head = MatryoshkaLMHead(
            config.matryoshka_dimensions,
            encoder_config.hidden_size,
            encoder_config.vocab_size,
            hidden_act=getattr(encoder_config, "hidden_act", "gelu"),
            layer_norm_eps=getattr(encoder_config, "layer_norm_eps", 1e-12),
            efficient=config.efficient_heads,
        )
        input_embedding = self.matryoshka.get_input_embeddings().weight
        source = next(name for name, p in self.matryoshka.named_parameters() if p is input_embedding)
        self._tied_weights_keys = {"lm_head.decoder.weight": f"matryoshka.{source}"}
        # Training only: the factor on every smaller size's loss weight, set per step by a size schedule
        self.smaller_sizes_scale = 1.0
        self.post_init()

    def get_expanded_tied_weights_keys(self, all_submodels=False):
        # The wrapper config has no `tie_word_embeddings`: whether to tie is the encoder's choice. (With
        # `all_submodels`, transformers walks the submodels and asks each, this one included, without it.)
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys) if getattr(self.config.encoder, "tie_word_embeddings", False) else {}

    def get_input_embeddings(self):
        return self.matryoshka.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.matryoshka.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    @property
    def tokenizer(self):
        return self.matryoshka.tokenizer

    @tokenizer.setter
    def tokenizer(self, value):
        self.matryoshka.tokenizer = value

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The MatryoshkaPreTrainedModel save, with `auto_map` also mapping `AutoModel` to [`MatryoshkaModel`]: the
        embedding model this encoder gives (what a user embeds with), so that `AutoModel.from_pretrained(folder,
        trust_remote_code=True)` loads it where mrl-text is not installed, as it does where it is."""
        if type(self)._auto_class is not None:  # the code is copied next to the weights (modeling_matryoshka.py too)
            module = MatryoshkaModel.__module__.rsplit(".", 1)[-1]
            auto_map = getattr(self.config, "auto_map", None) or {}
            self.config.auto_map = {**auto_map, "AutoModel": f"{module}.MatryoshkaModel"}
        super().save_pretrained(save_directory, *args, **kwargs)

    def to_embedding_model(self, pooling=None, normalize=None):
        """A [`MatryoshkaModel`] for embedding fine-tuning: a copy of this encoder (weights exactly as they are), the
        same sizes and weights, the tokenizer; `pooling` / `normalize` override the config's when given."""
        config = copy.deepcopy(self.config)
        config.architectures = config.auto_map = None  # the embedding model's own save writes its own
        if pooling is not None:
            config.pooling = pooling
        if normalize is not None:
            config.normalize = bool(normalize)
        config._validate_nesting()  # a bad pooling is refused here, by name
        model = MatryoshkaModel(config, encoder=copy.deepcopy(self.matryoshka.encoder))
        model.tokenizer = self.tokenizer
        return model.to(self.device)

    def matryoshka_loss(self, matryoshka_logits, labels):
        """Weighted sum over sizes of the cross-entropy of each size's logits `(num_masked, vocab)` with `labels`."""
        if not labels.numel():  # no token was masked in this batch: nothing to learn, but keep the graph
            return sum(logits.sum() for logits in matryoshka_logits) * 0.0
        return weighted_size_sum(lambda index: F.cross_entropy(matryoshka_logits[index].float(), labels),
                                 self.config.matryoshka_weights, self.smaller_sizes_scale)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        dim=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): the token to predict at each
            masked position, -100 elsewhere (what `DataCollatorForLanguageModeling` writes).
        dim (`int`, *optional*): whose prediction `logits` holds; one of `config.matryoshka_dimensions`.

        Returns:
            [`MatryoshkaMaskedLMOutput`]; see it for the shapes with and without `labels`.
        """
        dims = self.config.matryoshka_dimensions
        index = head_index(self.config, dim, head="MLM head")
        outputs = self.matryoshka(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        token_states = outputs.last_hidden_state
        loss = matryoshka_logits = full_size_loss = None
        if labels is None:
            logits = self.lm_head(token_states, index)
        else:
            if labels.shape != token_states.shape[:2]:
                raise ValueError(
                    f"labels have shape {tuple(labels.shape)} but the inputs {tuple(token_states.shape[:2])}; give "
                    "one label per token (-100 where nothing is predicted), as DataCollatorForLanguageModeling does."
                )
            predicted = labels != IGNORE_INDEX
            masked_states, masked_labels = token_states[predicted], labels[predicted]
            matryoshka_logits = tuple(self.lm_head(masked_states, i) for i in range(len(dims)))
            logits = matryoshka_logits[index]
            loss = self.matryoshka_loss(matryoshka_logits, masked_labels)
            if masked_labels.numel():
                full = matryoshka_logits[dims.index(max(dims))]
                full_size_loss = F.cross_entropy(full.detach().float(), masked_labels)
        result = MatryoshkaMaskedLMOutput(
            loss=loss,
            logits=logits,
            matryoshka_logits=matryoshka_logits,
            last_hidden_state=token_states,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            full_size_loss=full_size_loss,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return result if return_dict else result.to_tuple()


__all__ = ["MatryoshkaForMaskedLM", "MatryoshkaLMHead", "MatryoshkaMaskedLMOutput"]
