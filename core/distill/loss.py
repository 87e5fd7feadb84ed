"""Distillation losses, pure torch: soft targets for classification, output matching for
regression and embeddings, each mixed with the labels when there are any.

Every function takes the student's and the teacher's raw outputs for one batch (any
shape with the batch first) and returns a scalar averaged over the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

OutputLoss = Literal["mse", "cosine"]


def soft_target_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    The T^2 factor (Hinton et al., 2015) keeps the soft targets' gradients the same size
    whatever the temperature, so alpha weighs the two terms alike at any T.
    """
    from torch.nn import functional

    rows = len(student_logits)
    student = functional.log_softmax(student_logits.reshape(rows, -1) / temperature, dim=1)
    teacher = functional.log_softmax(teacher_logits.reshape(rows, -1) / temperature, dim=1)
    divergence = functional.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return divergence * temperature**2


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """-sum p_t log q_s with p_t = softmax(t/T), q_s = softmax(s/T), averaged over the
    batch: the cross-entropy form of distillation. It equals KL(p_t || q_s) + H(p_t),
    and H(p_t) does not depend on the student, so both give the same gradients."""
    from torch.nn import functional

    rows = len(student_logits)
    student = functional.log_softmax(student_logits.reshape(rows, -1) / temperature, dim=1)
    teacher = functional.softmax(teacher_logits.reshape(rows, -1) / temperature, dim=1)
    return -(teacher * student).sum(dim=1).mean()


def classification_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, s).

    Without labels the soft-target term is the whole loss (unlabelled data is enough)."""
    from torch.nn import functional

    soft = soft_target_kl(student_logits, teacher_logits, temperature)
    if labels is None:
        return soft
    hard = functional.cross_entropy(student_logits.reshape(len(student_logits), -1), labels)
    return alpha * soft + (1.0 - alpha) * hard


def output_matching(
    student_outputs: torch.Tensor, teacher_outputs: torch.Tensor, kind: OutputLoss
) -> torch.Tensor:
    """MSE to the teacher's outputs, or 1 - cosine similarity per sample (embeddings,
    whose direction matters more than their length), averaged over the batch."""
    from torch.nn import functional

    if kind == "mse":
        return functional.mse_loss(student_outputs, teacher_outputs.reshape(student_outputs.shape))
    rows = len(student_outputs)
    similarity = functional.cosine_similarity(
        student_outputs.reshape(rows, -1), teacher_outputs.reshape(rows, -1), dim=1
    )
    return (1.0 - similarity).mean()


def regression_loss(
    student_outputs: torch.Tensor,
    teacher_outputs: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    kind: OutputLoss,
    alpha: float,
) -> torch.Tensor:
    """alpha * match(s, t) + (1 - alpha) * MSE(s, y); match alone without labels."""
    from torch.nn import functional

    match = output_matching(student_outputs, teacher_outputs, kind)
    if labels is None:
        return match
    hard = functional.mse_loss(student_outputs, labels.reshape(student_outputs.shape))
    return alpha * match + (1.0 - alpha) * hard


def label_loss(
    outputs: torch.Tensor, labels: torch.Tensor, *, classification: bool
) -> torch.Tensor:
    """The label-only baseline's loss: cross-entropy for classes, MSE otherwise."""
    from torch.nn import functional

    if classification:
        return functional.cross_entropy(outputs.reshape(len(outputs), -1), labels)
    return functional.mse_loss(outputs, labels.reshape(outputs.shape))
