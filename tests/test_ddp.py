"""Cross-device negatives: 2 CPU processes (DDP, gloo) give the loss and gradients of 1 process on the global batch."""

import shutil
from pathlib import Path

import pytest
import torch

from .conftest import launch_two_cpu_processes
from .ddp_negatives import build_model, loss_and_gradients

pytestmark = pytest.mark.ddp

SCRIPT = Path(__file__).with_name("ddp_negatives.py")


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not installed")
def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    launch_two_cpu_processes(SCRIPT, tmp_path / "ddp.pt", port=29517)
    ddp = torch.load(tmp_path / "ddp.pt")
    assert ddp["world_size"] == 2

    model, tokenizer = build_model(tmp_path / "tokenizer")
    loss, grads = loss_and_gradients(model, tokenizer)
    torch.testing.assert_close(ddp["loss"], loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ddp["grads"].keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_half_batch_gives_another_loss(tmp_path):
    """A process that saw only its own rows would not match: the check above is sensitive to gathering."""
    model, tokenizer = build_model(tmp_path / "tokenizer")
    full, _ = loss_and_gradients(model, tokenizer)
    model.zero_grad()
    half, _ = loss_and_gradients(model, tokenizer, rank=0, world_size=2)
    assert not torch.allclose(full, half)
