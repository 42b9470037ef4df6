"""`mrl-text`: the command line's arguments, parsed before anything heavy is imported.

This module lives beside the `mrl_text` package, not inside it, on purpose: importing anything from `mrl_text` runs
the package's `__init__`, which registers the model classes with transformers' Auto classes and so imports torch,
transformers and sentence-transformers (seconds). `mrl-text --help`, a mistyped option and a missing argument are
answered from here in a fraction of a second; a command imports `mrl_text.cli`, where the commands live, only once
its arguments are good. The few library defaults the help shows are repeated here and checked equal to the
library's by tests/test_cli.py.
"""

import argparse
import sys

DEFAULT_BATCH_SIZE = 32  # mrl_text.evaluation.embedders.DEFAULT_BATCH_SIZE
DEFAULT_MAX_LENGTH = 256  # mrl_text.evaluation.embedders.DEFAULT_MAX_LENGTH
EXPORT_FORMATS = ("sentence-transformers", "onnx")  # mrl_text.deploy.export.EXPORT_FORMATS


def precision_list(value):
    """`--precisions float32,int8` (comma-separated; the flag repeats) -> names, checked by the command before any
    model is loaded (`mrl_text.models.quantization.check_precision`)."""
    return [p.strip() for p in value.split(",") if p.strip()]


EXAMPLES = """\
examples:
  # a Matryoshka model at all its sizes, against a baseline, on STS, retrieval (BEIR folder) and classification
  mrl-text evaluate out/ --sts stsb/test.tsv --retrieval scifact/ \\
      --classification banking77/train.tsv banking77/test.tsv \\
      --baseline sentence-transformers/all-MiniLM-L6-v2 --out report/

  # any plain encoder (mean pooling) or sentence-transformers model, truncated to the sizes you name
  mrl-text evaluate any-plain-encoder/ --sts stsb/test.tsv --dims 384 256 128 64 32 16 --out report/

  # every model reads at most --max-length tokens (default: the folder's saved max_seq_length, else 256), baselines
  # too: results compare on equal terms

  # the size x precision x depth grid: one encoding pass per layer count; int8 uses the model's calibrated ranges
  mrl-text evaluate out/ --sts stsb/test.tsv --retrieval scifact/ --precisions float32,int8,binary --layers 6 3 \
      --out report/

  # the model card (README.md with Hub metadata and per-size results) and plot, written into the model folder;
  # new results are merged into the card data saved with the model (loss, data, hyperparameters, its own results)
  mrl-text card out/ --results report/results.json

file formats:
  --sts             .tsv/.csv/.jsonl/.parquet with columns sentence1, sentence2, score
  --retrieval       BEIR folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv
                    (query-id, corpus-id, score)
  --classification  two tables (train, test) with columns text, label (see --text-column / --label-column)
"""

def add_adapt_command(commands):
    adapt = commands.add_parser(
        "adapt",
        help="fit a Matryoshka adaptor (frozen encoder) on a corpus and optional query/document pairs; save the model",
        description="Encode the corpus (and pairs) once with MODEL, fit a small residual map whose embedding prefixes "
        "keep the full embedding's structure (Yoon et al., 2024), keep plain truncation at sizes where it does not "
        "win on held-out data, and write a model folder (loads with from_pretrained and sentence-transformers).",
        epilog="example:\n  mrl-text adapt sentence-transformers/all-MiniLM-L6-v2 --corpus docs.txt --pairs train.tsv "
        "--out adapted/\n\nfiles:\n  --corpus  .txt (one text per line) or a .jsonl/.tsv/.csv/.parquet table "
        "(column --column)\n  --pairs   .tsv with query<TAB>document per line",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    adapt.add_argument(
        "model", help="Matryoshka model folder, plain transformers encoder, or sentence-transformers model"
    )
    adapt.add_argument(
        "--corpus", required=True, metavar="FILE", help="texts to fit on (e.g. the documents you index)"
    )
    adapt.add_argument("--column", default="text", help="text column of a table --corpus (default: %(default)s)")
    adapt.add_argument("--pairs", metavar="FILE", help="query<TAB>document pairs for the supervised objective")
    adapt.add_argument("--out", required=True, metavar="DIR", help="output model folder")
    adapt.add_argument("--dims", type=int, nargs="+",
                       help="sizes (default: the model's, or for a one-size encoder its size and 512, 256, ..., 16)")
    adapt.add_argument("--objective", choices=("unsupervised", "supervised", "both"),
                       help="default: both with --pairs, else unsupervised")
    adapt.add_argument("--rotation", choices=("auto", "pca", "learned", "none"), default="auto",
                       help="orthogonal part: auto (default: the MLP or a PCA rotation, whichever validates better), "
                            "pca, learned, or none (the MLP alone)")
    adapt.add_argument("--epochs", type=int, help="unsupervised epochs (default: the fit's)")
    adapt.add_argument("--supervised-epochs", type=int, help="supervised epochs (default: the fit's)")
    adapt.add_argument("--description", help="what the corpus is, for the model card (default: the file name)")
    adapt.add_argument("--seed", type=int, default=0)
    adapt.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="texts per forward pass")
    adapt.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, metavar="TOKENS", help="longest input")
    adapt.add_argument("--device", help="where to encode (default: cuda when available)")
    adapt.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    adapt.set_defaults(run="run_adapt")


def add_mteb_command(commands):
    mteb = commands.add_parser(
        "mteb",
        help="run MTEB tasks at every size (MTEB's tasks, metrics and JSON; each task's texts encoded once)",
        description="Run MTEB tasks on a model at every requested size through MTEB's own task definitions and "
        "metrics, encoding each task's texts once at full size and truncating per size. Writes MTEB's JSON per task "
        "and size under OUT/mteb/, and results.json (for `mrl-text card --results`), results.md and results.png. "
        'Needs: pip install "mrl-text[mteb]".',
        epilog="examples:\n  # online: registered MTEB tasks, data from the Hub\n"
        "  mrl-text mteb out/ --tasks STSBenchmark SciFact --dims 384 128 32 --out mteb-report/\n"
        "  # offline: a registered task's definition on local files (STS table or BEIR folder), or a new name\n"
        "  mrl-text mteb out/ --tasks STSBenchmark=stsb/test.tsv SciFact=scifact/ --out mteb-report/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mteb.add_argument(
        "model", help="Matryoshka model folder/hub id, plain transformers encoder, or sentence-transformers model"
    )
    mteb.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                      help="MTEB task names (loaded from the Hub), or NAME=PATH to build the task from a local STS "
                      "table (sentence1, sentence2, score) or BEIR folder")
    mteb.add_argument("--dims", type=int, nargs="+", help="sizes (default: the model's matryoshka_dimensions)")
    mteb.add_argument("--out", required=True, metavar="DIR", help="report folder")
    mteb.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="texts per forward pass (default: %(default)s)"
    )
    mteb.add_argument("--max-length", type=int, metavar="TOKENS",
                      help=f"longest tokenized input (default: the model folder's saved max_seq_length, else "
                      f"{DEFAULT_MAX_LENGTH})")
    mteb.add_argument("--device", help="e.g. cuda, cpu (default: cuda when available)")
    mteb.add_argument("--overwrite", action="store_true",
                      help="write the report into a non-empty --out folder (its results files are replaced)")
    mteb.set_defaults(run="run_mteb")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mrl-text",
        description="Matryoshka embeddings: evaluate every embedding size, write model cards.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{evaluate,card,export,adapt,mteb}")

    ev = commands.add_parser(
        "evaluate",
        help="score a model (and baselines) at every size; write results.json, results.md, results.png",
        description="Encode each text once at full size and score every size from the prefixes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument(
        "model", help="Matryoshka model folder/hub id, plain transformers encoder, or sentence-transformers model"
    )
    ev.add_argument(
        "--sts", action="append", metavar="FILE", help="STS table (sentence1, sentence2, score); repeatable"
    )
    ev.add_argument("--retrieval", action="append", metavar="DIR", help="BEIR folder; repeatable")
    ev.add_argument("--classification", action="append", nargs=2, metavar=("TRAIN", "TEST"),
                    help="train and test tables (text, label); repeatable")
    ev.add_argument("--baseline", action="append", metavar="MODEL", help="a model to compare with; repeatable")
    ev.add_argument("--dims", type=int, nargs="+", help="sizes to score (default: the model's matryoshka_dimensions)")
    ev.add_argument("--out", required=True, metavar="DIR", help="report folder")
    ev.add_argument("--split", default="test", help="qrels split of the BEIR folders (default: test)")
    ev.add_argument("--knn", action="store_true", help="also report k-nearest-neighbour accuracy for classification")
    ev.add_argument("--text-column", default="text")
    ev.add_argument("--label-column", default="label")
    ev.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="texts per forward pass (default: %(default)s)"
    )
    ev.add_argument(
        "--max-length", type=int, metavar="TOKENS",
        help="longest tokenized input, the same for the model and every baseline (default: the model folder's saved "
        f"max_seq_length, the length its card's numbers were computed at; else {DEFAULT_MAX_LENGTH}: "
        "sentence-transformers' own limit for most of its models, longer than any STS pair or intent, and most "
        "of a BEIR abstract at a quarter of the attention cost of 512)",
    )
    ev.add_argument("--device", help="e.g. cuda, cpu (default: cuda when available)")
    ev.add_argument("--precisions", type=precision_list, action="append", metavar="LIST",
                    help="score every size at these precisions too, e.g. float32,int8,binary (any of float32, int8, "
                    "uint8, binary, ubinary): int8 with the model's calibrated ranges, else ranges measured on each "
                    "task; writes the grid and results_budget.png")
    ev.add_argument("--layers", type=int, nargs="+", metavar="K",
                    help="also score the model at these encoder depths (2D Matryoshka: only the first K layers run), "
                    "one encoding pass each; implies the grid")
    ev.add_argument("--rescore", type=int, default=100, metavar="K",
                    help="retrieval grid: also re-rank the top K of each quantized search in float (0: off; default "
                    "%(default)s)")
    ev.add_argument("--overwrite", action="store_true",
                    help="write the report into a non-empty --out folder (its results.* files are replaced)")
    ev.set_defaults(run="run_evaluate")

    card = commands.add_parser(
        "card",
        help="write README.md (model card with Hub metadata and results) and the results plot into a model folder, "
             "merging with the card data already there",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    card.add_argument("model", help="the saved Matryoshka model folder")
    card.add_argument("--results", metavar="FILE", help="results.json written by `mrl-text evaluate`")
    card.add_argument("--model-id", help="Hub id for the usage snippets (default: the folder)")
    card.add_argument("--base-model", help="Hub id of the encoder it was trained from")
    card.add_argument("--dataset", action="append", help="training dataset Hub id; repeatable")
    card.add_argument("--results-model", metavar="NAME",
                      help="the model name of this model's rows in --results (default: the folder as evaluated)")
    card.add_argument("--license", help="license id (default: the card data's, else apache-2.0)")
    card.add_argument("--overwrite", action="store_true",
                      help="start a new card instead of merging into the folder's card data (training details)")
    card.set_defaults(run="run_card")

    export = commands.add_parser(
        "export",
        help="write a standard folder of the encoder's own type that serving engines load without remote code",
        description="Encoder weights and config (with is_matryoshka, matryoshka_dimensions), tokenizer, "
        "sentence-transformers files of built-in modules, model card; --format onnx adds onnx/model.onnx.",
    )
    export.add_argument("model", help="saved Matryoshka model folder or hub id")
    export.add_argument("out", help="output folder (must be empty or absent unless --overwrite)")
    export.add_argument("--format", default="sentence-transformers", choices=EXPORT_FORMATS)
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    export.add_argument("--precisions", type=precision_list, action="append", metavar="LIST",
                        help="precisions the exported folder must serve, e.g. int8,binary: refused before anything is "
                        "written when int8/uint8 lack ranges in the model's config (calibrate_quantization, or "
                        "training with QuantizationAwareLoss, saves them)")
    export.set_defaults(run="run_export")
    add_adapt_command(commands)
    add_mteb_command(commands)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from mrl_text import cli  # the commands: imports torch and transformers, now that the arguments are good

    try:
        getattr(cli, args.run)(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ConnectionError, ImportError) as error:
        parser.exit(2, f"mrl-text {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
