"""Configuration of a Matryoshka adaptor (`mrl_text.models.modeling_matryoshka_adaptor.MatryoshkaAdaptor`).

Its own file, apart from the modeling file, so that `MatryoshkaConfig` can check an adaptor config it holds without
importing torch or the modeling code (which imports the model's configuration through the shared utils: a circle).
It imports only the standard library and travels with a saved `MatryoshkaModel` holding an adaptor.
"""

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

CONFIG_NAME = "config.json"
ROTATIONS = (None, "pca", "learned")


@dataclass
class MatryoshkaAdaptorConfig:
    """What an adaptor is: its sizes, its shape, and where it is used.

    Args:
        embedding_size (`int`): the size of the embeddings it maps (input and output).
        matryoshka_dimensions (`list[int]`): the nested sizes it was fit for, largest first.
        hidden_size (`int`): width of the residual MLP's hidden layers.
        num_layers (`int`): number of hidden layers of the residual MLP (0: no MLP, rotation only).
        rotation (`str`, *optional*): the orthogonal linear part applied first: `"pca"` (a rotation to the
            corpus's principal axes, fit once), `"learned"` (trained), or `None` (no rotation). An orthogonal map
            keeps every full-size similarity exactly.
        adapted_dimensions (`list[int]`): the sizes at which the adaptor is used. At any other size the input is
            returned unchanged, so that size is exactly plain truncation: the fit keeps a size here only when the
            adaptor beat plain truncation at it on held-out validation data.
        fit_summary (`dict`): what the adaptor was fit on and its validation figures at every size (for cards).
        candidates (`dict`, *optional*): a per-size choice among several maps, `{name: {"rotation", "hidden_size",
            "num_layers"}}`: the fit tried these on one split and kept, at each size, the one that validated best.
            The top-level rotation / hidden_size / num_layers then describe no map (`None` / 0 layers). `None`
            (default, and every adaptor saved before the per-size choice): one map, the top-level fields, at every
            adapted size.
        chosen (`dict`, *optional*): with `candidates`, `{str(size): name}` for every adapted size.
    """

    embedding_size: int
    matryoshka_dimensions: list
    hidden_size: int = 512
    num_layers: int = 1
    rotation: str = None
    adapted_dimensions: list = None
    fit_summary: dict = field(default_factory=dict)
    model_type: str = "matryoshka_adaptor"
    candidates: dict = None
    chosen: dict = None

    def __post_init__(self):
        def positive_int(name, value):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer.")

        positive_int("embedding_size", self.embedding_size)
        positive_int("hidden_size", self.hidden_size)
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 0:
            raise ValueError(f"num_layers={self.num_layers!r} must be a non-negative integer (1 or 2 is usual).")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation={self.rotation!r} is not one of {list(ROTATIONS)}.")
        dims = list(self.matryoshka_dimensions or [])
        if not dims:
            raise ValueError("matryoshka_dimensions is empty; give the nested sizes, e.g. [384, 256, 128, 64].")
        for dim in dims:
            positive_int("matryoshka_dimensions entry", dim)
            if dim > self.embedding_size:
                raise ValueError(
                    f"matryoshka_dimensions holds {dim}, larger than embedding_size {self.embedding_size}."
                )
        self.matryoshka_dimensions = sorted(set(dims), reverse=True)
        adapted = self.matryoshka_dimensions if self.adapted_dimensions is None else list(self.adapted_dimensions)
        unknown = [d for d in adapted if d not in self.matryoshka_dimensions]
        if unknown:
            raise ValueError(
                f"adapted_dimensions {unknown} are not among matryoshka_dimensions {self.matryoshka_dimensions}."
            )
        self.adapted_dimensions = sorted(set(adapted), reverse=True)
        self.check_choice()

    def check_choice(self):
        """`candidates` and `chosen` agree with each other and with `adapted_dimensions`, or a clear error."""
        if self.candidates is None:
            if self.chosen:
                raise ValueError(f"chosen={self.chosen!r} needs `candidates` (the maps it names).")
            return
        if not isinstance(self.candidates, dict) or not self.candidates:
            raise ValueError(f"candidates={self.candidates!r} must be a non-empty dict {{name: map settings}}.")
        for name, spec in self.candidates.items():
            if not isinstance(spec, dict) or set(spec) != {"rotation", "hidden_size", "num_layers"}:
                raise ValueError(f"candidates[{name!r}]={spec!r} must hold exactly rotation, hidden_size, num_layers.")
        chosen = {str(k): v for k, v in (self.chosen or {}).items()}
        unknown = sorted(set(chosen.values()) - set(self.candidates))
        if unknown:
            raise ValueError(f"chosen names {unknown}, which are not among candidates {sorted(self.candidates)}.")
        adapted = {str(d) for d in self.adapted_dimensions}
        if set(chosen) != adapted:
            raise ValueError(f"chosen covers sizes {sorted(chosen, key=int)} but adapted_dimensions are "
                             f"{self.adapted_dimensions}; name one candidate for every adapted size.")
        self.chosen = dict(sorted(chosen.items(), key=lambda item: -int(item[0])))

    def candidate_config(self, name):
        """The config of candidate `name` alone: one map, adapted at the sizes chosen for it."""
        spec = self.candidates[name]
        return MatryoshkaAdaptorConfig(self.embedding_size, self.matryoshka_dimensions, spec["hidden_size"],
                                       spec["num_layers"], spec["rotation"],
                                       [int(d) for d, n in self.chosen.items() if n == name])

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def save(self, directory):
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory):
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no adaptor config (a saved MatryoshkaAdaptor folder holds {CONFIG_NAME})."
            )
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
