"""Cross-device negatives check, run by tests/test_ddp.py in 2 CPU processes (gloo) and in 1 process.

Each process embeds its share of one global batch of triplets with a DDP-wrapped tiny Matryoshka model (one forward
per column, as the trainer does), applies MatryoshkaLoss(InfoNCE, symmetric, gathered across devices) and backprops.
With gathering, the per-process losses average to the 1-process loss on the whole batch and DDP's averaged gradients
equal its gradients. Process 0 saves both to the path given as argv[1].

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/ddp_negatives.py out.pt
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrl_text import MatryoshkaConfig, MatryoshkaModel  # noqa: E402
from mrl_text.losses import InfoNCELoss, MatryoshkaLoss  # noqa: E402
from tests.conftest import build_tokenizer, tiny_bert_config  # noqa: E402

GLOBAL_BATCH = {
    "anchor": ["a man plays guitar", "the dog runs", "what is my balance", "hello world",
               "the sun is big", "a cat is sleeping", "bread in the park", "fast red car"],
    "positive": ["a man is playing music", "a dog is running", "account balance please", "hello",
                 "big sun today", "the cat sleeps", "eating bread at the park", "a red car is fast"],
    "negative": ["a woman eats bread", "the cat sleeps", "help with my card", "sad rain",
                 "small blue house", "a dog is running", "a song on the piano", "slow green bike"],
}
SEQ_LEN = 12  # fixed padding: each process pads like the 1-process run


def build_model(tokenizer_dir):
    tokenizer = build_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    config = MatryoshkaConfig(
        encoder=tiny_bert_config(vocab_size=len(tokenizer)), matryoshka_dimensions=[32, 16, 8, 4]
    )
    model = MatryoshkaModel(config).eval()  # no dropout: both runs must compute the same function
    return model, tokenizer


def loss_and_gradients(model, tokenizer, rank=0, world_size=1, wrapped=None):
    """Loss of this process's rows and (after backward) the model's gradients."""
    share = len(GLOBAL_BATCH["anchor"]) // world_size
    rows = slice(rank * share, (rank + 1) * share)
    matryoshka_loss = MatryoshkaLoss.from_config(model.config, InfoNCELoss(symmetric=True, gather_across_devices=True))
    embeddings = []
    for column in ("anchor", "positive", "negative"):
        inputs = tokenizer(GLOBAL_BATCH[column][rows], padding="max_length", max_length=SEQ_LEN, return_tensors="pt")
        embeddings.append((wrapped or model)(**inputs).full_embeddings)
    loss = matryoshka_loss(embeddings)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def main(out_path):
    from accelerate import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    model, tokenizer = build_model(Path(out_path).parent / f"tokenizer-{accelerator.process_index}")
    wrapped = accelerator.prepare(model)
    loss, grads = loss_and_gradients(
        model, tokenizer, accelerator.process_index, accelerator.num_processes, wrapped=wrapped
    )
    mean_loss = accelerator.reduce(loss, reduction="mean")
    if accelerator.is_main_process:
        torch.save({"world_size": accelerator.num_processes, "loss": mean_loss, "grads": grads}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
