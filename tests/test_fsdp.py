"""Fully sharded training on CPU: recipes/train_bert.py with `--fully_shard true` (torch's FSDP2) in 2 processes (gloo)
trains the same loss curve as DDP (with gradient accumulation, plain and cached), really sharded, and saves a full
MatryoshkaModel folder."""

import shutil
from pathlib import Path

import pytest
import torch

from .conftest import launch_two_cpu_processes

SCRIPT = Path(__file__).with_name("ddp_fsdp.py")


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not installed")
def test_fully_sharded_recipe_matches_ddp(tmp_path):
    launch_two_cpu_processes(SCRIPT, tmp_path / "runs.pt", port=29547)
    runs = torch.load(tmp_path / "runs.pt")
    assert runs["world_size"] == 2

    # DDP: a full replica per process. FSDP: every parameter a DTensor, each process holding about half.
    ddp, fsdp = runs["ddp_seen"], runs["fsdp_seen"]
    assert ddp["wrapper"] == "DistributedDataParallel" and not ddp["all_dtensor"]
    assert fsdp["wrapper"].startswith("FSDP") and fsdp["all_dtensor"]
    assert sum(fsdp["local_elements"]) == fsdp["full_elements"] == ddp["full_elements"]
    assert all(abs(local / fsdp["full_elements"] - 0.5) < 0.01 for local in fsdp["local_elements"])

    # Same data order, same averaged gradients: the loss curves agree to float32 rounding (summed in another order
    # by the reduce-scatter than by DDP's all-reduce). Tolerance: 1e-4 relative.
    # The cached (GradCache) loss gives the same gradients, so the same curve too.
    assert len(runs["ddp_losses"]) == len(runs["fsdp_losses"]) == len(runs["fsdp_cached_losses"]) == 4
    for sharded in ("fsdp_losses", "fsdp_cached_losses"):
        torch.testing.assert_close(torch.tensor(runs[sharded]), torch.tensor(runs["ddp_losses"]), rtol=1e-4,
                                   atol=1e-5, msg=sharded)

    # The sharded run saves a full model folder (gathered weights, mrl-text's class in auto_map) equal to DDP's.
    from mrl_text import MatryoshkaModel

    folders = tmp_path / "fsdp-run"
    sharded, replicated = (MatryoshkaModel.from_pretrained(folders / name) for name in ("fsdp", "ddp"))
    assert sharded.config.auto_map["AutoModel"] == "modeling_matryoshka.MatryoshkaModel"
    assert not list((folders / "fsdp").glob("_fsdp*.py"))
    for (name, weight), (_, reference) in zip(sharded.state_dict().items(), replicated.state_dict().items()):
        torch.testing.assert_close(weight, reference, rtol=1e-4, atol=1e-5, msg=name)


def test_fully_shard_model_needs_a_process_group(make_model):
    from mrl_text.training import fully_shard_model

    with pytest.raises(RuntimeError, match="process group"):
        fully_shard_model(make_model())


def test_recipe_option(tmp_path):
    from .conftest import RECIPES, load_module

    recipe = load_module(RECIPES / "train_bert.py")
    assert recipe.parse_arguments(["--fully_shard", "true"])[0].fully_shard
    assert not recipe.parse_arguments([])[0].fully_shard
