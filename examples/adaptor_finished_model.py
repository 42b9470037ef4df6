"""Make a finished embedding model Matryoshka without retraining it: fit an adaptor on your corpus.

The encoder stays frozen. Every text is embedded once, then a small map after pooling (Yoon et al., 2024) learns to
make each prefix of the embedding keep the neighbours the full embedding finds. A validation gate keeps plain
truncation at every size where the adaptor does not beat it on held-out texts; the table printed at the end shows
both, per size. The saved folder loads like any Matryoshka model and encodes at every size.

    python examples/adaptor_finished_model.py                  # offline: all-MiniLM-L6-v2 on chatterbot-corpus texts
    python examples/adaptor_finished_model.py --model BAAI/bge-small-en-v1.5 --corpus docs.jsonl --column text
    python examples/adaptor_finished_model.py --corpus docs.txt --pairs train_pairs.tsv --output-dir outputs/adapted

Your corpus: a .txt file with one text per line, or a .jsonl/.tsv/.csv/.parquet table (its --column). Pairs
(optional, for a supervised fit too): a .tsv with query<TAB>relevant document per line.
"""

import argparse

from offline_defaults import chatterbot_pairs, load_matryoshka_model  # examples/offline_defaults.py
from transformers import AutoModel

import mrl_text
from mrl_text.adaptor import read_corpus, read_pairs
from mrl_text.cli import adapt_table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the finished model: a sentence-transformers model, a plain encoder or a "
                        "Matryoshka model, Hub id or folder (default: all-MiniLM-L6-v2, offline)")
    parser.add_argument("--corpus", help="texts like the ones you will embed (default: chatterbot-corpus's texts)")
    parser.add_argument("--column", default="text", help="text column of a table --corpus (default: %(default)s)")
    parser.add_argument("--pairs", help="query<TAB>document .tsv for the supervised objective (optional)")
    parser.add_argument("--dims", type=int, nargs="+", help="sizes to adapt, largest first (default: the model's "
                        "size and each power of two below it down to 16)")
    parser.add_argument("--epochs", type=int, help="unsupervised epochs (default: the library's)")
    parser.add_argument("--supervised-epochs", type=int, help="supervised epochs, with --pairs (default: the "
                        "library's)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder pass")
    parser.add_argument("--max-seq-length", type=int, help="tokens per text (default: the model's)")
    parser.add_argument("--output-dir", default="outputs/adapted-model")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    # 1. The corpus (and pairs): your files, or the questions and answers of chatterbot-corpus.
    if args.corpus:
        corpus = read_corpus(args.corpus, args.column)
        description = args.corpus
    else:
        rows = chatterbot_pairs()
        corpus, description = list(rows["anchor"]) + list(rows["positive"]), "chatterbot-corpus questions and answers"
    pairs = read_pairs(args.pairs) if args.pairs else None
    print(f"{len(corpus)} texts{f' and {len(pairs)} pairs' if pairs else ''} to fit on")

    # 2. The finished model, as a MatryoshkaModel (same weights, same embeddings).
    model = load_matryoshka_model(args.model)

    # 3. Fit and attach the adaptor: one encoding pass over the corpus, then a fit on the frozen embeddings.
    epochs = {"epochs": args.epochs, "supervised_epochs": args.supervised_epochs}
    fit_options = {key: value for key, value in epochs.items() if value is not None}  # else the library's defaults
    adaptor = mrl_text.add_adaptor(model, corpus, pairs, matryoshka_dimensions=args.dims, batch_size=args.batch_size,
                                   max_length=args.max_seq_length, description=description, **fit_options)

    # 4. Per size: plain truncation of the original embedding against the adaptor, on held-out texts.
    print()
    print(adapt_table(adaptor.config.fit_summary))  # the figures: adaptor.config.fit_summary["validation"]
    print(f"adaptor used at sizes {adaptor.config.adapted_dimensions or 'none'} (plain truncation elsewhere)")

    # 5. Save (weights, adaptor, tokenizer, card) and load it back as a user would.
    model.save_pretrained(args.output_dir)
    loaded = AutoModel.from_pretrained(args.output_dir)
    smallest = loaded.config.matryoshka_dimensions[-1]
    embedding = loaded.encode(corpus[0], dim=smallest)
    print(f"\nSaved to {args.output_dir}; reloaded, encode(text, dim={smallest}) gives {tuple(embedding.shape)}")


if __name__ == "__main__":
    main()
