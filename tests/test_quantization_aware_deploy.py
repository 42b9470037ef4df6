"""A quantization-aware model after training: its card (the size x precision grid, the trained precisions), its
export (the trained int8 ranges travel; int8 promised without ranges is refused), and the depth loss refusing it."""

import json

import pytest
import torch
from datasets import Dataset

from mrl_text.deploy.export import export_model, exported_ranges
from mrl_text.evaluation import STSEvaluator
from mrl_text.losses import InfoNCELoss, MatryoshkaDepthLoss, MatryoshkaLoss
from mrl_text.losses.quantization_aware import QuantizationAwareLoss, find_quantization_aware
from mrl_text.models.quantization import quantize
from mrl_text.training.trainer import MatryoshkaTrainer

from .test_export import assert_same_codes, st_prefixes
from .test_quantization_aware import PAIRS, training_args

PRECISIONS = ["float32", "int8", "binary"]


def sts_evaluator():
    return STSEvaluator(PAIRS["anchor"], PAIRS["positive"], [5.0, 4.0, 3.0, 2.0, 1.0, 0.5], name="toy-sts")


def train(model, tmp_path, precisions=PRECISIONS, evaluators=()):
    base = InfoNCELoss()
    if precisions:
        base = QuantizationAwareLoss.from_config(model.config, base, precisions=precisions)
    trainer = MatryoshkaTrainer(model=model, args=training_args(tmp_path), train_dataset=Dataset.from_dict(PAIRS),
                                loss=MatryoshkaLoss.from_config(model.config, base), evaluators=list(evaluators))
    if evaluators:
        trainer.evaluate()  # before training: no grid (nothing was trained for the precisions yet)
    trainer.train()
    if evaluators:
        trainer.evaluate()
    return model.eval()


@pytest.mark.slow
def test_card_of_a_quantization_aware_model_has_the_precision_axis(make_model, tmp_path):
    from mrl_text.cards.card import build_card

    model = train(make_model(matryoshka_dimensions=(32, 16, 8)), tmp_path, evaluators=[sts_evaluator()])
    results = model.model_card_data.results
    cells = {(c["precision"], c["dim"]) for c in results.grid}
    assert cells == {(p, d) for p in PRECISIONS for d in (32, 16, 8)}
    assert {c["model"] for c in results.grid} == {model.model_card_data.model_name}  # this model's, not "before"
    # the grid's int8 cells used the trained ranges (saved before the evaluation), which encode uses too
    assert sorted(model.config.quantization_ranges) == ["16", "32", "8"]
    card = str(build_card(model))
    assert "toy-sts: spearman by size x precision x layers" in card
    assert "| all | binary |" in card and "| all | int8 |" in card
    assert "- Precisions trained: float32, int8, binary at every size" in card
    assert "sizes 32, 16, 8" in card  # where the trained int8 ranges are


@pytest.mark.slow
def test_card_of_a_float_model_names_no_precisions(make_model, tmp_path):
    from mrl_text.cards.card import build_card

    model = train(make_model(matryoshka_dimensions=(32, 16)), tmp_path, precisions=None, evaluators=[sts_evaluator()])
    assert not model.model_card_data.results.grid
    card = str(build_card(model))
    assert "Precisions trained" not in card and "by size x precision" not in card


@pytest.mark.slow
def test_export_carries_the_trained_ranges_and_gives_the_models_int8_codes(make_model, sentences, tmp_path):
    model = train(make_model(matryoshka_dimensions=(32, 16, 8)), tmp_path)
    trained = model.config.quantization_ranges
    folder = export_model(model, tmp_path / "export", precisions=["int8", "binary"])
    assert json.loads((folder / "config.json").read_text())["quantization_ranges"] == trained
    _, prefixes = st_prefixes(folder, sentences, (32, 16, 8))  # sentence-transformers, no remote code
    for dim in (32, 16, 8):
        ranges = exported_ranges(folder, dim)
        assert torch.equal(ranges, torch.tensor(trained[str(dim)]))
        expected = model.encode(sentences, dim=dim, precision="int8")  # the trained ranges' codes
        assert_same_codes(prefixes[dim], quantize(prefixes[dim], "int8", ranges), expected, ranges)


def test_export_promising_int8_without_ranges_is_refused_before_writing(make_model, tmp_path):
    model = make_model(matryoshka_dimensions=(32, 16))
    with pytest.raises(ValueError, match=r"export precisions='int8': .*dim=32.*calibrate_quantization.*"
                                         r"QuantizationAwareLoss"):
        export_model(model, tmp_path / "export", precisions=["int8"])
    assert not (tmp_path / "export").exists()
    with pytest.raises(ValueError, match="int4"):
        export_model(model, tmp_path / "export", precisions=["int4"])
    model.config.quantization_ranges = {"32": [[-1.0] * 32, [1.0] * 32]}  # one size only: 16 still missing
    with pytest.raises(ValueError, match="dim=16"):
        export_model(model, tmp_path / "export", precisions="uint8")
    export_model(model, tmp_path / "export", precisions=["float32", "binary"])  # no ranges needed


def test_cli_export_precisions(make_model, tmp_path, capsys):
    """`mrl-text export --precisions`: an unknown name is refused before the model loads, int8 without ranges before
    anything is written (exit status 2, one line naming the value); with ranges the folder carries them."""
    from mrl_text.cli import main

    saved, out = tmp_path / "saved", tmp_path / "out"
    model = make_model(matryoshka_dimensions=(32, 16))
    model.save_pretrained(saved)
    for precisions, message in (("int4", "int4"), ("float32,int8", "precisions='int8'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(saved), str(out), "--precisions", precisions])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
        assert not out.exists()
    ranges = {str(dim): [[-1.0] * dim, [1.0] * dim] for dim in (32, 16)}
    model.config.quantization_ranges = ranges
    model.save_pretrained(saved)
    assert main(["export", str(saved), str(out), "--precisions", "int8", "--precisions", "binary"]) == 0
    assert json.loads((out / "config.json").read_text())["quantization_ranges"] == ranges


def test_depth_loss_refuses_quantization_aware_training(make_model):
    model = make_model(matryoshka_dimensions=(32, 16), matryoshka_layers=[2, 1])
    qat = QuantizationAwareLoss(InfoNCELoss(), precisions=["float32", "int8"])
    inner = MatryoshkaLoss.from_config(model.config, qat)
    assert find_quantization_aware(inner) is qat
    with pytest.raises(ValueError, match="cannot wrap a QuantizationAwareLoss.*calibrate_quantization"):
        MatryoshkaDepthLoss.from_config(model.config, inner)
    MatryoshkaDepthLoss.from_config(model.config, MatryoshkaLoss.from_config(model.config, InfoNCELoss()))
