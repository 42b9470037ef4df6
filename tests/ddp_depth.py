"""Depth training under DDP, run by tests/test_depth.py in 2 CPU processes (gloo): MatryoshkaTrainer with a
`MatryoshkaDepthLoss` for a few steps. DDP runs without searching for unused parameters (the trainer's default), so a
parameter left out of a step's loss would fail the next step; process 0 writes "ok" and the depths to argv[1].

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/ddp_depth.py out.json
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import Dataset  # noqa: E402
from transformers import BertConfig  # noqa: E402

from mrl_text import MatryoshkaConfig, MatryoshkaModel  # noqa: E402
from mrl_text.losses import InfoNCELoss, MatryoshkaDepthLoss, MatryoshkaLoss  # noqa: E402
from mrl_text.training.trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments  # noqa: E402
from tests.conftest import WORDS, build_tokenizer  # noqa: E402


def main(out_path):
    torch.set_num_threads(1)
    out = Path(out_path)
    tokenizer = build_tokenizer(out.parent / f"tokenizer-{torch.randint(1 << 30, ()).item()}")
    encoder = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    model = MatryoshkaModel(
        MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=[16, 8], matryoshka_layers=[3, 2, 1])
    )
    model.tokenizer = tokenizer
    rows = {"anchor": [" ".join(WORDS[i : i + 3]) for i in range(32)],
            "positive": [" ".join(WORDS[i + 1 : i + 4]) for i in range(32)]}
    args = MatryoshkaTrainingArguments(
        output_dir=str(out.parent / "run"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
    )
    loss = MatryoshkaDepthLoss.from_config(model.config, MatryoshkaLoss.from_config(model.config, InfoNCELoss()))
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss)
    trainer.train()
    if trainer.is_world_process_zero():
        out.write_text(json.dumps({"world_size": trainer.args.world_size, "steps": trainer.state.global_step}))


if __name__ == "__main__":
    main(sys.argv[1])
