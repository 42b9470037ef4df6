"""QuantizationAwareLoss on tiny random models: straight-through gradients, codes equal to encode's, tracked int8
ranges saved into the config and used by encode / FunnelIndex, a few MatryoshkaTrainer steps, errors."""

import pytest
import torch
from datasets import Dataset
from torch.nn import functional as F

from mrl_text.losses import InfoNCELoss, MatryoshkaLoss
from mrl_text.losses.quantization_aware import (
    QuantizationAwareLoss,
    binary_straight_through,
    binary_tempered_tanh,
    int8_straight_through,
)
from mrl_text.models.quantization import dequantize, quantize
from mrl_text.training.trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments

PAIRS = {
    "anchor": ["a man plays guitar", "the dog runs", "what is my balance", "rain today", "a cat eats", "red car"],
    "positive": ["a man is playing music", "a dog is running", "account balance please", "bad weather",
                 "the cat is eating food", "a big red car"],
}


def unit(rows, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=-1).requires_grad_()


def test_binary_codes_are_encode_bits_and_the_gradient_flows_inside_the_clip():
    x = unit(6, 16)
    codes = binary_straight_through(x)
    bits = dequantize(quantize(x.detach(), "binary"), "binary")
    torch.testing.assert_close(codes.detach(), bits / 4.0)  # +-1 / sqrt(16): unit length
    # dot products of the codes = 1 - 2 * Hamming / dim, the ranking binary search uses
    hamming = (bits[0] != bits[1]).sum()
    torch.testing.assert_close(codes[0] @ codes[1], 1 - 2 * hamming / 16)
    weights = torch.randn(6, 16)
    (codes * weights).sum().backward()
    inside = (x.detach() * 4).abs() <= 1
    assert torch.isfinite(x.grad).all() and x.grad[inside].abs().gt(0).all()
    assert x.grad[~inside].eq(0).all() and inside.any() and (~inside).any()


def test_int8_fake_quantization_decodes_encode_codes_with_a_clipped_gradient():
    x = unit(8, 16, seed=1)
    ranges = torch.stack([x.detach().min(0).values * 0.5, x.detach().max(0).values * 0.5])  # some values outside
    out = int8_straight_through(x, ranges)
    torch.testing.assert_close(out.detach(), dequantize(quantize(x.detach(), "int8", ranges), "int8", ranges))
    out.sum().backward()
    inside = (x.detach() >= ranges[0]) & (x.detach() <= ranges[1])
    assert x.grad[inside].eq(1).all() and x.grad[~inside].eq(0).all() and (~inside).any()


def test_loss_sums_precisions_and_gradients_reach_the_embeddings():
    base = InfoNCELoss()
    qat = QuantizationAwareLoss(base, precisions=["float32", "int8", "binary"], precision_weights=[1.0, 0.5, 2.0])
    anchor, positive = unit(4, 16), unit(4, 16, seed=2)
    value = qat([anchor, positive])
    ranges = qat.tracked_ranges[16]
    expected = (base([anchor, positive]) + 0.5 * base([int8_straight_through(t, ranges) for t in (anchor, positive)])
                + 2.0 * base([binary_straight_through(t) for t in (anchor, positive)]))
    torch.testing.assert_close(value, expected)
    value.backward()
    for tensor in (anchor, positive):
        assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0
    # binary alone still trains (the straight-through gradient is not zero)
    anchor.grad = None
    QuantizationAwareLoss(InfoNCELoss(), precisions=["binary"])([anchor, positive]).backward()
    assert anchor.grad.abs().sum() > 0


def test_ranges_are_a_moving_average_of_the_batch_extremes_as_calibration_measures_them():
    qat = QuantizationAwareLoss(InfoNCELoss(), precisions=["int8"], ranges_momentum=0.5)
    first, second = [unit(4, 8, seed=s) for s in (0, 1)], [unit(4, 8, seed=s) for s in (2, 3)]
    qat(first)
    qat(second)

    def extremes(columns):
        rows = torch.cat([c.detach() for c in columns])
        return torch.stack([rows.min(0).values, rows.max(0).values])

    torch.testing.assert_close(qat.tracked_ranges[8], 0.5 * extremes(first) + 0.5 * extremes(second))
    with torch.no_grad():  # evaluation does not move the ranges
        qat([unit(4, 8, seed=9), unit(4, 8, seed=10)])
    torch.testing.assert_close(qat.tracked_ranges[8], 0.5 * extremes(first) + 0.5 * extremes(second))


def test_sampling_keeps_float32_and_draws_the_rest():
    qat = QuantizationAwareLoss(InfoNCELoss(), precisions=["float32", "int8", "binary"], n_precisions_per_step=2)
    draws = [qat.precisions_for_step() for _ in range(40)]
    assert all(len(d) == 2 and d[0][0] == "float32" for d in draws)
    assert {d[1][0] for d in draws} == {"int8", "binary"}


def test_tanh_estimator_relaxes_the_bits_and_anneals_towards_them():
    x = unit(6, 16)
    bits = dequantize(quantize(x.detach(), "binary"), "binary") / 4.0
    soft = binary_tempered_tanh(x, 1.0)
    torch.testing.assert_close(soft.detach().norm(dim=-1), torch.ones(6))  # unit length, like the codes
    assert (soft.detach() - bits).abs().max() > 0.05  # smooth, not the bits
    torch.testing.assert_close(binary_tempered_tanh(x, 1e-4).detach(), bits, atol=1e-3, rtol=0)  # T -> 0: the bits
    weights = torch.randn(6, 16)
    (soft * weights).sum().backward()
    assert x.grad.abs().gt(0).all()  # every coordinate has a gradient, those outside the clip too
    clipped = x.grad.clone()
    x.grad = None
    (binary_straight_through(x) * weights).sum().backward()
    assert not torch.allclose(clipped, x.grad)  # a different estimator than the clipped identity

    qat = QuantizationAwareLoss(InfoNCELoss(), precisions=["binary"], binary_estimator="tanh",
                                binary_temperature=(1.0, 0.01))
    qat.set_progress(0.0)
    assert qat.temperature() == 1.0
    qat.set_progress(0.5)
    assert abs(qat.temperature() - 0.1) < 1e-9  # geometric
    anchor, positive = unit(4, 16), unit(4, 16, seed=2)
    torch.testing.assert_close(qat([anchor, positive]), InfoNCELoss()([binary_tempered_tanh(t, 0.1)
                                                                       for t in (anchor, positive)]))
    qat.eval()  # out of training the loss scores the bits themselves
    torch.testing.assert_close(qat([anchor, positive]), InfoNCELoss()([binary_straight_through(t)
                                                                       for t in (anchor, positive)]))


def test_schedules_need_the_progress_and_the_warmup_trains_float32_alone_first():
    anchor, positive = unit(4, 16), unit(4, 16, seed=2)
    annealed = QuantizationAwareLoss(InfoNCELoss(), precisions=["float32", "binary"], binary_estimator="tanh")
    with pytest.raises(ValueError, match=r"set_progress\(step / total_steps\)"):
        annealed([anchor, positive])
    QuantizationAwareLoss(InfoNCELoss(), precisions=["binary"], binary_estimator="tanh", binary_temperature=0.5)(
        [anchor, positive])  # a constant temperature needs no progress
    qat = QuantizationAwareLoss(InfoNCELoss(), precisions=["float32", "int8", "binary"], quantization_warmup=0.25)
    qat.set_progress(0.1)
    assert qat.precisions_for_step() == [("float32", 1.0)]
    torch.testing.assert_close(qat([anchor, positive]), InfoNCELoss()([anchor, positive]))
    qat.set_progress(0.25)
    assert [p for p, _ in qat.precisions_for_step()] == ["float32", "int8", "binary"]


def training_args(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=3, learning_rate=1e-3,
                   report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    return MatryoshkaTrainingArguments(**{**options, **overrides})


def test_training_saves_the_tracked_ranges_that_encode_and_the_funnel_use(make_model, tmp_path, sentences):
    model = make_model(matryoshka_dimensions=(32, 16, 8))
    qat = QuantizationAwareLoss.from_config(model.config, InfoNCELoss(), precisions=["float32", "int8", "binary"])
    loss = MatryoshkaLoss.from_config(model.config, qat)
    before = [p.detach().clone() for p in model.parameters()]
    MatryoshkaTrainer(model=model, args=training_args(tmp_path), train_dataset=Dataset.from_dict(PAIRS),
                      loss=loss).train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    saved = model.config.quantization_ranges
    assert sorted(saved) == ["16", "32", "8"]
    for dim in (32, 16, 8):
        torch.testing.assert_close(torch.tensor(saved[str(dim)]), qat.tracked_ranges[dim].cpu())
    model.eval()
    codes = model.encode(sentences, dim=16, precision="int8")
    floats = model.encode(sentences, dim=16)
    torch.testing.assert_close(torch.as_tensor(codes), quantize(floats, "int8", torch.tensor(saved["16"])))
    # saved and loaded with the model; a funnel built from the model uses the trained ranges
    model.save_pretrained(tmp_path / "saved")
    from mrl_text import MatryoshkaModel

    reloaded = MatryoshkaModel.from_pretrained(tmp_path / "saved")
    assert reloaded.config.quantization_ranges == saved
    faiss = pytest.importorskip("faiss")
    del faiss
    from mrl_text.deploy.funnel import FunnelIndex

    index = FunnelIndex.from_model(model, sentences, stages=[(16, 5), (32, 3)], quantization="int8")
    torch.testing.assert_close(index.quantization_ranges, torch.tensor(saved["16"]))
    assert loss.get_config_dict()["loss"] == "QuantizationAwareLoss"  # what the model card reports
    assert loss.get_config_dict()["loss_config"]["precisions"] == ["float32", "int8", "binary"]


def test_trainer_drives_the_tanh_temperature_and_the_warmup(make_model, tmp_path):
    model = make_model(matryoshka_dimensions=(32, 16))
    qat = QuantizationAwareLoss.from_config(model.config, InfoNCELoss(), precisions=["float32", "binary"],
                                            binary_estimator="tanh", quantization_warmup=0.5)
    seen = []
    forward = qat.forward

    def record(embeddings, labels=None):
        seen.append((qat.progress, [p for p, _ in qat.precisions_for_step()], qat.temperature()))
        return forward(embeddings, labels)

    qat.forward = record
    before = [p.detach().clone() for p in model.parameters()]
    MatryoshkaTrainer(model=model, args=training_args(tmp_path, max_steps=4), train_dataset=Dataset.from_dict(PAIRS),
                      loss=MatryoshkaLoss.from_config(model.config, qat)).train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    progress = sorted({s[0] for s in seen})
    assert progress == [0.0, 0.25, 0.5, 0.75]
    assert all(p == ["float32"] for f, p, _ in seen if f < 0.5) and all(len(p) == 2 for f, p, _ in seen if f >= 0.5)
    temperatures = [t for _, _, t in sorted(seen)]
    assert temperatures[0] == 1.0 and temperatures == sorted(temperatures, reverse=True)
    assert qat.get_config_dict()["binary_estimator"] == "tanh"


def test_checkpoints_carry_the_ranges_trained_so_far(make_model, tmp_path):
    model = make_model(matryoshka_dimensions=(32, 16))
    loss = MatryoshkaLoss.from_config(model.config, QuantizationAwareLoss(InfoNCELoss(), precisions=["int8"]))
    args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    MatryoshkaTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PAIRS), loss=loss).train()
    import json

    checkpoint = json.loads((tmp_path / "run" / "checkpoint-1" / "config.json").read_text())
    assert sorted(checkpoint["quantization_ranges"]) == ["16", "32"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(precisions=["float32", "int4"]), "precision='int4' is not supported"),
        (dict(precisions=["float32", "binary"], precision_weights=[1.0]), "precision_weights=[1.0] has 1 weights"),
        (dict(precisions=["int8", "int8"]), "give each precision to train once"),
        (dict(precisions=["binary"], n_precisions_per_step=2), "n_precisions_per_step=2"),
        (dict(precisions=["binary"], ranges_momentum=1.0), "ranges_momentum=1.0"),
        (dict(precisions=["binary", "int8"], precision_weights=[0, 0]), "not all 0"),
        (dict(precisions=["binary"], binary_estimator="sign"), "binary_estimator='sign' is not one of"),
        (dict(precisions=["binary"], binary_temperature=0), "binary_temperature=0 must be"),
        (dict(precisions=["binary"], binary_temperature=(1.0,)), "binary_temperature=(1.0,"),
        (dict(precisions=["float32", "binary"], quantization_warmup=1.0), "quantization_warmup=1.0 must be"),
        (dict(precisions=["binary"], quantization_warmup=0.2), "precisions=['binary'] has no float32"),
    ],
)
def test_bad_options_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        QuantizationAwareLoss(InfoNCELoss(), **kwargs)


def test_binary_at_a_size_not_a_multiple_of_8_is_refused(make_model):
    model = make_model(matryoshka_dimensions=(32, 12))
    with pytest.raises(ValueError, match="dim=12"):
        QuantizationAwareLoss.from_config(model.config, InfoNCELoss(), precisions=["float32", "binary"])
    qat = QuantizationAwareLoss(InfoNCELoss(), precisions=["binary"])  # built by hand: the first step says it
    with pytest.raises(ValueError, match="dim=12"):
        qat([unit(4, 12), unit(4, 12, seed=1)])


def test_a_model_without_int8_ranges_says_how_to_get_them(make_model, sentences):
    with pytest.raises(ValueError, match="calibrate_quantization"):
        make_model(matryoshka_dimensions=(32, 16)).encode(sentences, dim=16, precision="int8")


def test_recipe_precisions_option_builds_the_quantization_aware_loss():
    from mrl_text import MatryoshkaConfig

    from .conftest import RECIPES, load_module, tiny_bert_config

    recipe = load_module(RECIPES / "train_bert.py")
    config = MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[32, 16, 8])
    options, _ = recipe.parse_arguments(["--precisions", "float32", "binary", "--precision_weights", "1", "2"])
    loss = recipe.build_loss(options, config)
    assert isinstance(loss, MatryoshkaLoss) and isinstance(loss.base_loss, QuantizationAwareLoss)
    assert (loss.base_loss.precisions, loss.base_loss.precision_weights) == (["float32", "binary"], [1.0, 2.0])
    assert isinstance(recipe.build_loss(recipe.parse_arguments([])[0], config).base_loss, InfoNCELoss)
    options, _ = recipe.parse_arguments(["--precisions", "float32", "int4"])
    with pytest.raises(ValueError, match="int4"):
        recipe.build_loss(options, config)


def test_benchmark_targets_and_report_from_runs(tmp_path):
    import json
    import sys
    from argparse import Namespace
    from pathlib import Path

    from .conftest import load_module

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    qat_bench = load_module(benchmarks / "quality_qat.py")
    sizes = [384, 128, 64]

    def run(method, float_value, binary_value):
        values = {f"{cell}@{d}": (binary_value if cell.startswith("binary") else float_value) - d / 10_000
                  for cell in qat_bench.CELLS for d in sizes}
        return {"method": method, "seed": 0, "steps": 3, "data": "toy", "values": values, "int8_ranges": "-"}

    runs = [run("mrl", 0.60, 0.50), run("qat", 0.60, 0.58)]
    runs[0]["funnel_recall"], runs[1]["funnel_recall"] = {"20": 0.5, "50": 0.8}, {"20": 0.7, "50": 0.9}
    checks = {name: ok for name, _, ok in qat_bench.targets(runs, sizes)}
    assert checks["QAT recovers >= half the post-training binary loss at 384 (gain - loss/2)"]
    assert not checks["moonshot: QAT binary 384 within 1 of QAT float 384"]  # 2 points below
    assert checks["binary funnel recall@10 at keep 20: QAT >= MRL (x100)"]
    args = Namespace(methods="mrl,qat", sizes=sizes, model="all-MiniLM-L6-v2", batch_size=16, epochs=1, lr=5e-5,
                     warmup_ratio=0.1, max_seq_length=32, eval_max_seq_length=64, precisions=["float32", "binary"],
                     rescore=100, limit_train=None, limit_eval=None, results=str(tmp_path), report_name="qat",
                     task="scifact", funnel_size=128, precision_weights=None)
    qat_bench.write(args, ["--limit-eval", "1"], runs, {})
    report = json.loads((tmp_path / "quality_qat.json").read_text())
    assert report["command"].endswith("--limit-eval 1") and len(report["runs"]) == 2
    text = (tmp_path / "quality_qat.md").read_text()
    assert "| qat | binary | 54.16 [48] | 56.72 [16] | 57.36 [8] |" in text  # x100, bytes per vector in brackets
    assert "| qat | 8: binary 64 (57.36); 64: int8 64 (59.36) |" in text  # the best cell per byte budget
    assert "| method | keep 20 | keep 50 |" in text and "| qat | 70.00 | 90.00 |" in text  # binary funnel recall
    # --reuse-runs takes a qat run only when it was trained with the same QAT settings
    args.binary_estimator, args.binary_temperature, args.quantization_warmup = "clipped", [1.0, 0.1], 0.0
    recorded = {**runs[1], "qat_settings": qat_bench.qat_settings(args)}
    assert qat_bench.reusable(recorded, args) and qat_bench.reusable(runs[0], args)
    args.precision_weights = [1.0, 3.0]
    assert not qat_bench.reusable(recorded, args) and qat_bench.reusable(runs[0], args)
