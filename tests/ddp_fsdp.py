"""recipes/train_bert.py under DDP and under FSDP2 (`--fully_shard true`, plain and cached with `--mini_batch_size 2`),
run by tests/test_fsdp.py in 2 CPU processes (gloo) in one launch: the same tiny model, data and seed, trained for a
few steps each way with gradient accumulation 2.

Process 0 saves, to the path given as argv[1], the per-step training losses of both runs (from the kept checkpoint's
trainer_state.json) and what sharding looked like during the FSDP run: every parameter a DTensor, the elements each
process holds, the model's full size, and the DDP run's wrapper class.

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/ddp_fsdp.py out.pt
"""

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

import torch.distributed as dist  # noqa: E402

from mrl_text import MatryoshkaTrainer  # noqa: E402
from tests.conftest import WORDS, build_tokenizer, tiny_bert_config  # noqa: E402

STEPS = 4
PER_DEVICE_BATCH = 4


class RecordingTrainer(MatryoshkaTrainer):
    """MatryoshkaTrainer that records, at its first training step, what it trains: the wrapper class, whether every
    parameter is a DTensor, and the parameter elements this process holds against the model's full count."""

    seen = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        if len(RecordingTrainer.seen) < self.runs:
            from torch.distributed.tensor import DTensor

            parameters = list(self.model.parameters())
            local = [p.to_local() if isinstance(p, DTensor) else p for p in parameters]
            RecordingTrainer.seen.append({
                "wrapper": type(model).__name__,
                "all_dtensor": all(isinstance(p, DTensor) for p in parameters),
                "local_elements": sum(p.numel() for p in local),
                "full_elements": sum(p.numel() for p in parameters),
            })
        return super().training_step(model, inputs, num_items_in_batch)


def write_inputs(folder):
    """A tiny BERT encoder folder (with its tokenizer) and a csv of question/answer pairs."""
    from transformers import BertModel

    tokenizer = build_tokenizer(folder / "encoder")
    torch.manual_seed(0)
    # Without dropout: a cached step draws its masks per mini-batch, a plain one per batch (other masks, same rule).
    config = tiny_bert_config(vocab_size=len(tokenizer))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    BertModel(config, add_pooling_layer=False).save_pretrained(folder / "encoder")
    tokenizer.save_pretrained(folder / "encoder")
    words = sorted(WORDS)
    rows = ["anchor,positive"] + [
        f"{words[i % len(words)]} {words[(3 * i + 1) % len(words)]},{words[(3 * i + 1) % len(words)]} "
        f"{words[(7 * i + 2) % len(words)]}" for i in range(64)
    ]
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")


def train(recipe, inputs, folder, name, *extra):
    """One recipe run; its per-step training losses (on process 0) and what it trained."""
    argv = [
        "--model_name_or_path", str(inputs / "encoder"), "--train_data", str(inputs / "pairs.csv"),
        "--matryoshka_dimensions", "32", "16", "8", "--general_check", "false", "--output_dir", str(folder / name),
        "--max_steps", str(STEPS), "--per_device_train_batch_size", str(PER_DEVICE_BATCH), "--learning_rate", "1e-3",
        "--warmup_steps", "0", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", str(STEPS),
        "--save_only_model", "true", "--keep_checkpoints", "true", "--disable_tqdm", "true",
        "--per_device_eval_batch_size", "16", "--max_seq_length", "12", "--gradient_accumulation_steps", "2", *extra,
    ]
    RecordingTrainer.runs = len(RecordingTrainer.seen) + 1
    recipe.main(argv)
    if dist.get_rank() != 0:
        return None, RecordingTrainer.seen[-1]
    state = json.loads((folder / name / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [log["loss"] for log in state["log_history"] if "loss" in log], RecordingTrainer.seen[-1]


def main(out_path):
    import train_bert

    torch.set_num_threads(1)
    folder = Path(out_path).parent / "fsdp-run"
    # Each process writes its own copy of the inputs (the same bytes) before the process group starts: a save while
    # it runs would be a collective that the other process does not join.
    inputs = folder / f"inputs-{os.environ['RANK']}"
    inputs.mkdir(parents=True, exist_ok=True)
    write_inputs(inputs)
    train_bert.MatryoshkaTrainer = RecordingTrainer  # the recipe builds its trainer by this name
    ddp_losses, ddp_seen = train(train_bert, inputs, folder, "ddp")
    fsdp_losses, fsdp_seen = train(train_bert, inputs, folder, "fsdp", "--fully_shard", "true")
    cached_losses, _ = train(train_bert, inputs, folder, "fsdp-cached", "--fully_shard", "true",
                             "--mini_batch_size", "2")
    seen = [None, None]
    dist.all_gather_object(seen, fsdp_seen)  # each process's share of the sharded parameters
    if dist.get_rank() == 0:
        fsdp_seen = {**fsdp_seen, "local_elements": [s["local_elements"] for s in seen]}
        torch.save({"world_size": dist.get_world_size(), "ddp_losses": ddp_losses, "fsdp_losses": fsdp_losses,
                    "fsdp_cached_losses": cached_losses,
                    "ddp_seen": ddp_seen, "fsdp_seen": fsdp_seen}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
