"""Distillation losses against values worked out by hand.

Two classes make the arithmetic easy: teacher logits [ln 3, 0] give p_t = [3/4, 1/4],
student logits [0, 0] give q_s = [1/2, 1/2]; then
KL(p_t || q_s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120,
-sum p_t log q_s = ln 2 = 0.6931472 and H(p_t) = 0.5623351.
"""

from __future__ import annotations

import math

import pytest
import torch

from core.distill.loss import (
    classification_loss,
    label_loss,
    output_matching,
    regression_loss,
    soft_cross_entropy,
    soft_target_kl,
)

KL = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
ENTROPY = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
STUDENT = torch.tensor([[0.0, 0.0]])


def teacher_at(temperature: float) -> torch.Tensor:
    """Teacher logits whose softmax at `temperature` is [3/4, 1/4]."""
    return torch.tensor([[temperature * math.log(3.0), 0.0]])


def test_soft_targets_at_temperature_1_are_the_kl_divergence() -> None:
    assert soft_target_kl(STUDENT, teacher_at(1.0), 1.0).item() == pytest.approx(0.1308120)
    assert abs(KL - 0.1308120) < 1e-7  # the docstring's arithmetic


def test_soft_targets_are_scaled_by_the_temperature_squared() -> None:
    for temperature in (2.0, 4.0, 10.0):
        loss = soft_target_kl(STUDENT, teacher_at(temperature), temperature)
        assert loss.item() == pytest.approx(temperature**2 * KL, rel=1e-6)


def test_the_soft_term_averages_over_the_batch() -> None:
    students = torch.cat([STUDENT, torch.tensor([[math.log(3.0), 0.0]])])  # 2nd matches
    teachers = torch.cat([teacher_at(1.0), teacher_at(1.0)])
    assert soft_target_kl(students, teachers, 1.0).item() == pytest.approx(KL / 2, rel=1e-6)


def test_alpha_mixes_soft_targets_and_cross_entropy_with_the_labels() -> None:
    labels = torch.tensor([0])  # CE of [0, 0] at class 0: ln 2
    loss = classification_loss(STUDENT, teacher_at(2.0), labels, temperature=2.0, alpha=0.9)
    assert loss.item() == pytest.approx(0.9 * 4.0 * KL + 0.1 * math.log(2.0), rel=1e-6)


def test_without_labels_the_soft_term_is_the_whole_loss() -> None:
    loss = classification_loss(STUDENT, teacher_at(2.0), None, temperature=2.0, alpha=0.5)
    assert loss.item() == pytest.approx(4.0 * KL, rel=1e-6)


def test_the_cross_entropy_form_is_the_kl_plus_the_teachers_entropy() -> None:
    assert soft_cross_entropy(STUDENT, teacher_at(1.0)).item() == pytest.approx(math.log(2.0))
    assert math.log(2.0) == pytest.approx(KL + ENTROPY)


def test_alpha_1_at_temperature_1_is_the_sources_cross_entropy_up_to_a_constant() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 10, generator=generator)
    student = torch.randn(16, 10, generator=generator, requires_grad=True)
    labels = torch.randint(0, 10, (16,), generator=generator)

    ours = classification_loss(student, teacher, labels, temperature=1.0, alpha=1.0)
    source = soft_cross_entropy(student, teacher)  # L = -sum p_t log q_t
    p_t = torch.softmax(teacher, dim=1)
    teacher_entropy = -(p_t * torch.log(p_t)).sum(dim=1).mean()
    assert ours.item() == pytest.approx((source - teacher_entropy).item(), rel=1e-5)
    (ours_grad,) = torch.autograd.grad(ours, student)
    (source_grad,) = torch.autograd.grad(source, student)
    torch.testing.assert_close(ours_grad, source_grad)


def test_class_outputs_of_any_trailing_shape_are_flattened() -> None:
    loss = soft_target_kl(STUDENT[:, None, :], teacher_at(1.0)[:, None, :], 1.0)
    assert loss.item() == pytest.approx(KL, rel=1e-6)


def test_mse_matches_the_teachers_outputs() -> None:
    loss = output_matching(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 2.0]]), "mse")
    assert loss.item() == pytest.approx(2.0)  # (2^2 + 0^2) / 2


def test_cosine_matching_ignores_length_and_punishes_direction() -> None:
    same_direction = output_matching(
        torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]]), "cosine"
    )
    orthogonal = output_matching(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), "cosine")
    assert same_direction.item() == pytest.approx(0.0, abs=1e-7)
    assert orthogonal.item() == pytest.approx(1.0)


def test_regression_mixes_the_match_to_the_teacher_with_mse_to_the_labels() -> None:
    student, teacher, labels = torch.tensor([[1.0]]), torch.tensor([[3.0]]), torch.tensor([[2.0]])
    loss = regression_loss(student, teacher, labels, kind="mse", alpha=0.5)
    assert loss.item() == pytest.approx(0.5 * 4.0 + 0.5 * 1.0)
    assert regression_loss(student, teacher, None, kind="mse", alpha=0.5).item() == 4.0


def test_the_label_only_baseline_uses_cross_entropy_or_mse() -> None:
    assert label_loss(STUDENT, torch.tensor([1]), classification=True).item() == pytest.approx(
        math.log(2.0)
    )
    assert label_loss(
        torch.tensor([[1.0]]), torch.tensor([3.0]), classification=False
    ).item() == pytest.approx(4.0)
