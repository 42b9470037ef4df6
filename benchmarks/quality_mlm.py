"""The `mlm` regime of the quality suite (`python benchmarks/quality.py mlm`): the paper's BERT setting, scaled down.

A small BERT is pretrained from scratch with masked language modelling (recipes/pretrain_mlm.py's model and
collator, all-MiniLM-L6-v2's tokenizer, sentences of the development data without STS-B and SciFact):

- `mrl`: `MatryoshkaForMaskedLM`, MLM from every prefix size, weight --mrl-full-weight on the full size and 1 on the
  others, those rising linearly from 0 over the first --smaller-sizes-warmup-fraction of the steps (defaults: the
  recipe chosen on the validation split, results/quality_mlm_validation.md); `mrl_paper`: every weight 1 from the
  first step; `mrl_w<W>` / `mrl_w<W>_ramp<P>`: full-size weight W, smaller sizes ramped over P% (the study's variants);
- `plain`: the same model with the full-size MLM loss only (BERT as usual); its prefixes are scored below;
- `ffD`: FF-d, pretrained at d alone: the MLM head reads the first d coordinates and only that loss trains (a
  learned linear map to d feeding the head); FF at the full size is `plain`.

Every method sees the same masked batches (masked once with a fixed seed) and the same number of steps, from the same
initial encoder; `--seeds N` repeats everything with seeds 0..N-1 (each seed its own initial weights, training masks
and batch order; the sentences, the tokenizer and the held-out masks are shared), in parallel with `--workers`. Then
every model's heads are refit with the encoder frozen (`--refit-steps`, all sizes): the plain model gets heads for
its prefixes this way (the non-MRL baseline), and the others the same extra steps. MLM
accuracy on held-out sentences (the same masked tokens for all) at every size. Last, the `mrl` and `plain`
encoders are fine-tuned as embedding models (MatryoshkaLoss/InfoNCE on SNLI triplets, the suite's trainer;
--finetune-lrs compares learning rates) and scored at every size on STS-B, SciFact and the Banking77 probe: the first
regime whose starting encoder never saw contrastive data. `--eval-split val` scores only validation data (MLM on a
second held-out slice; STS-B dev and a held-out slice of Banking77 train) for choosing a recipe. Pretrained encoders
are kept under --out and reused by any later run with the same pretraining settings (a study, then the test run).
"""

import argparse
import copy
import hashlib
import json
import math
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

import _quality_common as common  # before pretrain_mlm: its _report puts recipes/ on sys.path
import pretrain_mlm as recipe

CORPUS_SOURCES = ["snli", "flickr8k_captions", "mrpc", "emotion", "banking77", "trec"]  # STS-B, SciFact unseen
SIZES = [96, 48, 24, 12]  # the paper's BERT nesting (12 ... 768), the first four
REGIMES = ("mlm",)


def add_parsers(commands):
    sub = commands.add_parser("mlm", help="MLM pretraining from scratch: MRL vs FF-d vs plain prefixes")
    common.add_common_arguments(sub, "mlm", report_name="mlm")
    sub.set_defaults(sizes=",".join(map(str, SIZES)), max_seq_length=32, batch_size=32, limit_train=None,
                     limit_eval=2000)
    sub.add_argument("--methods", default=None, help="default: mrl, plain and ff<d> for every size below full")
    # chosen on the validation slice (quality_mlm_validation.md, 1500 steps): weight 4 + the smaller sizes ramped in
    # over all steps was within 0.5 of plain BERT at full size, where equal weights from the first step lost 3.9
    sub.add_argument("--mrl-full-weight", type=float, default=4.0, help="`mrl`: the full size's MLM loss weight")
    sub.add_argument("--smaller-sizes-warmup-fraction", type=float, default=1.0,
                     help="`mrl`: the smaller sizes' weights rise linearly from 0 over this share of the steps")
    sub.add_argument("--eval-split", choices=("val", "test"), default="test",
                     help="val (to choose a recipe): MLM on a second held-out slice, the fine-tuned encoders on STS-B "
                          "dev and a held-out slice of Banking77 train; test: the test sentences and test splits")
    sub.add_argument("--layers", type=int, default=2)
    sub.add_argument("--heads", type=int, default=3, help="attention heads")
    sub.add_argument("--steps", type=int, default=800, help="pretraining steps (batches of --batch-size)")
    sub.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="learn a WordPiece vocabulary of this size from all-MiniLM-L6-v2's tokenizer (0: keep its 30,522)",
    )
    # 2e-3 with 40% masking: 13.0% held-out MLM accuracy after 300 steps against 9.8% with 1e-3 and 15% (plain
    # model, one seed; more masked tokens per step are more to learn from in a CPU budget)
    sub.add_argument("--mlm-lr", type=float, default=2e-3)
    sub.add_argument("--mlm-probability", type=float, default=0.4,
                     help="fraction of the training tokens masked (held-out accuracy is always on 15%% masked)")
    sub.add_argument("--refit-steps", type=int, default=60, help="head-only steps (encoder frozen) for every model")
    sub.add_argument("--refit-lr", type=float, default=3e-3)
    sub.add_argument("--finetune-rows", type=int, default=4000, help="SNLI triplets for the embedding fine-tuning")
    # a from-scratch encoder needs a pretraining-like rate: at 3e-4, 62 steps left InfoNCE at its chance loss; at 2e-3
    # the loss fell from 4.2 to 2.9 and STS-B rose from 27 to 50 (diagnosis on a 300-step plain encoder)
    sub.add_argument("--lr", type=float, default=2e-3, help="embedding fine-tuning learning rate")
    sub.add_argument("--epochs", type=int, default=1, help="embedding fine-tuning epochs")
    sub.add_argument("--finetune-warmup-fraction", type=float, default=1.0,
                     help="embedding fine-tuning: the smaller sizes' weights rise linearly from 0 over this share of "
                          "its steps (0: every size weighted 1 from the first step)")
    sub.add_argument("--finetune-lrs", default=None,
                     help="comma-separated fine-tuning learning rates to compare side by side (default: --lr alone)")
    sub.add_argument("--no-finetune", action="store_true")
    sub.add_argument("--tasks", default="stsb,scifact,banking77", help="scored after fine-tuning")
    sub.add_argument("--probe-train", type=int, default=4000, help="Banking77 probe training texts (subsampled)")


def learnt_tokenizer(args, tokenizer, train):
    """`tokenizer`'s pipeline with a --vocab-size vocabulary learnt on the training sentences, kept under --out and
    reused by later runs on the same sentences: the WordPiece trainer breaks frequency ties in a per-process order
    (two processes on the same texts gave the same 4,096 tokens with 102 ids swapped), so a reused pretrained encoder
    needs the very tokenizer it was trained with."""
    from transformers import AutoTokenizer

    key = hashlib.sha1(json.dumps([train, args.vocab_size, tokenizer.name_or_path]).encode()).hexdigest()[:12]
    kept = Path(args.out) / "tokenizers" / key
    if kept.is_dir():
        return AutoTokenizer.from_pretrained(kept)
    tokenizer = recipe.retrain_tokenizer(tokenizer, train, args.vocab_size)
    tokenizer.save_pretrained(kept)
    return tokenizer


def corpus_sentences(args, tokenizer):
    """(all sentences, training sentences, held-out sentences, tokenizer): the same for every seed; the tokenizer is
    the learnt (or kept) one when --vocab-size is set."""
    texts, _ = recipe.load_text_corpus(Path(args.data), CORPUS_SOURCES)
    rng = random.Random(0)
    rng.shuffle(texts)
    # test, then validation, then training sentences: a recipe chosen on val never saw the test sentences
    test, val, train = (
        texts[: args.limit_eval],
        texts[args.limit_eval : 2 * args.limit_eval],
        texts[2 * args.limit_eval :],
    )
    held_out = val if args.eval_split == "val" else test
    train = train[: args.limit_train or args.steps * args.batch_size]  # default: every step a new batch
    if args.vocab_size:
        tokenizer = learnt_tokenizer(args, tokenizer, train)
    return texts, train, held_out, tokenizer


def corpus_batches(args, tokenizer, seed=0):
    """(tokenizer, training batches, held-out batches, description): masked once, shared by every method of a seed.
    The sentences, the tokenizer and the held-out masks are the same for every seed; the training masks and (for
    seeds above 0) the batch order are the seed's. The description ends with the seed's most-frequent-token
    baseline."""
    from datasets import Dataset

    texts, train, held_out, tokenizer = corpus_sentences(args, tokenizer)
    tokens = {name: recipe.tokenize(Dataset.from_dict({"text": rows}), "text", tokenizer, args.max_seq_length)
              for name, rows in (("train", train), ("held_out", held_out))}
    batches = recipe.masked_batches(tokens["train"], tokenizer, args.mlm_probability, args.batch_size, seed=1 + seed)
    if seed:
        random.Random(seed).shuffle(batches)
    batches = [batches[i % len(batches)] for i in range(args.steps)]
    description = (
        f"{len(train)} training sentences (of {len(texts)}: {', '.join(CORPUS_SOURCES)}), {len(held_out)} held out "
        f"({args.eval_split}); {args.steps} steps of {args.batch_size} x <= {args.max_seq_length} tokens, "
        f"{args.mlm_probability:.0%} masked (held out: 15%)"
    )
    description += (
        f"; a {len(tokenizer)}-token WordPiece vocabulary learnt on the training sentences" if args.vocab_size else ""
    )
    held_out_batches = recipe.masked_batches(tokens["held_out"], tokenizer, 0.15, 128, seed=2)
    description += f"; most-frequent-token baseline {unigram_accuracy(batches, held_out_batches):.2f}% MLM accuracy"
    return tokenizer, batches, held_out_batches, description


def unigram_accuracy(train_batches, held_out):
    """% of the held-out masked tokens that are the training batches' most frequent masked token: the accuracy of a
    model that ignores the context (the plateau a BERT from scratch sits on before it learns to use it)."""
    train_labels = torch.cat([b["labels"][b["labels"] != -100] for b in train_batches])
    frequent = torch.bincount(train_labels).argmax()
    held_labels = torch.cat([b["labels"][b["labels"] != -100] for b in held_out])
    return 100.0 * (held_labels == frequent).float().mean().item()


def fit(model, batches, lr, args, seed, smaller_sizes_warmup=0.0):
    """Train `model` on its own MLM loss over the pre-masked `batches`, in order, with `MatryoshkaTrainer`: AdamW
    (weight decay 0.01), linear warmup (10%) and decay, gradient clipping at 1 (the trainer's default); the smaller
    sizes' MLM loss weights rise from 0 over the first `smaller_sizes_warmup` of the steps (`SizeSchedule`). Only
    parameters that require gradients train (`refit_heads` freezes the encoder)."""
    from mrl_text import MatryoshkaTrainingArguments, SizeSchedule

    with tempfile.TemporaryDirectory() as scratch:
        training_args = MatryoshkaTrainingArguments(
            output_dir=scratch, per_device_train_batch_size=1, max_steps=len(batches), learning_rate=lr,
            weight_decay=0.01, warmup_steps=max(1, len(batches) // 10), seed=seed, save_strategy="no", report_to=[],
            logging_steps=max(1, len(batches) // 5), disable_tqdm=True, use_cpu=args.device == "cpu",
            dataloader_num_workers=0,
        )
        schedule = SizeSchedule(smaller_sizes_warmup) if smaller_sizes_warmup else None
        # One dataset row per pre-masked batch: the collator hands it on as it is.
        trainer = common.in_order_trainer()(model=model, args=training_args, train_dataset=batches,
                                            data_collator=lambda rows: rows[0], size_schedule=schedule)
        trainer.train()
    return model.eval()


def mrl_recipe(method, args):
    """(full-size weight, smaller sizes' warmup fraction) of an MRL method; None for the others."""
    if method == "mrl":
        return args.mrl_full_weight, args.smaller_sizes_warmup_fraction
    if method == "mrl_paper":
        return 1.0, 0.0
    match = re.fullmatch(r"mrl_w(\d+(?:\.\d+)?)(?:_ramp(\d+))?", method)
    return (float(match[1]), int(match[2] or 0) / 100) if match else None


def method_nesting(method, sizes, args):
    """(sizes, weights, smaller sizes' warmup fraction) of a method's pretraining (an MRL method's weights are those
    its smaller sizes ramp up to)."""
    recipe_ = mrl_recipe(method, args)
    if recipe_:
        full_weight, warmup = recipe_
        return sizes, [full_weight] + [1.0] * (len(sizes) - 1), warmup
    if method == "plain":
        return sizes[:1], None, 0.0
    d = int(method[2:])
    return [sizes[0], d], [0.0, 1.0], 0.0  # only the size-d loss trains: the full-size head is never used


def with_all_heads(model, sizes):
    """A copy of `model` with an MLM head at every size of `sizes`, its trained heads kept at their sizes."""
    from mrl_text import MatryoshkaConfig, MatryoshkaForMaskedLM

    config = MatryoshkaConfig(encoder=copy.deepcopy(model.config.encoder), matryoshka_dimensions=sizes)
    wide = MatryoshkaForMaskedLM(config)
    wide.matryoshka.load_state_dict(model.matryoshka.state_dict())
    wide.lm_head.decoder.bias.data.copy_(model.lm_head.decoder.bias.data)
    for old, d in enumerate(model.config.matryoshka_dimensions):
        new = sizes.index(d)
        wide.lm_head.transform.heads[new].load_state_dict(model.lm_head.transform.heads[old].state_dict())
        wide.lm_head.layer_norms[new].load_state_dict(model.lm_head.layer_norms[old].state_dict())
    wide.tokenizer = model.tokenizer
    return wide.to(model.device)


def refit_heads(model, batches, args, seed):
    """Train only the heads (transforms, LayerNorms, decoder bias) with the encoder and the tied decoder frozen."""
    for p in model.matryoshka.parameters():
        p.requires_grad_(False)
    fit(model, batches, args.refit_lr, args, seed)
    for p in model.matryoshka.parameters():
        p.requires_grad_(True)
    return model


def embedding_evaluators(args):
    """Test: STS-B test, SciFact test and the Banking77 probe (train subsampled to --probe-train texts, scored on
    test). Validation (`--eval-split val`, for choosing the fine-tuning recipe): STS-B dev and the probe scored on
    --limit-eval (at most a fifth) texts of Banking77 train held out from its training texts; SciFact has no
    validation queries here and is left out."""
    from mrl_text.data import load_beir, load_classification, load_sts
    from mrl_text.evaluation import ClassificationEvaluator, RetrievalEvaluator, STSEvaluator

    data = Path(args.data)
    banking = list(zip(*load_classification(data / "banking77" / "train.tsv")))
    if args.eval_split == "val":
        random.Random(0).shuffle(banking)
        n_held_out = min(args.limit_eval or len(banking), len(banking) // 5)  # never more than a fifth of train
        held_out, train = banking[:n_held_out], banking[n_held_out:][: args.probe_train]
        return [e for e in (STSEvaluator(*load_sts(data / "stsb" / "dev.tsv"), name="stsb"),
                            ClassificationEvaluator(*zip(*train), *zip(*held_out), name="banking77"))
                if e.name in args.tasks.split(",")]
    train = common.subsample(banking, args.probe_train)
    test = list(zip(*load_classification(data / "banking77" / "test.tsv")))
    evaluators = [STSEvaluator(*load_sts(data / "stsb" / "test.tsv"), name="stsb"),
                  RetrievalEvaluator(*load_beir(data / "scifact", "test"), name="scifact"),
                  ClassificationEvaluator(*zip(*train), *zip(*test), name="banking77")]
    return [e for e in evaluators if e.name in args.tasks.split(",")]


def finetune_and_score(model, args, evaluators, seed, scratch):
    """{task: {"before"/"after": {size: score x100}}} of the encoder before and after embedding fine-tuning on SNLI
    triplets (InfoNCE + MatryoshkaLoss at every size), every size; evaluated at the pretraining length."""
    from datasets import concatenate_datasets

    from mrl_text.data import nli_triplets, read_table
    from mrl_text.evaluation import evaluate

    data = Path(args.data)
    snli = concatenate_datasets([read_table(data / "snli" / f"{s}.tsv") for s in ("dev", "test")])
    rows = common.subsample(list(nli_triplets(snli)), args.finetune_rows)
    embedder = model.to_embedding_model()

    def score():
        results = evaluate(embedder, evaluators, dims=args.sizes, max_length=args.max_seq_length, batch_size=128)
        return {e.name: {r["dim"]: 100 * r["value"] for r in results.rows
                         if r["task"] == e.name and r["metric"] == e.primary_metric} for e in evaluators}

    before = score()
    common.train(embedder, rows, args, scratch, seed, "infonce")
    after = score()
    return {"rows": len(rows), **{e.name: {"before": before[e.name], "after": after[e.name]} for e in evaluators}}


def finetune_lrs(args):
    """The embedding fine-tuning learning rates to run: --finetune-lrs, else --lr."""
    return [float(lr) for lr in args.finetune_lrs.split(",")] if args.finetune_lrs else [args.lr]


def reported_lr(args):
    """The fine-tuning learning rate of the main before/after tables (and the targets): --lr when it was run, else
    the first of --finetune-lrs."""
    lrs = finetune_lrs(args)
    return args.lr if args.lr in lrs else lrs[0]


def pretrained(args, method, settings, tokenizer, batches, smaller_sizes_warmup, seed):
    """(the method's pretrained MatryoshkaForMaskedLM, pretraining seconds): trained here, or loaded from the copy an
    earlier run with the same pretraining settings kept under --out. The held-out split and the fine-tuning settings
    do not change pretraining, so a validation study and the test run share their encoders."""
    settings_key = [method_nesting(method, args.sizes, args), args.steps, args.batch_size, args.max_seq_length,
                    sorted(tokenizer.get_vocab().items()), args.layers, args.heads, args.mlm_lr, args.mlm_probability,
                    args.limit_train, args.limit_eval, args.device, args.model]
    settings_key += [seed] if seed else []  # seed 0's key predates --seeds
    settings_key += ["MatryoshkaTrainer"]  # encoders of the earlier hand-written loop are not reused
    kept = (
        Path(args.out)
        / "pretrained"
        / f"{method}-{hashlib.sha1(json.dumps(settings_key).encode()).hexdigest()[:12]}.pt"
    )
    torch.manual_seed(seed)  # the same initial encoder for every method of a seed (built before the heads)
    model = recipe.build_model(settings, tokenizer).to(args.device)
    if kept.is_file():
        state = torch.load(kept, map_location=args.device)
        model.load_state_dict(state["weights"])
        print(f"{method}: pretrained encoder reused from {kept}", flush=True)
        return model.eval(), state["seconds"]
    start = time.perf_counter()
    fit(model, batches, args.mlm_lr, args, seed, smaller_sizes_warmup)
    seconds = round(time.perf_counter() - start, 1)
    kept.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": model.state_dict(), "seconds": seconds}, kept)
    return model, seconds


def check_methods(methods, args):
    sizes = args.sizes
    for method in methods:
        known = method == "plain" or (
            method.startswith("ff") and method[2:].isdigit() and int(method[2:]) in sizes[1:]
        )
        if not known and mrl_recipe(method, args) is None:
            raise SystemExit(
                f"--methods names {method!r}; use mrl, mrl_paper, mrl_w<W>[_ramp<P>], plain or ff<d> with "
                f"d one of {sizes[1:]}."
            )


def seed_job(job):
    """Every method of one seed: pretrained (or reused), heads refit, MLM accuracy; `mrl` and `plain` fine-tuned
    as embedding models and scored. {"runs": {method: {...}}, "timings": {...}}."""
    args, seed, methods = job["args"], job["seed"], job["methods"]
    sizes, timings, runs = args.sizes, {}, {}
    evaluators = [] if args.no_finetune else embedding_evaluators(args)
    tokenizer, batches, held_out, description = corpus_batches(args, recipe.load_tokenizer(args.model), seed)
    for method in methods:
        dims, weights, warmup = method_nesting(method, sizes, args)
        settings = recipe.RecipeArguments(hidden_size=sizes[0], num_hidden_layers=args.layers,
                                          num_attention_heads=args.heads, matryoshka_dimensions=dims,
                                          matryoshka_weights=weights, max_seq_length=args.max_seq_length)
        with common.phase(f"seed {seed} {method} pretrain", timings):
            model, seconds = pretrained(args, method, settings, tokenizer, batches, warmup, seed)
            own = recipe.masked_lm_accuracy(model, held_out)
        with common.phase(f"seed {seed} {method} refit heads", timings):
            torch.manual_seed(seed)
            model = refit_heads(with_all_heads(model, sizes), batches[: args.refit_steps], args, seed)
            refit = recipe.masked_lm_accuracy(model, held_out)
        runs[method] = {"own_heads": own, "refit": refit, "pretrain_s": seconds}
        print(f"seed {seed} {method}: own heads {own}; refit {refit}", flush=True)
        if method in ("mrl", "plain") and not args.no_finetune:
            by_lr = {}
            for lr in finetune_lrs(args):
                with common.phase(f"seed {seed} {method} fine-tune at lr {lr:g} + evaluation", timings), \
                        tempfile.TemporaryDirectory() as scratch:
                    finetuning = {"lr": lr, "smaller_sizes_warmup_fraction": args.finetune_warmup_fraction}
                    by_lr[lr] = finetune_and_score(model, argparse.Namespace(**{**vars(args), **finetuning}),
                                                   evaluators, seed, scratch)
            runs[method]["finetuned"] = by_lr[reported_lr(args)]
            runs[method]["finetuned_by_lr"] = by_lr
    return {"seed": seed, "runs": runs, "timings": timings, "description": description}


def run(args, argv):
    if args.bf16:
        raise SystemExit("The mlm regime trains in float32; drop --bf16.")
    sizes = args.sizes
    methods = args.methods.split(",") if args.methods else ["mrl", "plain"] + [f"ff{d}" for d in sizes[1:]]
    check_methods(methods, args)
    timings = {}
    with common.phase("tokenizer", timings):  # learnt (or found) once here, so that the seeds' processes share it
        corpus_sentences(args, recipe.load_tokenizer(args.model))
    jobs = [{"args": args, "seed": seed, "methods": methods} for seed in range(args.seeds)]

    def write(results):  # after every seed: a long CPU run that is stopped still leaves its results
        runs = {m: [r["runs"][m] for r in results] for m in methods}
        partial = f"; PARTIAL: {len(results)} of {args.seeds} seeds" if len(results) < args.seeds else ""
        description = results[0]["description"]  # seed 0's: its most-frequent-token baseline
        return report(args, argv, sizes, methods, runs, {**timings, **{k: v for r in results for k, v in
                                                                       r["timings"].items()}}, description + partial)

    reports = []
    common.run_jobs(
        seed_job, jobs, args.workers, args.device, on_result=lambda results: reports.append(write(results))
    )
    return reports[-1]


def per_seed(runs, method, *keys):
    """A value of every seed's run of `method` (`keys` index into each run), in seed order; [] when not run."""
    values = []
    for run in runs.get(method, []):
        for key in keys:
            run = run[key]
        values.append(run)
    return values


def cell(values):
    """mean (one seed) or mean ± sd over seeds of scores already x100; "not run" when there are none."""
    return common.cell([v / 100 for v in values]) if values else "not run"


def difference(a, b):
    """(mean, text) of the per-seed differences a - b (paired by seed): "+1.23" or "+1.23 ± 0.45"."""
    gaps = [x - y for x, y in zip(a, b)]
    if not gaps:
        return float("nan"), "not run"
    mean = statistics.fmean(gaps)
    return mean, f"{mean:+.2f}" + (f" ± {statistics.stdev(gaps):.2f}" if len(gaps) > 1 else "")


def learning_rate_table(runs, tasks, sizes, lrs):
    """Markdown lines: per task, every fine-tuning learning rate's scores after fine-tuning, side by side (means
    over seeds)."""
    def after(method, task, lr, d):
        return per_seed(runs, method, "finetuned_by_lr", lr, task, "after", d)

    def cells(method, task, lr):
        return " / ".join(f"{statistics.fmean(after(method, task, lr, d)):.2f}" for d in sizes)

    def gaps(task, lr):
        return " / ".join(
            f"{difference(after('mrl', task, lr, d), after('plain', task, lr, d))[0]:+.2f}" for d in sizes
        )

    sizes_named = " / ".join(map(str, sizes))
    lines = ["", f"Fine-tuning learning rates side by side (after fine-tuning, at {sizes_named}):"]
    for task in tasks:
        lines += ["", f"{task}:", "", "| lr | MRL-pretrained | plain-pretrained | MRL - plain |", "|---|---|---|---|"]
        lines += [
            f"| {lr:g} | {cells('mrl', task, lr)} | {cells('plain', task, lr)} | {gaps(task, lr)} |" for lr in lrs
        ]
    return lines


def report(args, argv, sizes, methods, runs, timings, description):
    """`runs`: {method: [one run per seed, in seed order]}; tables show mean ± sd over seeds, targets the mean of
    the per-seed differences."""
    def mlm(method, d):
        if method.startswith("ff"):
            method = "plain" if d == sizes[0] else f"ff{d}"
        # a size the method trained: its own head; a plain prefix: the head fit on the frozen encoder
        trained = method_nesting(method, sizes, args)[0]
        trained = trained[-1:] if method.startswith("ff") else trained  # FF-d's full-size head is never trained
        return per_seed(runs, method, "own_heads" if d in trained else "refit", d)

    seeds = (f"{args.seeds} seeds, mean ± sd (seed s: the initial weights, the training masks and batch order, the "
             "fine-tuning's batch order; the sentences, the tokenizer and the held-out masks are the same for all)"
             if args.seeds > 1 else "One seed")
    setup = (f"From scratch: BERT {args.layers} layers, hidden {sizes[0]}, {args.heads} heads, all-MiniLM-L6-v2's "
             f"tokenizer pipeline; {description}; MLM lr {args.mlm_lr}; then {args.refit_steps} head-only steps at lr "
             f"{args.refit_lr} for every model. {seeds}; CPU, OMP_NUM_THREADS=1: a scale for comparing the methods "
             "side by side, not for absolute MLM accuracy.")
    variants = [m for m in methods if m != "mrl" and mrl_recipe(m, args)]  # the study's other MRL recipes
    full, warmup = args.mrl_full_weight, args.smaller_sizes_warmup_fraction
    body = [
        f"MLM accuracy (%) on the held-out ({args.eval_split}) sentences' masked tokens, every size. MRL (weight "
        f"{full:g} on the full size, 1 on the others"
        + (f", those rising from 0 over the first {warmup:.0%} of the steps" if warmup else "")
        + ") and FF-d: the heads trained with the encoder (FF at the full size is plain); "
        f"plain prefix: heads fit on the frozen plain encoder ({args.refit_steps} head-only steps); last column: "
        "MRL's heads refit the same way (same protocol as the plain prefixes)"
        + (
            f"; other MRL recipes: {', '.join(variants)} (weight W on the full size, the smaller sizes' weights "
            "rising from 0 over the first P% of the steps; mrl_paper: every weight 1)"
            if variants
            else ""
        )
        + ":",
        "",
        "| size | MRL | " + "".join(f"{m} | " for m in variants) + "FF-d | plain prefix | MRL, heads refit |",
        "|---|---|" + "---|" * len(variants) + "---|---|---|",
    ]
    for d in sizes:
        values = [mlm("mrl", d)] + [mlm(m, d) for m in variants] + [mlm("ff", d), mlm("plain", d),
                                                                  per_seed(runs, "mrl", "refit", d)]
        body.append(f"| {d} | " + " | ".join(cell(v) for v in values) + " |")
    checks = []
    for d in sizes:
        gap, text = difference(mlm("mrl", d), mlm("ff", d))
        if not math.isnan(gap):  # else no FF-d run (--methods)
            checks.append((f"MLM: MRL within 1.0 of FF-{d} (MRL - FF {text})", gap + 1.0, gap >= -1.0))
    for d in sizes[-2:]:
        gap, text = difference(mlm("mrl", d), mlm("plain", d))
        checks.append((f"MLM: MRL >= plain prefix + 5 at {d} (MRL - plain {text})", gap - 5.0, gap >= 5.0))
    if all(runs.get(m) and all("finetuned" in run for run in runs[m]) for m in ("mrl", "plain")):  # not --no-finetune
        tasks = [task for task in per_seed(runs, "mrl", "finetuned")[0] if task != "rows"]
        lrs = finetune_lrs(args)
        scored = ("STS-B test Spearman, SciFact test nDCG@10, Banking77 probe accuracy (trained on "
                  f"{args.probe_train} texts of train, scored on test)" if args.eval_split == "test" else
                  f"STS-B dev Spearman, Banking77 probe accuracy (trained on up to {args.probe_train} texts of "
                  f"train, scored on up to {args.limit_eval} other texts of train)")
        body += [
            "",
            "The pretrained encoders as embedding models (mean pooling), before and after embedding fine-tuning "
            "(InfoNCE + MatryoshkaLoss at every size, weight 1 each"
            + (
                f", the smaller sizes' weights rising from 0 over the first {args.finetune_warmup_fraction:.0%} of "
                "the steps"
                if args.finetune_warmup_fraction
                else ", from the first step"
            )
            + f", {per_seed(runs, 'mrl', 'finetuned', 'rows')[0]} SNLI triplets, {args.epochs} epoch(s) of batch "
            f"{args.batch_size}, lr {reported_lr(args):g}), scored at {args.max_seq_length} tokens (the pretraining "
            f"length) x100: {scored}:",
        ]
        for task in tasks:
            def tuned(method, when, d, task=task):
                return per_seed(runs, method, "finetuned", task, when, d)

            body += ["", f"{task}:", "", "| size | MRL-pretrained before | after | plain-pretrained before | after |",
                     "|---|---|---|---|---|"]
            body += [f"| {d} | " + " | ".join(cell(tuned(m, when, d)) for m in ("mrl", "plain") for when in
                                              ("before", "after")) + " |" for d in sizes]
            for d in sizes:
                gap, text = difference(tuned("mrl", "after", d), tuned("plain", "after", d))
                if d == sizes[0]:
                    checks.append(
                        (f"{task} after fine-tuning: MRL >= plain - 0.3 at {d} ({text})", gap + 0.3, gap >= -0.3)
                    )
                elif d <= 64:
                    checks.append((f"{task} after fine-tuning: MRL > plain at {d} ({text})", gap, gap > 0))
        if len(lrs) > 1:
            body += learning_rate_table(runs, tasks, sizes, lrs)
    report = {**common.report_head(argv, setup), "timings": timings, "runs": runs, "targets": checks}
    body += common.targets_lines(checks)
    body += ["", "Wall time per phase: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())]
    common.write_report(
        args,
        args.report_name,
        report,
        "Quality: MLM pretraining with nested dimensions (the paper's BERT setting, small scale)",
        body,
    )
    return report
