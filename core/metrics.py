"""Task metrics: each has a name, the task kinds it serves, whether it reads labels or the
original model's outputs, and a direction.

Targets judge one metric (`TaskSpec.metric`, else the task's default); every metric that
applies is reported beside it. Metrics the targets may judge are higher-is-better and
live on a 0..1 scale (r2 may go below 0 for a model worse than predicting the mean), so
an absolute drop of 0.01 is one point and a relative drop is a share of the original's
value; error rates (cer, relative_rmse) are reported, never judged, since their
relative drop from an original of 0 means nothing.

Inputs to every metric: the model's outputs with samples on axis 0, the labels (or
None), and the original model's outputs on the same rows (the reference). All pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.errors import IncompatibleData

if TYPE_CHECKING:
    from core.spec import TaskSpec

_EPS = 1e-12
# Pairwise similarities are compared over at most this many rows (n^2 pairs).
RANK_CORRELATION_ROWS = 256
# AUC is computed over at most this many scores (a seeded subsample of mask pixels).
AUC_MAX_SCORES = 200_000
LABEL_PADDING = -1


@dataclass(frozen=True)
class MetricInput:
    outputs: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray
    task: TaskSpec


@dataclass(frozen=True)
class Metric:
    name: str
    kinds: frozenset[str]
    # True: needs labels; False: compares with the original's outputs
    uses_labels: bool
    higher_is_better: bool
    description: str
    compute: Callable[[MetricInput], float]
    needs_ctc: bool = False

    @property
    def can_be_judged(self) -> bool:
        return self.higher_is_better


# --- classification --------------------------------------------------------------------------


def class_scores(outputs: np.ndarray) -> np.ndarray:
    """(N, 1, C) and similar squeeze to (N, C); anything else is not one score per class."""
    squeezed = outputs.reshape(outputs.shape[0], *[d for d in outputs.shape[1:] if d != 1])
    if squeezed.ndim != 2:
        raise IncompatibleData(
            f"classification needs an output of shape (samples, classes), got {outputs.shape}; "
            "per-position scores are a sequence task, per-pixel maps a mask task"
        )
    return squeezed


def _labels_1d(labels: np.ndarray, rows: int) -> np.ndarray:
    truth = labels.reshape(-1)
    if truth.shape[0] != rows:
        raise IncompatibleData(f"{truth.shape[0]} labels for {rows} predictions")
    return truth


def _accuracy(m: MetricInput) -> float:
    predicted = np.argmax(class_scores(m.outputs), axis=1)
    assert m.labels is not None
    return float(np.mean(predicted == _labels_1d(m.labels, len(predicted))))


def _top5(m: MetricInput) -> float:
    scores = class_scores(m.outputs)
    assert m.labels is not None
    truth = _labels_1d(m.labels, len(scores))
    top = np.argsort(-scores, axis=1)[:, :5]
    return float(np.mean(np.any(top == truth[:, None], axis=1)))


def _agreement(m: MetricInput) -> float:
    return float(
        np.mean(
            np.argmax(class_scores(m.outputs), axis=1)
            == np.argmax(class_scores(m.reference), axis=1)
        )
    )


# --- sequences -------------------------------------------------------------------------------


def position_scores(outputs: np.ndarray) -> np.ndarray:
    """(N, T, C) scores per position; (N, T, 1, C)-like shapes squeeze to it."""
    squeezed = outputs.reshape(
        outputs.shape[0], *[d for i, d in enumerate(outputs.shape[1:]) if d != 1 or i == 0]
    )
    if squeezed.ndim != 3:
        raise IncompatibleData(
            "a sequence task needs an output of shape (samples, positions, classes) with the "
            f"samples on task.output_sample_axis; got {outputs.shape}"
        )
    return squeezed


def _position_agreement(m: MetricInput) -> float:
    return float(
        np.mean(
            np.argmax(position_scores(m.outputs), axis=2)
            == np.argmax(position_scores(m.reference), axis=2)
        )
    )


def _position_accuracy(m: MetricInput) -> float:
    predicted = np.argmax(position_scores(m.outputs), axis=2)
    assert m.labels is not None
    labels = np.asarray(m.labels).reshape(predicted.shape[0], -1)
    if labels.shape[1] != predicted.shape[1]:
        raise IncompatibleData(
            f"per-position labels have {labels.shape[1]} positions, the output {predicted.shape[1]}"
            " (CTC outputs are scored against label sequences with task.ctc)"
        )
    scored = labels != LABEL_PADDING
    return float(np.sum((predicted == labels) & scored) / max(int(np.sum(scored)), 1))


def ctc_decode(scores: np.ndarray, blank: int, merge_repeats: bool) -> list[list[int]]:
    """Greedy CTC decoding of (N, T, C) scores: argmax per step, repeats merged, blanks
    dropped."""
    decoded = []
    for path in np.argmax(position_scores(scores), axis=2):
        tokens: list[int] = []
        previous = None
        for token in path.tolist():
            if not (merge_repeats and token == previous) and token != blank:
                tokens.append(int(token))
            previous = token
        decoded.append(tokens)
    return decoded


def label_sequences(labels: np.ndarray) -> list[list[int]]:
    """Integer label sequences (N, L) padded with -1 (npz holds no ragged arrays)."""
    rows = np.asarray(labels).reshape(labels.shape[0], -1)
    return [[int(v) for v in row if v != LABEL_PADDING] for row in rows]


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, token in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token != other))
            )
        previous = current
    return previous[-1]


def _decoded_pair(m: MetricInput) -> tuple[list[list[int]], list[list[int]]]:
    ctc = m.task.ctc
    assert ctc is not None
    predicted = ctc_decode(m.outputs, ctc.blank, ctc.merge_repeats)
    if m.labels is not None:
        truth = label_sequences(m.labels)
    else:
        truth = ctc_decode(m.reference, ctc.blank, ctc.merge_repeats)
    if len(truth) != len(predicted):
        raise IncompatibleData(f"{len(truth)} label sequences for {len(predicted)} predictions")
    return predicted, truth


def _exact_match(m: MetricInput) -> float:
    predicted, truth = _decoded_pair(m)
    return float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))


def _cer(m: MetricInput) -> float:
    predicted, truth = _decoded_pair(m)
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth, strict=True))
    return errors / max(sum(len(t) for t in truth), 1)


def _char_accuracy(m: MetricInput) -> float:
    return max(0.0, 1.0 - _cer(m))


# --- masks -----------------------------------------------------------------------------------


def _mask_truth(m: MetricInput) -> np.ndarray:
    if m.labels is not None:
        truth = np.asarray(m.labels)
        if truth.size != m.outputs.size:
            raise IncompatibleData(
                f"mask labels of shape {truth.shape} do not match outputs of shape "
                f"{m.outputs.shape}"
            )
        return truth.reshape(m.outputs.shape) > 0.5
    return m.reference > m.task.threshold


def _iou(m: MetricInput) -> float:
    predicted = (m.outputs > m.task.threshold).reshape(len(m.outputs), -1)
    truth = _mask_truth(m).reshape(len(m.outputs), -1)
    union = np.sum(predicted | truth, axis=1)
    inter = np.sum(predicted & truth, axis=1)
    # a sample where both masks are empty agrees perfectly
    per_sample = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(np.mean(per_sample))


def _decision_agreement(m: MetricInput) -> float:
    return float(np.mean((m.outputs > m.task.threshold) == (m.reference > m.task.threshold)))


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties averaged."""
    scores, truth = scores.reshape(-1).astype(np.float64), truth.reshape(-1).astype(bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return 1.0  # one class only: nothing to rank wrongly
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = start + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _auc(m: MetricInput) -> float:
    truth = _mask_truth(m).reshape(-1)
    scores = m.outputs.reshape(-1)
    if len(scores) > AUC_MAX_SCORES:
        keep = np.random.default_rng(0).choice(len(scores), AUC_MAX_SCORES, replace=False)
        scores, truth = scores[keep], truth[keep]
    return roc_auc(scores, truth)


# --- embeddings ------------------------------------------------------------------------------


def _cosines(m: MetricInput) -> np.ndarray:
    rows = m.outputs.shape[0]
    a = m.outputs.reshape(rows, -1).astype(np.float64)
    b = m.reference.reshape(rows, -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / np.maximum(norms, _EPS))


def _cosine(m: MetricInput) -> float:
    return float(np.mean(_cosines(m)))


def _min_cosine(m: MetricInput) -> float:
    return float(np.min(_cosines(m)))


def _pairwise(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), _EPS)
    similarity = unit @ unit.T
    return np.asarray(similarity[np.triu_indices(len(vectors), k=1)])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    return ranks


def _rank_correlation(m: MetricInput) -> float:
    """Spearman correlation of the pairwise cosine similarities among the first rows:
    does the model still rank neighbours as the original does?"""
    rows = min(m.outputs.shape[0], RANK_CORRELATION_ROWS)
    if rows < 3:
        return 1.0
    a = _pairwise(m.outputs[:rows].reshape(rows, -1).astype(np.float64))
    b = _pairwise(m.reference[:rows].reshape(rows, -1).astype(np.float64))
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denominator) if denominator > _EPS else 1.0


# --- regression ------------------------------------------------------------------------------


def _regression_pair(m: MetricInput) -> tuple[np.ndarray, np.ndarray]:
    target = m.reference if m.labels is None else m.labels
    if target.size != m.outputs.size:
        raise IncompatibleData(
            f"regression targets of shape {target.shape} do not match outputs of shape "
            f"{m.outputs.shape}"
        )
    return (
        m.outputs.astype(np.float64).reshape(-1),
        target.reshape(-1).astype(np.float64),
    )


def _r2(m: MetricInput) -> float:
    """1 - SSE / SST against the targets' own spread: 1 is perfect, 0 is no better than
    predicting their mean (the original scores 1 against itself)."""
    predicted, target = _regression_pair(m)
    sse = float(np.sum((predicted - target) ** 2))
    sst = float(np.sum((target - target.mean()) ** 2))
    if sst <= _EPS:
        return 1.0 if sse <= _EPS else 0.0
    return 1.0 - sse / sst


def _relative_rmse(m: MetricInput) -> float:
    """RMSE over the targets' standard deviation: the error in units of their spread."""
    predicted, target = _regression_pair(m)
    rmse = float(np.sqrt(np.mean((predicted - target) ** 2)))
    return rmse / max(float(np.std(target)), _EPS)


def _neg_mse(m: MetricInput) -> float:
    predicted, target = _regression_pair(m)
    return -float(np.mean((predicted - target) ** 2))


def _metric(
    name: str,
    kinds: str,
    uses_labels: bool,
    compute: Callable[[MetricInput], float],
    description: str,
    *,
    higher_is_better: bool = True,
    needs_ctc: bool = False,
) -> Metric:
    return Metric(
        name=name,
        kinds=frozenset(kinds.split()),
        uses_labels=uses_labels,
        higher_is_better=higher_is_better,
        description=description,
        compute=compute,
        needs_ctc=needs_ctc,
    )


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _metric("accuracy", "classification", True, _accuracy, "top-1 accuracy vs labels"),
        _metric("top5", "classification", True, _top5, "the label among the 5 highest scores"),
        _metric("agreement", "classification", False, _agreement,
                "the same top-1 class as the original"),
        _metric("position_accuracy", "sequence", True, _position_accuracy,
                "per-position argmax vs per-position labels (-1 ignored)"),
        _metric("position_agreement", "sequence", False, _position_agreement,
                "per-position argmax equal to the original's"),
        _metric("exact_match", "sequence", True, _exact_match,
                "CTC-decoded sequence equal to the label sequence", needs_ctc=True),
        _metric("exact_match_agreement", "sequence", False, _exact_match,
                "CTC-decoded sequence equal to the original's decoding", needs_ctc=True),
        _metric("char_accuracy", "sequence", True, _char_accuracy,
                "1 - character (token) error rate vs labels, at least 0", needs_ctc=True),
        _metric("char_agreement", "sequence", False, _char_accuracy,
                "1 - token error rate vs the original's decoding", needs_ctc=True),
        _metric("cer", "sequence", True, _cer, "character (token) error rate vs labels",
                higher_is_better=False, needs_ctc=True),
        _metric("iou", "mask", True, _iou, "mean per-sample IoU of thresholded masks vs labels"),
        _metric("iou_agreement", "mask", False, _iou,
                "mean per-sample IoU vs the original's thresholded mask"),
        _metric("decision_agreement", "mask", False, _decision_agreement,
                "thresholded decisions equal to the original's"),
        _metric("auc", "mask", True, _auc, "ROC AUC of the scores vs the labels"),
        _metric("cosine_similarity", "embedding", False, _cosine,
                "mean cosine to the original's vectors"),
        _metric("min_cosine", "embedding", False, _min_cosine,
                "the lowest cosine to the original's vectors"),
        _metric("rank_correlation", "embedding", False, _rank_correlation,
                "Spearman correlation of pairwise similarities with the original's"),
        _metric("r2", "regression", True, _r2, "R^2 vs the labels"),
        _metric("r2_agreement", "regression", False, _r2, "R^2 vs the original's outputs"),
        _metric("relative_rmse", "regression", True, _relative_rmse,
                "RMSE over the labels' standard deviation", higher_is_better=False),
        _metric("neg_mse", "regression", True, _neg_mse,
                "minus the mean squared error (scale-dependent: prefer r2)"),
    )
}  # fmt: skip

# The metric the targets judge by default, per kind and whether labels exist.
DEFAULTS: dict[tuple[str, bool], str] = {
    ("classification", True): "accuracy",
    ("classification", False): "agreement",
    ("sequence", True): "position_accuracy",
    ("sequence", False): "position_agreement",
    ("mask", True): "iou",
    ("mask", False): "iou_agreement",
    ("embedding", True): "cosine_similarity",
    ("embedding", False): "cosine_similarity",
    ("regression", True): "r2",
    ("regression", False): "r2_agreement",
}
CTC_DEFAULTS = {True: "exact_match", False: "exact_match_agreement"}
# A judged metric named for labels falls back to its twin when the data has none.
WITHOUT_LABELS = {
    "accuracy": "agreement",
    "top5": "agreement",
    "position_accuracy": "position_agreement",
    "exact_match": "exact_match_agreement",
    "char_accuracy": "char_agreement",
    "iou": "iou_agreement",
    "auc": "iou_agreement",
    "r2": "r2_agreement",
    "neg_mse": "r2_agreement",
}


def check_metric_for_task(name: str, task: TaskSpec) -> None:
    """Raise ValueError (a spec error) unless `name` can judge this task."""
    metric = METRICS.get(name)
    if metric is None:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    if task.kind not in metric.kinds:
        fitting = sorted(m.name for m in METRICS.values() if task.kind in m.kinds)
        raise ValueError(
            f"metric {name!r} does not apply to {task.kind} tasks; these do: {', '.join(fitting)}"
        )
    if not metric.can_be_judged:
        raise ValueError(
            f"metric {name!r} is an error rate (lower is better) and is reported, not judged: "
            "judge its complement instead (char_accuracy for cer, r2 for relative_rmse)"
        )
    if metric.needs_ctc and task.ctc is None:
        raise ValueError(f"metric {name!r} decodes CTC outputs: set task.ctc")


def judged_metric(task: TaskSpec, has_labels: bool) -> str:
    """The metric the targets judge for this task and data."""
    if task.metric is not None:
        return task.metric if has_labels else WITHOUT_LABELS.get(task.metric, task.metric)
    if task.kind == "sequence" and task.ctc is not None:
        return CTC_DEFAULTS[has_labels]
    return DEFAULTS[task.kind, has_labels]


def reported_metrics(task: TaskSpec, has_labels: bool) -> list[str]:
    """Every metric that applies to the task and data, the judged one first."""
    first = judged_metric(task, has_labels)
    names = [
        m.name
        for m in METRICS.values()
        if task.kind in m.kinds
        and (has_labels or not m.uses_labels)
        and (task.ctc is not None or not m.needs_ctc)
        # with CTC, labels are label sequences, not one label per position
        and not (task.ctc is not None and m.name == "position_accuracy")
        and m.name != "neg_mse"
    ]
    return [first, *[n for n in names if n != first]]


def compute(name: str, task: TaskSpec, outputs: np.ndarray, labels: np.ndarray | None,
            reference: np.ndarray) -> float:  # fmt: skip
    metric = METRICS[name]
    return metric.compute(
        MetricInput(outputs, labels if metric.uses_labels else None, reference, task)
    )


def higher_is_better(name: str) -> bool:
    metric = METRICS.get(name)
    return True if metric is None else metric.higher_is_better
