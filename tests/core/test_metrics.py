"""Task metrics on hand-made numbers: each has a name, a direction and a definition checked
against an independent computation (scikit-learn, scipy) where one exists."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import r2_score, roc_auc_score

from core.metrics import (
    METRICS,
    check_metric_for_task,
    compute,
    ctc_decode,
    edit_distance,
    judged_metric,
    reported_metrics,
    roc_auc,
)
from core.spec import TaskSpec

SEQUENCE_CTC = TaskSpec.model_validate({"kind": "sequence", "ctc": {"blank": 0}})


def one_hot_scores(paths: list[list[int]], classes: int = 5) -> np.ndarray:
    """(N, T, C) scores whose argmax follows `paths`."""
    scores = np.zeros((len(paths), len(paths[0]), classes), np.float32)
    for row, path in enumerate(paths):
        scores[row, np.arange(len(path)), path] = 1.0
    return scores


def test_ctc_decoding_merges_repeats_and_drops_blanks() -> None:
    scores = one_hot_scores([[1, 1, 0, 1, 2, 2, 0], [0, 3, 0, 3, 3, 0, 0]])
    assert ctc_decode(scores, blank=0, merge_repeats=True) == [[1, 1, 2], [3, 3]]
    assert ctc_decode(scores, blank=0, merge_repeats=False) == [[1, 1, 1, 2, 2], [3, 3, 3]]


def test_edit_distance_counts_insertions_deletions_and_substitutions() -> None:
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([1, 2], [3, 4, 2]) == 2
    assert edit_distance([], [1, 2]) == 2


def test_exact_match_and_character_accuracy_against_padded_labels() -> None:
    scores = one_hot_scores([[1, 0, 2, 0], [3, 3, 0, 4], [2, 0, 0, 0]])
    labels = np.array([[1, 2, -1], [3, 4, -1], [1, 2, 3]])  # -1 pads the ragged rows
    reference = scores  # not read by the label metrics
    assert compute("exact_match", SEQUENCE_CTC, scores, labels, reference) == pytest.approx(2 / 3)
    # errors: 0 + 0 + edit([2], [1, 2, 3]) = 2 over 7 label tokens
    assert compute("cer", SEQUENCE_CTC, scores, labels, reference) == pytest.approx(2 / 7)
    assert compute("char_accuracy", SEQUENCE_CTC, scores, labels, reference) == pytest.approx(5 / 7)


def test_without_labels_a_recogniser_is_judged_against_the_original_s_decoding() -> None:
    original = one_hot_scores([[1, 0, 2, 0], [3, 0, 0, 4]])
    changed = one_hot_scores([[1, 0, 2, 0], [3, 0, 0, 3]])
    name = judged_metric(SEQUENCE_CTC, has_labels=False)
    assert name == "exact_match_agreement"
    assert compute(name, SEQUENCE_CTC, changed, None, original) == 0.5
    assert compute(name, SEQUENCE_CTC, original, None, original) == 1.0


def test_per_position_agreement_and_accuracy() -> None:
    task = TaskSpec(kind="sequence")
    original = one_hot_scores([[1, 2, 3, 4]])
    changed = one_hot_scores([[1, 2, 0, 4]])
    assert compute("position_agreement", task, changed, None, original) == 0.75
    labels = np.array([[1, 2, 3, -1]])  # the padded position is not scored
    assert compute("position_accuracy", task, changed, labels, original) == pytest.approx(2 / 3)


MASK = TaskSpec(kind="mask", threshold=0.5)


def test_iou_is_per_sample_and_two_empty_masks_agree() -> None:
    outputs = np.array([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]])
    labels = np.array([[1, 0, 0, 0], [0, 0, 0, 0]])
    # sample 0: intersection 1, union 2; sample 1: both empty
    assert compute("iou", MASK, outputs, labels, outputs) == pytest.approx((0.5 + 1.0) / 2)
    assert compute("decision_agreement", MASK, outputs, None, outputs > 2) == pytest.approx(6 / 8)


def test_auc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(500) > 0.6
    scores = np.round(rng.random(500) + truth * 0.3, 1)  # rounded: many ties
    assert roc_auc(scores, truth) == pytest.approx(roc_auc_score(truth, scores))


EMBEDDING = TaskSpec(kind="embedding")


def test_embedding_metrics_mean_min_cosine_and_rank_correlation() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(40, 16))
    noisy = reference + rng.normal(scale=0.3, size=reference.shape)
    mean = compute("cosine_similarity", EMBEDDING, noisy, None, reference)
    lowest = compute("min_cosine", EMBEDDING, noisy, None, reference)
    assert 0.5 < lowest < mean < 1.0
    rank = compute("rank_correlation", EMBEDDING, noisy, None, reference)

    def pairwise(v: np.ndarray) -> np.ndarray:
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        return (unit @ unit.T)[np.triu_indices(len(v), k=1)]

    expected = spearmanr(pairwise(noisy), pairwise(reference)).statistic
    assert rank == pytest.approx(expected, abs=1e-9)
    assert compute("rank_correlation", EMBEDDING, reference, None, reference) == pytest.approx(1.0)


REGRESSION = TaskSpec(kind="regression")


def test_r2_has_a_scale_and_the_original_scores_one_against_itself() -> None:
    rng = np.random.default_rng(2)
    target = rng.normal(loc=100.0, scale=5.0, size=200)
    predicted = target + rng.normal(scale=1.0, size=200)
    assert compute("r2", REGRESSION, predicted, target, target) == pytest.approx(
        r2_score(target, predicted)
    )
    assert compute("r2_agreement", REGRESSION, target, None, target) == 1.0
    rmse = np.sqrt(np.mean((predicted - target) ** 2))
    assert compute("relative_rmse", REGRESSION, predicted, target, target) == pytest.approx(
        rmse / target.std()
    )


def test_top5_counts_the_label_among_the_five_highest_scores() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.0]])
    labels = np.array([4, 5])
    assert compute("top5", TaskSpec(), scores, labels, scores) == 0.5
    assert compute("accuracy", TaskSpec(), scores, labels, scores) == 0.0


def test_each_kind_reports_its_metrics_with_the_judged_one_first() -> None:
    assert reported_metrics(TaskSpec(), has_labels=True)[:3] == ["accuracy", "top5", "agreement"]
    assert reported_metrics(SEQUENCE_CTC, has_labels=True)[0] == "exact_match"
    assert "cer" in reported_metrics(SEQUENCE_CTC, has_labels=True)
    assert reported_metrics(MASK, has_labels=False) == ["iou_agreement", "decision_agreement"]
    assert judged_metric(REGRESSION, has_labels=True) == "r2"


def test_an_error_rate_cannot_be_judged_and_says_what_to_judge_instead() -> None:
    with pytest.raises(ValueError, match="char_accuracy for cer"):
        check_metric_for_task("cer", SEQUENCE_CTC)
    with pytest.raises(ValueError, match="does not apply to mask tasks"):
        check_metric_for_task("accuracy", MASK)
    with pytest.raises(ValueError, match=r"set task\.ctc"):
        check_metric_for_task("exact_match", TaskSpec(kind="sequence"))


def test_every_judged_metric_is_higher_is_better() -> None:
    judged = {judged_metric(TaskSpec(kind=k), h) for k in ("classification", "sequence", "mask",
              "embedding", "regression") for h in (True, False)}  # fmt: skip
    assert all(METRICS[name].higher_is_better for name in judged)
