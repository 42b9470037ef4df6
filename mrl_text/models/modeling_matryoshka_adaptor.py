"""A post-hoc Matryoshka adaptor: a small map on frozen embeddings whose prefixes keep the full embedding's structure.

Reference: Yoon et al., "Matryoshka-Adaptor: Unsupervised and Supervised Tuning for Smaller Embedding Dimensions",
EMNLP 2024.

This file travels with a saved adaptor (or a saved `MatryoshkaModel` holding one, which imports it relatively): it
imports only torch, transformers' dependencies (safetensors, huggingface_hub) and its siblings
configuration_matryoshka_adaptor.py and modeling_matryoshka_utils.py. Training lives in `mrl_text.adaptor.fitting`.
"""

import math
from pathlib import Path

import torch
from torch import nn

# MatryoshkaAdaptorConfig is re-exported here: code that imports it from this file keeps working.
from .configuration_matryoshka_adaptor import CONFIG_NAME, MatryoshkaAdaptorConfig  # noqa: F401
from .modeling_matryoshka_utils import truncate_embeddings

WEIGHTS_NAME = "model.safetensors"


class MatryoshkaAdaptor(nn.Module):
    """`e' = R e + f(R e)`: an optional orthogonal map `R`, then a residual MLP `f` whose output layer starts at
    zero, so a new adaptor is exactly the identity (or exactly the rotation).

    `forward(embeddings, dim)` returns full-size adapted embeddings `(..., embedding_size)`; truncate them to `dim`
    (and re-normalize) afterwards, or call `transform`, which does both. At a size outside
    `config.adapted_dimensions` the input comes back unchanged, i.e. plain truncation. Each size is self-consistent
    (queries and documents of one size always go through the same map), so mixing sizes in a funnel stays valid
    as long as each stage scores both sides at its own size.

    Train it with `mrl_text.adaptor.fitting.fit`.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        size = config.embedding_size
        # A per-size choice (`config.candidates`): one map per candidate, each a single-map adaptor of its own; this
        # one then holds no map itself. Without it (every adaptor saved before the choice existed) the map lives
        # here, under the same weight names as ever.
        self.candidates = nn.ModuleDict(
            {name: MatryoshkaAdaptor(config.candidate_config(name)) for name in config.candidates or {}}
        )
        single = not config.candidates
        # A buffer, not a parameter: PCA rotations are fit in closed form; a learned rotation is trained through a
        # skew-symmetric parametrization in `mrl_text.adaptor.fitting` and written back here, so it stays orthogonal.
        self.register_buffer("rotation", torch.eye(size) if single and config.rotation else torch.empty(0),
                             persistent=True)
        layers, width = [], size
        for _ in range(config.num_layers if single else 0):
            layers += [nn.Linear(width, config.hidden_size), nn.GELU()]
            width = config.hidden_size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, size)) if single and config.num_layers else None
        self.reset_parameters()

    def reset_parameters(self):
        """Back to the identity map (the rotation, if any, is kept)."""
        if self.mlp is None:
            return
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
                nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.mlp[-1].weight)  # zero output layer: f(x) = 0 at the start, so e' = R e

    @property
    def matryoshka_dimensions(self):
        return list(self.config.matryoshka_dimensions)

    def check_embeddings(self, embeddings, what="embeddings"):
        """A float tensor `(..., embedding_size)` of finite values, or a clear error naming the problem."""
        embeddings = torch.as_tensor(embeddings)
        if not embeddings.is_floating_point():
            embeddings = embeddings.float()
        if embeddings.dim() == 0 or embeddings.shape[-1] != self.config.embedding_size:
            raise ValueError(
                f"{what} have shape {tuple(embeddings.shape)}; this adaptor maps embeddings of size "
                f"{self.config.embedding_size} (last axis). Use the embeddings of the model it was fit on."
            )
        finite = torch.isfinite(embeddings).reshape(-1, embeddings.shape[-1]).all(dim=-1)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten()[:10].tolist()
            raise ValueError(f"{what} hold NaN or infinite values in row(s) {rows}; drop or re-encode them.")
        return embeddings

    def check_dim(self, dim):
        if dim is not None and dim not in self.config.matryoshka_dimensions:
            raise ValueError(
                f"dim={dim!r} is not one of this adaptor's sizes {self.config.matryoshka_dimensions}; pick one of "
                "them (or None for the full size)."
            )

    def map_at(self, dim=None):
        """The single-map adaptor used at size `dim` (this one, or the candidate chosen there); None: plain
        truncation at that size."""
        size = self.config.embedding_size if dim is None else dim
        if size not in self.config.adapted_dimensions:
            return None
        return self.candidates[self.config.chosen[str(size)]] if self.config.candidates else self

    def adapt(self, embeddings):
        """The full map `R e + f(R e)` at every size (no gating); for one map only (a per-size choice: `map_at`)."""
        if self.config.candidates:
            raise ValueError("This adaptor chooses its map per size; call at_size(embeddings, dim) or map_at(dim).")
        rotated = embeddings @ self.rotation.T.to(embeddings.dtype) if self.rotation.numel() else embeddings
        if self.mlp is None:
            return rotated
        return rotated + self.mlp(rotated)

    def forward(self, embeddings, dim=None):
        """Full-size adapted embeddings for use at size `dim` (default: the full size)."""
        self.check_dim(dim)
        return self.at_size(embeddings, dim)

    def at_size(self, embeddings, dim=None, normalize_input=False):
        """`forward` for any size, unchecked: a size outside `config.adapted_dimensions` (gated off by the fit, or
        one it was not fit for) returns `embeddings` unchanged, i.e. plain truncation.

        `normalize_input`: the adaptor is fit on what `encode` returns; inside a model that normalizes, the pooled
        embedding is made unit length first so the adaptor sees the same input it was fit on.
        """
        chosen = self.map_at(dim)
        if chosen is None:
            return embeddings
        if normalize_input:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=-1)
        return chosen.adapt(embeddings)

    @torch.no_grad()
    def transform(self, embeddings, dim=None, normalize=True):
        """Adapt, keep the first `dim` coordinates and (when `normalize`) re-normalize; numpy in, numpy out.

        Args:
            embeddings (`numpy.ndarray` or `torch.Tensor`, `(..., embedding_size)`): full-size embeddings.
            dim (`int`, *optional*): one of `config.matryoshka_dimensions`; `None` keeps the full size.
        """
        as_numpy = not isinstance(embeddings, torch.Tensor)
        tensor = self.check_embeddings(embeddings)
        self.check_dim(dim)
        parameter = next(iter(self.buffers()))
        adapted = self(tensor.to(parameter.device, torch.float32), dim=dim)
        out = truncate_embeddings(adapted, dim, normalize)
        return out.cpu().numpy() if as_numpy else out.to(tensor.device)

    # --- saving and loading: config.json + model.safetensors, a small Hub model of its own --------------------

    def save_pretrained(self, save_directory):
        from safetensors.torch import save_file

        directory = Path(save_directory)
        if directory.is_file():
            raise ValueError(f"save_directory={str(directory)!r} is a file; pass a folder.")
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        self.config.save(directory)
        (directory / "README.md").write_text(self.card(), encoding="utf-8")
        return directory

    def card(self):
        """A short model card: what the adaptor is, what it was fit on, its validation figures at every size."""
        c, summary = self.config, self.config.fit_summary or {}
        lines = [
            "---", "tags: [matryoshka, matryoshka-adaptor, embeddings]", "---", "", "# Matryoshka adaptor", "",
            f"Maps {c.embedding_size}-d embeddings so that their prefixes of {c.matryoshka_dimensions} keep the full "
            f"embedding's structure (Yoon et al., EMNLP 2024). {self.describe()}. Used at "
            f"{c.adapted_dimensions or 'no size'}; every other size is plain truncation.", "",
        ]
        if summary:
            lines += [
                f"Fit on: {summary.get('description') or 'unnamed embeddings'} ({summary.get('objective')}, "
                f"{summary.get('corpus_embeddings')} corpus embeddings, {summary.get('queries') or 0} queries).",
                "",
                f"Validation ({summary.get('validation_metric')}):",
                "",
                "| size | adaptor | truncation | used |",
                "|---:|---:|---:|---|",
            ]
            for dim, v in summary.get("validation", {}).items():
                lines.append(
                    f"| {dim} | {v['adaptor']:.4f} | {v['truncation']:.4f} | "
                    f"{(v.get('candidate') or 'yes') if v['adapted'] else 'no'} |"
                )
        return "\n".join(lines) + "\n"

    @classmethod
    def from_pretrained(cls, name_or_path, **hub_kwargs):
        """Load from a folder written by `save_pretrained`, or from a Hub repository id."""
        from safetensors.torch import load_file

        directory = Path(name_or_path)
        if not directory.is_dir():
            from huggingface_hub import snapshot_download

            directory = Path(
                snapshot_download(str(name_or_path), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], **hub_kwargs)
            )
        adaptor = cls(MatryoshkaAdaptorConfig.load(directory))
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: no adaptor weights next to {CONFIG_NAME}.")
        adaptor.load_state_dict(load_file(str(weights)))
        return adaptor.eval()

    def push_to_hub(self, repo_id, private=None, token=None, commit_message="Upload Matryoshka adaptor"):
        """Save to a temporary folder and upload it as the Hub model `repo_id` (created when missing)."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return api.upload_folder(repo_id=repo.repo_id, folder_path=folder, commit_message=commit_message)

    def describe(self):
        """The map(s) in words: the rotation and MLP, or which candidate serves which size."""
        c = self.config
        if c.candidates:
            return "Per size: " + ", ".join(f"{dim} {name}" for dim, name in c.chosen.items())
        return f"Rotation: {c.rotation or 'none'}; residual MLP {c.hidden_size} x {c.num_layers}"

    def extra_repr(self):
        c = self.config
        if c.candidates:
            return f"embedding_size={c.embedding_size}, chosen={c.chosen}"
        return (
            f"embedding_size={c.embedding_size}, rotation={c.rotation}, hidden_size={c.hidden_size}, "
            f"num_layers={c.num_layers}, adapted_dimensions={c.adapted_dimensions}"
        )


__all__ = ["MatryoshkaAdaptor", "MatryoshkaAdaptorConfig"]
