"""The files that make a saved Matryoshka model folder a sentence-transformers model too.

`write_sentence_transformers_files` is a save hook (registered in mrl_text/__init__.py): after `save_pretrained`,
`SentenceTransformer(folder, trust_remote_code=True)` runs Transformer (the MatryoshkaModel; `encode(texts, layers=3)`
runs only its first 3 layers) -> Pooling -> MatryoshkaTruncation (`encode(texts, dim=64)`) -> Normalize and gives the
embeddings of `MatryoshkaModel.encode`. Plain JSON here keeps saving free of the sentence-transformers import; the
truncation module's code is mrl_text/models/sentence_transformers_matryoshka.py, copied into the folder under the same
name.
"""

import json
import os
import shutil

from ..models.configuration_matryoshka import SENTENCE_TRANSFORMERS_MODULE_FILE as MODULE_FILE
from ..models.configuration_matryoshka import SENTENCE_TRANSFORMERS_POOLING
from ..models.modeling_matryoshka import MatryoshkaModel

# Keyword arguments of `SentenceTransformer.encode` passed on to the MatryoshkaModel's forward.
TRANSFORMER_KWARGS = ("layers",)
MODULE_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", MODULE_FILE)


def _write_json(directory, name, content):
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)


def sentence_transformers_modules(config):
    """`[(folder name, class path, module config or None)]`: the module pipeline that reproduces `encode`."""
    size = config.embedding_size
    # sentence-transformers' Pooling has no projection layer: with one, the model hands over its pooled, projected
    # `full_embeddings` and there is no Pooling module.
    modules = [("", "sentence_transformers.base.modules.transformer.Transformer", None)]
    if config.projection_dim is None:
        pooling = {"embedding_dimension": size, "pooling_mode": SENTENCE_TRANSFORMERS_POOLING[config.pooling],
                   "include_prompt": True}
        modules.append(("Pooling", "sentence_transformers.sentence_transformer.modules.pooling.Pooling", pooling))
    truncation = {"embedding_dimension": size, "matryoshka_dimensions": list(config.matryoshka_dimensions),
                  "truncate_dim": config.truncate_dim}
    modules.append(("MatryoshkaTruncation", MODULE_FILE[:-3] + ".MatryoshkaTruncation", truncation))
    if config.normalize:
        normalize = {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}
        modules.append(("Normalize", "sentence_transformers.base.modules.normalize.Normalize", normalize))
    return modules


def write_sentence_transformers_files(model, save_directory, repo_id=None):
    """Save hook: modules.json, the modules' configs, sentence_bert_config.json, config_sentence_transformers.json
    and the truncation module's code, for text embedding models (other Matryoshka models are left alone)."""
    if not isinstance(model, MatryoshkaModel):
        return
    config = model.config
    shutil.copyfile(MODULE_SOURCE, os.path.join(save_directory, MODULE_FILE))
    entries = []
    for idx, (name, class_path, module_config) in enumerate(sentence_transformers_modules(config)):
        path = f"{idx}_{name}" if name else ""
        entry = {"idx": idx, "name": str(idx), "path": path, "type": class_path}
        if not name:
            # sentence-transformers routes `encode(texts, layers=3)` to the modules that list `layers` here: the
            # MatryoshkaModel then runs only its first 3 layers (2D Matryoshka), exactly as its own encode does.
            entry["kwargs"] = list(TRANSFORMER_KWARGS)
        entries.append(entry)
        if module_config is not None:
            _write_json(save_directory, os.path.join(path, "config.json"), module_config)
    _write_json(save_directory, "modules.json", entries)
    output = "last_hidden_state" if config.projection_dim is None else "full_embeddings"
    transformer = {
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": output}},
        "module_output_name": "token_embeddings" if config.projection_dim is None else "sentence_embedding",
    }
    if config.max_seq_length is not None:
        transformer["max_seq_length"] = config.max_seq_length
    _write_json(save_directory, "sentence_bert_config.json", transformer)
    # sentence-transformers writes this file before saving its modules (this model among them): keep what it wrote
    # and override only what the config sets (`prompts`, `default_prompt_name`, `similarity_fn_name`).
    model_config_path = os.path.join(save_directory, "config_sentence_transformers.json")
    model_config = {"model_type": "SentenceTransformer", "prompts": {"query": "", "document": ""},
                    "default_prompt_name": None, "similarity_fn_name": "cosine"}
    if os.path.isfile(model_config_path):
        with open(model_config_path, encoding="utf-8") as f:
            model_config.update(json.load(f))
    for key in ("prompts", "default_prompt_name", "similarity_fn_name"):
        if getattr(config, key, None) is not None:
            model_config[key] = getattr(config, key)
    _write_json(save_directory, "config_sentence_transformers.json", model_config)


__all__ = ["sentence_transformers_modules", "write_sentence_transformers_files"]
