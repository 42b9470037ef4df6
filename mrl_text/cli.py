"""`mrl-text`: thin commands over mrl_text.evaluation and mrl_text.cards.card."""

import shlex
import sys
from pathlib import Path

GENERIC_STEMS = {"test", "dev", "validation", "valid", "train", "eval", "data"}
REPORT_FILES = ("results.json", "results.md", "results.png")
BUDGET_REPORT_FILE = "results_budget.png"  # a grid run (--precisions / --layers): quality against bytes and time


def _task_name(path, taken):
    """`stsb/test.tsv` -> "stsb"; `scifact/` -> "scifact"; made unique among `taken`."""
    path = Path(path)
    name = path.name if path.is_dir() else path.stem
    if name.lower() in GENERIC_STEMS and path.resolve().parent.name:
        name = path.resolve().parent.name
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}_{n}", n + 1
    taken.add(unique)
    return unique


def build_evaluators(args):
    """Read every data file first, so a bad file fails before any model is loaded."""
    from .data import load_beir, load_classification, load_sts
    from .evaluation import ClassificationEvaluator, RetrievalEvaluator, STSEvaluator

    evaluators, taken = [], set()
    for path in args.sts or []:
        evaluators.append(STSEvaluator(*load_sts(path), name=_task_name(path, taken)))
    for directory in args.retrieval or []:
        corpus, queries, qrels = load_beir(directory, split=args.split)
        evaluators.append(RetrievalEvaluator(corpus, queries, qrels, name=_task_name(directory, taken)))
    for train_path, test_path in args.classification or []:
        train = load_classification(train_path, args.text_column, args.label_column)
        test = load_classification(test_path, args.text_column, args.label_column)
        evaluators.append(ClassificationEvaluator(*train, *test, name=_task_name(test_path, taken), knn=args.knn))
    if not evaluators:
        raise ValueError(
            "Nothing to evaluate: pass at least one of --sts FILE, --retrieval DIR, --classification TRAIN TEST."
        )
    return evaluators


def grid_model(args, options):
    """The model under test for a grid run: its embedder, holding the loaded MatryoshkaModel as `matryoshka` (what
    `evaluate_grid` runs at fewer layers and reads calibrated int8 ranges from), named as for a plain run."""
    from .evaluation import as_embedder
    from .evaluation.embedders import load_model, local_folder
    from .models.configuration_matryoshka import portable_name
    from .models.modeling_matryoshka import MatryoshkaModel

    loaded = load_model(args.model, args.device)
    embedder = as_embedder(loaded, args.dims, **options)
    embedder.name, embedder.source = portable_name(args.model), local_folder(args.model)
    if isinstance(loaded, MatryoshkaModel):
        embedder.matryoshka = loaded
    elif args.layers:
        raise ValueError(
            f"--layers needs a Matryoshka model folder (its encode runs the first layers only); "
            f"{args.model} is a {type(loaded).__name__}. Drop --layers to score its sizes and precisions."
        )
    return embedder


def checked_precisions(groups, default=()):
    """The names of repeated `--precisions LIST` flags, in order without repeats (`default` when none was given),
    each checked before any model is loaded."""
    from .models.quantization import check_precision

    precisions = list(dict.fromkeys(p for group in groups or [default] for p in group))
    for precision in precisions:
        check_precision(precision)
    return precisions


def run_evaluate(args):
    from .evaluation import Results, as_embedder, evaluate, evaluate_grid
    from .evaluation.embedders import name_apart
    from .file_utils import write_atomic

    check_report_folder(Path(args.out), args.overwrite)  # before any file is read or text encoded
    precisions = checked_precisions(args.precisions, default=["float32"])
    evaluators = build_evaluators(args)
    options = dict(batch_size=args.batch_size, max_length=args.max_length, device=args.device, show_progress_bar=True)
    grid = args.precisions is not None or args.layers is not None
    if grid:
        grid_options = dict(precisions=precisions, rescore=args.rescore or None)
    model = grid_model(args, options) if grid else as_embedder(args.model, args.dims, **options)
    embedders = [model]
    if args.max_length is None:  # the model's length (its saved max_seq_length, else the default) for every baseline
        options["max_length"] = model.max_length
    for baseline in args.baseline or []:
        embedder = as_embedder(baseline, **options)
        # Baselines are scored at the sizes of the model under test that they have, plus their own full size.
        dims = args.dims or model.dims
        embedders.append(embedder.with_dims([d for d in dims if d <= embedder.full_dim] + [embedder.full_dim]))
    name_apart(embedders)  # result rows are keyed by model name: two folders named alike must not share rows
    results = []
    for embedder in embedders:
        print(
            f"mrl-text: evaluating {embedder.name} at sizes {embedder.dims}, {embedder.max_length} tokens",
            file=sys.stderr,
        )
        if not grid:
            results.append(evaluate(embedder, evaluators))
        else:  # baselines at full depth: --layers are the model's
            layers = [None, *args.layers] if embedder is model and args.layers else None  # rows: full depth
            results.append(evaluate_grid(embedder, evaluators, layers=layers, **grid_options))
    results = Results.concat(results)
    # Everything is computed before anything is written: a failed run leaves no report that looks complete.
    command = "mrl-text " + " ".join(shlex.quote(portable_argument(a)) for a in args.argv)
    markdown = f"# Evaluation at every size\n\nCommand: `{command}`\n\nValues x100.\n\n{results.to_markdown()}"
    plot = results.plot()
    budget_plot = results.plot_budget(model=model.name) if grid else None
    out = Path(args.out)
    results.to_json(out / "results.json")
    write_atomic(out / "results.md", markdown)
    write_atomic(out / "results.png", plot)
    files = list(REPORT_FILES)
    if budget_plot is not None:
        write_atomic(out / BUDGET_REPORT_FILE, budget_plot)
        files.append(BUDGET_REPORT_FILE)
    print(results.to_markdown())
    print(f"mrl-text: wrote {', '.join(str(out / name) for name in files)}", file=sys.stderr)
    return results


def run_mteb(args):
    """MTEB tasks at every size: MTEB's JSON per task and size under OUT/mteb/, and the table, JSON and plot."""
    check_report_folder(Path(args.out), args.overwrite)  # before any task is loaded or text encoded
    from .evaluation.mteb import evaluate_mteb, resolve_tasks
    from .file_utils import write_atomic

    tasks = resolve_tasks(args.tasks)  # unknown names and unsupported task types fail before the model loads
    out = Path(args.out)
    report = evaluate_mteb(args.model, tasks, dims=args.dims, output_folder=out / "mteb", batch_size=args.batch_size,
                           max_length=args.max_length, device=args.device, show_progress_bar=True)
    command = "mrl-text " + " ".join(shlex.quote(portable_argument(a)) for a in args.argv)
    report.save(out)
    write_atomic(out / "results.md", f"# MTEB at every size\n\nCommand: `{command}`\n\nMain scores x100.\n\n"
                                     f"{report.to_markdown()}")
    print(report.to_markdown())
    written = ", ".join(str(out / name) for name in REPORT_FILES)
    print(f"mrl-text: wrote {written} and MTEB's JSON under {out / 'mteb'}", file=sys.stderr)
    return report


def portable_argument(argument):
    """A command-line argument as a report may record it: an absolute path of this machine becomes relative to the
    working directory when it lies inside it, else the model's or file's name (`portable_name`), in `--opt=PATH`
    too."""
    import os

    from .models.configuration_matryoshka import portable_name

    option, equals, value = argument.partition("=") if argument.startswith("--") else ("", "", argument)
    if not os.path.isabs(value):
        return argument
    relative = os.path.relpath(value)
    value = relative if not relative.startswith(os.pardir) else portable_name(value)
    return option + equals + value


def check_report_folder(out, overwrite):
    """Refuse an `--out` that is a file, or a non-empty folder without `--overwrite` (the report would replace or mix
    with what is there): checked before any work."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder path for the report.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--out {out} exists and is not empty; pass --overwrite to write the report into it (its "
            f"{', '.join(REPORT_FILES)} are replaced), or choose another folder."
        )


def run_card(args):
    """Write the card from the folder's card data (the training details saved with the model), merged with
    `--results`."""
    from .cards.card import CARD_FILENAME, write_card
    from .cards.card_data import CARD_DATA_FILENAME, MatryoshkaModelCardData, own_model_name
    from .evaluation import Results

    directory = Path(args.model)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory}: not a saved model folder (no config.json); pass the folder save_pretrained wrote."
        )
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    if not hasattr(config, "matryoshka_dimensions"):
        raise ValueError(f"{directory}/config.json: model_type {config.model_type!r} is not a Matryoshka model.")
    data = None if args.overwrite else MatryoshkaModelCardData.load(directory)
    if data is None and (directory / CARD_FILENAME).is_file() and not args.overwrite:
        raise ValueError(
            f"{directory / CARD_FILENAME} exists but {CARD_DATA_FILENAME} does not, so its contents cannot be merged; "
            "pass --overwrite to replace the card."
        )
    data = data or MatryoshkaModelCardData()
    if args.results:
        results = Results.from_json(args.results)
        names = [args.results_model] if args.results_model else [args.model_id, str(directory), data.model_name]
        # Only this model's rows become its results (strict: no fallback to another model in the file).
        data.add_results(results, own_model_name(results, [n for n in names if n], strict=True))
    card_path = write_card(
        directory, config, card_data=data, model_id=args.model_id, base_model=args.base_model,
        datasets=args.dataset or None, license=args.license,
    )
    print(f"mrl-text: wrote {card_path}", file=sys.stderr)
    return card_path


def run_export(args):
    from transformers import AutoModel

    from .deploy.export import check_apart, check_format, export_model

    # The cheap checks first: nothing is loaded or written for a format whose packages are missing, an unknown
    # precision, or an output folder that is (or holds, or lies in) the model folder.
    try:
        check_format(args.format)
    except ImportError as error:
        raise ValueError(str(error)) from None  # a usage error: one line, exit status 2
    precisions = checked_precisions(args.precisions)
    check_apart(args.model, args.out)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; pass a folder path to export into.")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it, or choose another one.")
    # AutoModel resolves the saved class (importing mrl_text registered ours), a dual encoder too: export then says
    # which formats it supports.
    model = AutoModel.from_pretrained(args.model)
    out = export_model(model, args.out, format=args.format, overwrite=args.overwrite, precisions=precisions)
    print(f"mrl-text: wrote {args.format} folder {out}", file=sys.stderr)
    return out


def run_adapt(args):
    """Fit a Matryoshka adaptor on a corpus (and pairs) with the model's own embeddings; save the adapted model."""
    from .adaptor.attach import add_adaptor, read_corpus, read_pairs
    from .deploy.export import check_apart, folder_id
    from .evaluation.embedders import load_model
    from .file_utils import staged_folder
    from .models.modeling_matryoshka import MatryoshkaModel
    from .models.sentence_transformers_matryoshka import from_sentence_transformer

    out = Path(args.out)
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not args.overwrite):
        raise FileExistsError(f"{out}: exists and is not an empty folder; pick another --out or pass --overwrite.")
    check_apart(args.model, out)
    # The files first: a bad file fails before any model is loaded.
    corpus = read_corpus(args.corpus, args.column)
    pairs = read_pairs(args.pairs) if args.pairs else None
    model = load_model(args.model, args.device)  # a Matryoshka folder, a plain encoder, or sentence-transformers
    if not isinstance(model, MatryoshkaModel):
        model = from_sentence_transformer(model)
    options = {key: getattr(args, key) for key in ("epochs", "supervised_epochs", "objective", "rotation")
               if getattr(args, key) is not None}
    options["rotation"] = None if args.rotation == "none" else args.rotation
    adaptor = add_adaptor(
        model, corpus, pairs, matryoshka_dimensions=args.dims, batch_size=args.batch_size, max_length=args.max_length,
        seed=args.seed, description=args.description or Path(args.corpus).name, **options,
    )
    # Written beside --out and renamed into place: a killed run leaves --out as it was (a staging folder it leaves is
    # removed by the next run), and the save hooks run again so the card names --out, not the staging folder.
    with staged_folder(out, kind="adapt") as staging:
        model.save_pretrained(staging)
        for hook in model.save_hooks:
            hook(model, staging, repo_id=folder_id(out))
    print(adapt_table(adaptor.config.fit_summary))
    print(
        f"mrl-text: wrote {out} (adaptor used at sizes {adaptor.config.adapted_dimensions or 'none'})", file=sys.stderr
    )
    return out


def adapt_table(fit_summary):
    """The gate's held-out metrics per size, truncation beside adaptor, under a header naming them, and the candidate
    map kept at each size (where none passed, the figures are the closest candidate's and the size keeps plain
    truncation)."""
    validation = fit_summary["validation"]
    # The first metric's name opens its description ("recall@10 of ...", "nDCG@10 of ..."); the others are keys.
    first = fit_summary["validation_metric"].split(" of ")[0]
    others = [key[: -len("_adaptor")] for key in next(iter(validation.values())) if key.endswith("_adaptor")]
    lines = [f"held-out validation (the gate keeps the adaptor where it wins): {fit_summary['validation_metric']}"]
    header = f"{'size':>6}  " + "  ".join(f"{m + ' trunc.':>18}  {m + ' adaptor':>18}" for m in [first, *others])
    lines.append(f"{header}  kept")
    for dim, scores in validation.items():
        cells = [(scores["truncation"], scores["adaptor"])]
        cells += [(scores[f"{m}_truncation"], scores[f"{m}_adaptor"]) for m in others]
        kept = scores.get("candidate") or "adaptor"  # adaptors fit before the per-size choice name no candidate
        used = f"{kept} adaptor" if scores["adapted"] else "plain truncation"
        lines.append(f"{dim:>6}  " + "  ".join(f"{t:>18.4f}  {a:>18.4f}" for t, a in cells) + f"  {used}")
    return "\n".join(lines)


def build_parser():
    """The `mrl-text` argument parser (it lives in the top-level `mrl_text_cli` module: see why there)."""
    import mrl_text_cli

    return mrl_text_cli.build_parser()


def main(argv=None):
    """`mrl-text ...` from Python: the same as the console command."""
    import mrl_text_cli

    return mrl_text_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
