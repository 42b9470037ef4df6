"""Cached (GradCache) training under DDP, run by tests/test_cached_loss.py in 2 CPU processes (gloo).

1. Exactness: each process embeds its share of one global batch in mini-batches of 3 rows with `cached_loss` (float64,
   DDP-wrapped model, InfoNCE gathering the cached embeddings across processes, `no_sync` until the last mini-batch);
   process 0 saves the DDP-averaged gradients and the mean loss, which the test compares with one process's plain
   full-batch step.
2. The trainer: `MatryoshkaTrainer` with `MatryoshkaLoss(..., mini_batch_size=2)` and gradient accumulation trains a
   few steps under DDP; process 0 saves the steps and the losses.

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/ddp_cached.py out.pt
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import Dataset  # noqa: E402

from mrl_text.losses import InfoNCELoss, MatryoshkaLoss, cached_loss  # noqa: E402
from mrl_text.training.trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments  # noqa: E402
from tests.ddp_negatives import GLOBAL_BATCH, SEQ_LEN, build_model  # noqa: E402

MINI_BATCH = 3  # 4 rows per process: a full and a partial mini-batch


def matryoshka_infonce(model, **options):
    """The loss tests/ddp_negatives.py's one-process reference uses (symmetric InfoNCE, gathered, every size)."""
    return MatryoshkaLoss.from_config(model.config, InfoNCELoss(symmetric=True, gather_across_devices=True), **options)


def cached_step(model, tokenizer, rank, world_size, wrapped):
    """This process's loss and (after backward) the model's gradients from a cached step on its rows."""
    share = len(GLOBAL_BATCH["anchor"]) // world_size
    rows = slice(rank * share, (rank + 1) * share)
    columns = [tokenizer(GLOBAL_BATCH[c][rows], padding="max_length", max_length=SEQ_LEN, return_tensors="pt")
               for c in ("anchor", "positive", "negative")]
    columns = [dict(features) for features in columns]
    loss = cached_loss(matryoshka_infonce(model), lambda f: [wrapped(**f).full_embeddings], columns, None, MINI_BATCH,
                       no_sync=wrapped.no_sync)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def trainer_run(out_dir, tokenizer):
    model, _ = build_model(out_dir / "tokenizer-trainer")
    model.tokenizer = tokenizer
    args = MatryoshkaTrainingArguments(
        output_dir=str(out_dir / "run"), max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=1e-3, report_to="none", save_strategy="no", disable_tqdm=True, seed=0, logging_steps=1,
    )
    rows = {c: GLOBAL_BATCH[c] * 3 for c in ("anchor", "positive", "negative")}
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows),
                                loss=matryoshka_infonce(model, mini_batch_size=2))
    trainer.train()
    return trainer.state.global_step, [log["loss"] for log in trainer.state.log_history if "loss" in log]


def main(out_path):
    from accelerate import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    out_dir = Path(out_path).parent
    model, tokenizer = build_model(out_dir / f"tokenizer-{accelerator.process_index}")
    wrapped = accelerator.prepare(model.double())
    loss, grads = cached_step(model, tokenizer, accelerator.process_index, accelerator.num_processes, wrapped)
    mean_loss = accelerator.reduce(loss, reduction="mean")
    steps, losses = trainer_run(out_dir / f"trainer-{accelerator.process_index}", tokenizer)
    if accelerator.is_main_process:
        torch.save({"world_size": accelerator.num_processes, "loss": mean_loss, "grads": grads,
                    "trainer_steps": steps, "trainer_losses": losses}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
