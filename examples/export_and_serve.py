"""Export a Matryoshka model at a chosen size, then load it the way a server does: no mrl-text, no remote code.

`mrl_text.export_model` writes a standard folder (a BERT stays a BERT) with `truncate_dim` set to your size and
`matryoshka_dimensions` in config.json, plus the sentence-transformers files, so plain `SentenceTransformer(folder)`
returns embeddings of that size. With the `export` extra (`pip install 'mrl-text[export]'`) it adds `onnx/model.onnx`,
which this script then runs with onnxruntime (pooling, truncation and normalization written out below, as a server
would). vLLM and Text Embeddings Inference read the same folder (`dimensions=` in their embedding requests).

    python examples/export_and_serve.py                          # offline: all-MiniLM-L6-v2, exported at 128 dims
    python examples/export_and_serve.py --model outputs/matryoshka-pairs --dim 64 --output-dir outputs/exported-64
    python examples/export_and_serve.py --model my-name/my-matryoshka-model --format sentence-transformers

--model is a Matryoshka model (a folder written by train_matryoshka_pairs.py, or a Hub id). The default wraps
all-MiniLM-L6-v2 as it is: its prefixes were not trained, so export a model you trained for good small sizes.
"""

import argparse
import importlib.util
from pathlib import Path

import numpy as np
from offline_defaults import load_matryoshka_model  # examples/offline_defaults.py
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

import mrl_text

TEXTS = ["How do I reset my password?", "The weather is lovely today.", "A man is playing a guitar."]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Matryoshka model folder or Hub id (default: all-MiniLM-L6-v2, offline)")
    parser.add_argument("--dim", type=int, default=128, help="the size the export returns (default: %(default)s)")
    parser.add_argument("--format", choices=("auto", "sentence-transformers", "onnx"), default="auto",
                        help="auto (default): onnx where onnx and onnxruntime are installed, else "
                        "sentence-transformers")
    parser.add_argument("--output-dir", default="outputs/exported-model")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    parser.add_argument("--texts", nargs="+", default=TEXTS, help="texts to encode with the exported folder")
    return parser.parse_args(argv)


def unit_rows(matrix):
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def onnx_embeddings(folder, texts, pooling, dim):
    """What a server runs on the exported ONNX graph: tokenize, token states, pool, keep `dim`, re-normalize."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(Path(folder) / "onnx" / "model.onnx"))
    tokens = AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True, return_tensors="np")
    inputs = {node.name: tokens[node.name].astype(np.int64) for node in session.get_inputs()}
    states = session.run(None, inputs)[0]  # (texts, tokens, hidden)
    mask = tokens["attention_mask"][..., None].astype(states.dtype)
    pooled = (states * mask).sum(1) / mask.sum(1) if pooling == "mean" else states[:, 0]  # mean or CLS pooling
    return unit_rows(pooled[:, :dim])


def main(argv=None):
    args = parse_args(argv)
    onnx_installed = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))
    export_format = ("onnx" if onnx_installed else "sentence-transformers") if args.format == "auto" else args.format

    # 1. The model, and the size the exported folder returns by default.
    model = load_matryoshka_model(args.model)
    dims = model.config.matryoshka_dimensions
    if args.dim not in dims:
        raise SystemExit(f"--dim {args.dim} is not a size the model was trained at; choose one of {dims}.")
    model.config.truncate_dim = args.dim
    reference = unit_rows(model.encode(args.texts, dim=args.dim, convert_to_numpy=True))

    # 2. Export: weights of the encoder's own type, config with the sizes, tokenizer, sentence-transformers files.
    folder = mrl_text.export_model(model, args.output_dir, format=export_format, overwrite=args.overwrite)
    print(f"Exported ({export_format}) to {folder}: {sorted(p.name for p in folder.iterdir())}")

    # 3. Serve with plain sentence-transformers: truncate_dim comes from the folder. It slices the unit-length
    # embedding, so the prefix is re-normalized here (normalize_embeddings=True) before cosine similarities.
    served = SentenceTransformer(str(folder), device="cpu")
    embeddings = served.encode(args.texts, normalize_embeddings=True)
    print(f"sentence-transformers: embeddings {embeddings.shape}, largest difference from mrl-text's "
          f"encode(dim={args.dim}): {np.abs(embeddings - reference).max():.2e}")

    # 4. Serve the ONNX graph with onnxruntime (the graph gives token states; pooling follows the model's config).
    if export_format != "onnx":
        print("ONNX: not exported (pip install 'mrl-text[export]' for --format onnx)")
    elif model.config.projection_dim or model.config.pooling not in ("mean", "cls"):
        print("ONNX: this example pools mean or CLS token states without a projection; load the folder with "
              "sentence-transformers instead")
    else:
        embeddings = onnx_embeddings(folder, args.texts, model.config.pooling, args.dim)
        print(f"onnxruntime: embeddings {embeddings.shape}, largest difference from mrl-text's encode(dim={args.dim}):"
              f" {np.abs(embeddings - reference).max():.2e}")
    similarity = embeddings @ embeddings.T
    print(f"cosine similarity of the first two texts at {args.dim} dims: {similarity[0, 1]:.3f}")


if __name__ == "__main__":
    main()
