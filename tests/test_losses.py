"""Losses: MatryoshkaLoss and its base losses, all called loss(embeddings, labels), against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from mrl_text import MatryoshkaConfig, MatryoshkaForSequenceClassification, truncate_embeddings
from mrl_text.losses import (
    CoSENTLoss,
    DistillMSELoss,
    InfoNCELoss,
    MatryoshkaCrossEntropyLoss,
    MatryoshkaLoss,
    get_loss,
)

from .conftest import tiny_bert_config


def unit(x):
    return F.normalize(x, dim=-1)


def test_infonce_matches_hand_computation_with_hard_negatives():
    torch.manual_seed(0)
    anchor, positive, negative = (unit(torch.randn(3, 8)) for _ in range(3))
    loss = InfoNCELoss(scale=10.0)([anchor, positive, negative])
    expected = 0.0
    for i in range(3):
        candidates = [anchor[i] @ positive[j] for j in range(3)] + [anchor[i] @ negative[j] for j in range(3)]
        logits = torch.stack(candidates) * 10.0
        expected += -(logits[i] - torch.logsumexp(logits, 0))
    torch.testing.assert_close(loss, expected / 3)


def test_infonce_symmetric_and_temperature():
    torch.manual_seed(1)
    anchor, positive = unit(torch.randn(4, 8)), unit(torch.randn(4, 8))
    forward = InfoNCELoss(scale=20.0)([anchor, positive])
    backward = InfoNCELoss(scale=20.0)([positive, anchor])
    torch.testing.assert_close(InfoNCELoss(scale=20.0, symmetric=True)([anchor, positive]), (forward + backward) / 2)
    torch.testing.assert_close(InfoNCELoss(temperature=0.05)([anchor, positive]), forward)
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0)


def test_matryoshka_loss_is_weighted_sum_of_per_size_losses():
    torch.manual_seed(0)
    config = MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[32, 16, 8],
                              matryoshka_weights=[1, 2, 0.5])
    anchor, positive = torch.randn(5, 32), torch.randn(5, 32)  # full size, not normalized (as the model returns)
    base = InfoNCELoss(scale=20.0)
    loss = MatryoshkaLoss.from_config(config, base)([anchor, positive])
    expected = sum(
        w * base([unit(anchor[:, :d]), unit(positive[:, :d])]) for d, w in zip([32, 16, 8], [1.0, 2.0, 0.5])
    )
    torch.testing.assert_close(loss, expected)


def test_matryoshka_loss_gradient_reaches_all_prefixes_once():
    """The full embedding gets gradient from every size's term through one tensor (one encoder pass)."""
    full = torch.randn(4, 16, requires_grad=True)
    other = torch.randn(4, 16)
    MatryoshkaLoss(InfoNCELoss(), [16, 4], matryoshka_weights=[0.0, 1.0])([full, other]).backward()
    # Only the 4-d term is on: coordinates past 4 get no gradient, the first 4 do.
    assert full.grad[:, 4:].abs().sum() == 0
    assert full.grad[:, :4].abs().sum() > 0


def test_n_dims_per_step_sorted_and_full_size_flag():
    dims = [64, 32, 16, 8, 4]
    keep = MatryoshkaLoss(InfoNCELoss(), dims, n_dims_per_step=3, keep_full_dim=True)
    drop = MatryoshkaLoss(InfoNCELoss(), dims, n_dims_per_step=2, keep_full_dim=False)
    seen_without_full = False
    for _ in range(200):
        sizes = [d for d, _ in keep.sizes_for_step()]
        assert len(sizes) == 3 and sizes[0] == 64 and sizes == sorted(sizes, reverse=True)
        sizes = [d for d, _ in drop.sizes_for_step()]
        assert len(sizes) == 2 and sizes == sorted(sizes, reverse=True)
        seen_without_full |= 64 not in sizes
    assert seen_without_full  # without the flag, the full size is sampled like any other
    with pytest.raises(ValueError, match="n_dims_per_step"):
        MatryoshkaLoss(InfoNCELoss(), dims, n_dims_per_step=6)


def test_matryoshka_loss_sorts_sizes_with_their_weights():
    loss = MatryoshkaLoss(InfoNCELoss(), [8, 32, 16], matryoshka_weights=[3, 1, 2])
    assert loss.matryoshka_dimensions == [32, 16, 8] and loss.matryoshka_weights == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="one weight per size"):
        MatryoshkaLoss(InfoNCELoss(), [32, 16], matryoshka_weights=[1.0])


def test_cosent_hand_case():
    # Pair 0 scored above pair 1; their cosines are 0.8 and 0.2 (right order) -> small loss, reversed -> large.
    e1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    e2 = torch.tensor([[0.8, 0.6], [0.2, math.sqrt(1 - 0.04)]])
    scale = 5.0
    right = CoSENTLoss(scale)([e1, e2], torch.tensor([4.0, 1.0]))
    wrong = CoSENTLoss(scale)([e1, e2], torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(right, torch.log1p(torch.exp(torch.tensor(scale * (0.2 - 0.8)))))
    torch.testing.assert_close(wrong, torch.log1p(torch.exp(torch.tensor(scale * (0.8 - 0.2)))))
    # Equal scores impose no order: log(1 + nothing) = 0.
    assert CoSENTLoss()([e1, e2], torch.tensor([2.0, 2.0])).item() == 0.0


def test_cosent_wrapped_in_matryoshka_passes_labels():
    torch.manual_seed(0)
    a, b, scores = torch.randn(6, 16), torch.randn(6, 16), torch.rand(6) * 5
    loss = MatryoshkaLoss(CoSENTLoss(), [16, 4])([a, b], labels=scores)
    expected = CoSENTLoss()([a, b], scores) + CoSENTLoss()([a[:, :4], b[:, :4]], scores)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("efficient", [False, True])
def test_matryoshka_cross_entropy_matches_per_head_sum(efficient):
    torch.manual_seed(0)
    config = MatryoshkaConfig(
        encoder=tiny_bert_config(), matryoshka_dimensions=[32, 8], matryoshka_weights=[1.0, 0.5],
        efficient_heads=efficient, num_labels=3,
    )
    model = MatryoshkaForSequenceClassification(config)
    full = torch.randn(4, 32)
    labels = torch.tensor([0, 2, 1, 2])
    logits = model.classifier(full)
    loss = MatryoshkaCrossEntropyLoss(model)([full], labels)
    expected = F.cross_entropy(logits[0], labels) + 0.5 * F.cross_entropy(logits[1], labels)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="out of range"):
        MatryoshkaCrossEntropyLoss(model)([full], torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="already weights every size"):
        MatryoshkaLoss(MatryoshkaCrossEntropyLoss(model), [32, 8])


def test_cross_entropy_refuses_a_model_without_heads(make_model):
    with pytest.raises(ValueError, match="MatryoshkaForSequenceClassification"):
        MatryoshkaCrossEntropyLoss(make_model())


def test_distill_mse_truncates_the_teacher_like_the_student():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 16), torch.randn(3, 48)  # a wider teacher is cut to the student's sizes
    loss = MatryoshkaLoss(DistillMSELoss(), [16, 8, 4])([student], labels=teacher)
    expected = sum(
        F.mse_loss(truncate_embeddings(student, d), truncate_embeddings(teacher, d)) for d in (16, 8, 4)
    )
    torch.testing.assert_close(loss, expected)
    # A perfect student has zero loss at every size.
    assert MatryoshkaLoss(DistillMSELoss(), [16, 8])([teacher[:, :16]], teacher).item() < 1e-12


def test_get_loss_registry(make_model):
    assert isinstance(get_loss("infonce", scale=10.0, symmetric=True), InfoNCELoss)
    assert isinstance(get_loss("cosent"), CoSENTLoss)
    classifier = MatryoshkaForSequenceClassification(MatryoshkaConfig(encoder=tiny_bert_config(), num_labels=2))
    assert isinstance(get_loss("cross_entropy", model=classifier), MatryoshkaCrossEntropyLoss)
    assert get_loss("distill_mse", teacher=make_model()).teacher is not None
    with pytest.raises(ValueError, match=r"needs the option\(s\) \['model'\]"):
        get_loss("cross_entropy")
    with pytest.raises(ValueError, match="cosent, cross_entropy, distill_mse, infonce"):
        get_loss("triplet")
    with pytest.raises(ValueError, match="margin"):
        get_loss("cosent", margin=1.0)


def test_distill_mse_owns_a_frozen_teacher_that_embeds_the_batch(make_model, tiny_tokenizer):
    teacher = make_model(seed=1).train()
    loss = MatryoshkaLoss(DistillMSELoss(teacher=teacher), [32, 8])
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert loss.teacher_tokenizer is tiny_tokenizer and loss.needs_labels is False
    features = tiny_tokenizer(["a man plays guitar", "the dog runs"], padding=True, return_tensors="pt")
    targets = loss.compute_labels({"text": features}, None)
    torch.testing.assert_close(targets, teacher(**features).full_embeddings)
    # Without a teacher the labels are the teacher's embeddings, and a clear error says so when they are missing.
    assert MatryoshkaLoss(DistillMSELoss(), [32, 8]).needs_labels is True
    with pytest.raises(ValueError, match="needs a teacher"):
        MatryoshkaLoss(DistillMSELoss(), [32, 8]).compute_labels({"text": features}, torch.tensor([0, 1]))


def test_a_wrong_number_of_embeddings_is_refused_with_the_call():
    with pytest.raises(ValueError,
                       match=r"CoSENTLoss is called as loss\(\[embeddings1, embeddings2\], labels\).*got 3"):
        CoSENTLoss()([torch.randn(2, 4)] * 3, torch.rand(2))
    with pytest.raises(ValueError, match="got one tensor"):
        InfoNCELoss()(torch.randn(2, 4))


def test_config_dict_and_citation_say_what_trained_the_model():
    config = MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[32, 16, 8],
                              matryoshka_weights=[1, 2, 3])
    loss = MatryoshkaLoss.from_config(config, InfoNCELoss(scale=10.0, symmetric=True), n_dims_per_step=2)
    assert loss.get_config_dict() == {
        "loss": "InfoNCELoss",
        "loss_config": {"scale": 10.0, "symmetric": True, "gather_across_devices": True},
        "matryoshka_dimensions": [32, 16, 8],
        "matryoshka_weights": [1.0, 2.0, 3.0],
        "n_dims_per_step": 2,
        "keep_full_dim": True,
        "normalize": True,
        "prefix_targets": "labels",
    }
    assert loss.citation.startswith("@inproceedings{kusupati2022matryoshka,")
    assert "Matryoshka Representation" in loss.citation
    assert "oord2018representation" in loss.base_loss.citation
    assert "su2022cosent" in CoSENTLoss().citation and "reimers2020" in DistillMSELoss().citation
    assert MatryoshkaLoss(DistillMSELoss(), [8]).get_config_dict()["loss_config"] == {"teacher": None}
    classifier = MatryoshkaForSequenceClassification(
        MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[32, 8], num_labels=3)
    )
    assert MatryoshkaCrossEntropyLoss(classifier).get_config_dict()["matryoshka_dimensions"] == [32, 8]
    assert MatryoshkaCrossEntropyLoss(classifier).citation == loss.citation


def test_image_text_loss_is_the_symmetric_infonce_at_the_models_temperature():
    from types import SimpleNamespace

    from mrl_text.losses import ImageTextInfoNCELoss

    torch.manual_seed(0)
    image, text, scale = unit(torch.randn(3, 8)), unit(torch.randn(3, 8)), torch.tensor(7.0)
    loss = ImageTextInfoNCELoss(SimpleNamespace(logit_scale=scale))([image, text])
    targets = torch.arange(3)
    image_to_text = F.cross_entropy(scale * image @ text.T, targets)
    expected = (image_to_text + F.cross_entropy(scale * text @ image.T, targets)) / 2
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="logit_scale"):
        ImageTextInfoNCELoss(torch.nn.Linear(2, 2))


def test_prefix_targets_full_size_distils_the_full_size_scores():
    torch.manual_seed(0)
    a, p = F.normalize(torch.randn(6, 16), dim=-1), F.normalize(torch.randn(6, 16), dim=-1)
    base = InfoNCELoss(scale=20.0, gather_across_devices=False)
    loss = MatryoshkaLoss(base, [16, 4], [1.0, 0.5], prefix_targets="full_size")([a, p])
    teacher = (20.0 * a @ p.T).log_softmax(-1)
    student = (20.0 * F.normalize(a[:, :4], dim=-1) @ F.normalize(p[:, :4], dim=-1).T).log_softmax(-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1).mean()
    torch.testing.assert_close(loss, base([a, p]) + 0.5 * kl)
    # A prefix that already ranks like the full size costs nothing; with labels it would pay InfoNCE again.
    a0, p0 = (F.normalize(F.pad(x[:, :4], (0, 12)), dim=-1) for x in (a, p))
    distilled = MatryoshkaLoss(base, [16, 4], prefix_targets="full_size")
    torch.testing.assert_close(distilled([a0, p0]), base([a0, p0]))
    torch.testing.assert_close(MatryoshkaLoss(base, [16, 4])([a0, p0]), 2 * base([a0, p0]))
    # The full size's scores are the target, not trained by the prefix term: its gradient reaches the prefix only.
    a1 = a.clone().requires_grad_(True)
    (MatryoshkaLoss(base, [16, 4], [0.0, 1.0], prefix_targets="full_size")([a1, p])).backward()
    assert a1.grad[:, 4:].abs().max() == 0 and a1.grad[:, :4].abs().max() > 0
    assert distilled.get_config_dict()["prefix_targets"] == "full_size"


def test_prefix_targets_are_checked():
    with pytest.raises(ValueError, match="prefix_targets='teacher'; choose 'labels' or 'full_size'"):
        MatryoshkaLoss(InfoNCELoss(), [16, 4], prefix_targets="teacher")
    with pytest.raises(ValueError, match="CoSENTLoss has no `logits`"):
        MatryoshkaLoss(CoSENTLoss(), [16, 4], prefix_targets="full_size")


@pytest.mark.parametrize("efficient", [False, True])
def test_scaled_head_inputs_lengthen_small_prefixes_and_survive_saving(efficient, tmp_path):
    from mrl_text.training.optimization import build_optimizer

    torch.manual_seed(0)
    config = MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[32, 8], efficient_heads=efficient,
                              num_labels=3, scale_head_inputs=True)
    model = MatryoshkaForSequenceClassification(config)
    full = torch.randn(4, 32)
    wide, narrow = model.classifier(full)
    model.classifier.scale_inputs = False
    plain_wide, plain_narrow = model.classifier(full)
    torch.testing.assert_close(wide, plain_wide)  # the full size reads its input as is
    bias = model.classifier.linear.bias if efficient else model.classifier.heads[1].bias
    torch.testing.assert_close(narrow - bias, 2.0 * (plain_narrow - bias))  # sqrt(32 / 8) = 2
    model.classifier.scale_inputs = True
    model.save_pretrained(tmp_path)
    loaded = MatryoshkaForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.classifier.scale_inputs and "scale_inputs=True" in repr(loaded.classifier)
    torch.testing.assert_close(loaded.classifier(full)[1], narrow)
    # Heads that scale their inputs need no per-size learning rate on top (it would scale twice).
    assert {g["lr"] for g in build_optimizer(model, 1e-4, 1e-2, scale_heads_by_size=True).param_groups} == {1e-4, 1e-2}
    old = MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[32, 8], num_labels=3)
    assert not MatryoshkaForSequenceClassification(old).classifier.scale_inputs  # configs saved before the option


def scheduled_loss(make_model, tmp_path, **schedule):
    """`at(step)`: the trainer's MatryoshkaLoss after its size schedule's callback ran before that step of 10
    (`schedule`: the SizeSchedule's fractions)."""
    from datasets import Dataset
    from transformers import TrainerControl, TrainerState

    from mrl_text import MatryoshkaTrainer, MatryoshkaTrainingArguments, SizeSchedule

    args = MatryoshkaTrainingArguments(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4,
                                       report_to="none", use_cpu=True)
    data = Dataset.from_dict({"anchor": ["a b", "c d", "e f", "g h"], "positive": ["b a", "d c", "f e", "h g"]})
    model = make_model()
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=data, size_schedule=SizeSchedule(**schedule))
    state = TrainerState(max_steps=10)

    def at(step):
        state.global_step = step
        trainer.size_schedule.on_step_begin(args, state, TrainerControl(), model=model)
        return trainer.loss

    return at


def test_smaller_sizes_scale_zero_computes_the_full_size_only(make_model, tmp_path):
    torch.manual_seed(0)
    a, p = torch.randn(4, 16), torch.randn(4, 16)
    loss = MatryoshkaLoss(InfoNCELoss(), [16, 8, 4], n_dims_per_step=2, keep_full_dim=False)
    loss.smaller_sizes_scale = 0.0  # what a SizeSchedule sets during full_size_only_fraction
    assert loss.sizes_for_step() == [(16, 1.0)]  # the full size even where the sample could have left it out
    torch.testing.assert_close(loss([a, p]), InfoNCELoss()([F.normalize(a, dim=-1), F.normalize(p, dim=-1)]))
    at = scheduled_loss(make_model, tmp_path, full_size_only_fraction=0.5)
    for step, only_full in ((0, True), (4, True), (5, False), (9, False)):
        assert (at(step).smaller_sizes_scale == 0) is only_full


def test_smaller_sizes_warmup_ramps_the_smaller_weights_from_zero(make_model, tmp_path):
    torch.manual_seed(0)
    a, p = torch.randn(4, 16), torch.randn(4, 16)
    loss = MatryoshkaLoss(InfoNCELoss(), [16, 8, 4], [4.0, 1.0, 2.0])
    loss.smaller_sizes_scale = 0.25  # the full size keeps its weight; every smaller one is scaled
    assert loss.sizes_for_step() == [(16, 4.0), (8, 0.25), (4, 0.5)]
    torch.testing.assert_close(loss([a, p]), MatryoshkaLoss(InfoNCELoss(), [16, 8, 4], [4.0, 0.25, 0.5])([a, p]))
    at = scheduled_loss(make_model, tmp_path, smaller_sizes_warmup_fraction=0.4)
    for step, scale in ((0, 0.25), (1, 0.5), (3, 1.0), (9, 1.0)):  # linear over the first 4 of 10 steps
        assert at(step).smaller_sizes_scale == pytest.approx(scale)


def test_weighted_size_sum_scales_the_smaller_sizes_and_skips_zero_weights():
    from mrl_text.models.modeling_matryoshka_utils import weighted_size_sum

    called = []

    def loss_at(index):
        called.append(index)
        return torch.tensor(float(10 ** index))

    assert weighted_size_sum(loss_at, [2.0, 1.0, 3.0], smaller_sizes_scale=0.5).item() == 2.0 + 0.5 * 10 + 1.5 * 100
    assert called == [0, 1, 2]
    called.clear()
    assert weighted_size_sum(loss_at, [2.0, 0.0, 3.0], smaller_sizes_scale=0.0).item() == 2.0
    assert called == [0]  # a size that weighs 0 is never computed
    called.clear()
    assert weighted_size_sum(loss_at, [1.0, 1.0, 1.0], sizes=[0, 2]).item() == 101.0 and called == [0, 2]
