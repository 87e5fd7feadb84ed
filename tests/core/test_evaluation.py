"""The job's eval split: seeded, disjoint, recorded; too few rows say so instead of pretending."""

from __future__ import annotations

import numpy as np

from core.evaluation import MIN_ROWS_PER_SIDE, split_eval_rows


def test_the_split_is_seeded_disjoint_and_complete() -> None:
    split = split_eval_rows(101, seed=7)
    assert split.is_split
    assert len(split.selection) + len(split.held_out) == 101
    assert not set(split.selection) & set(split.held_out)
    again = split_eval_rows(101, seed=7)
    assert np.array_equal(split.held_out, again.held_out)
    assert not np.array_equal(split.held_out, split_eval_rows(101, seed=8).held_out)
    record = split.record
    assert (record.rows, record.selection_rows, record.held_out_rows) == (101, 51, 50)
    assert record.note is None


def test_the_held_out_fraction_sets_the_sizes() -> None:
    split = split_eval_rows(400, seed=0, held_out_fraction=0.25)
    assert (len(split.selection), len(split.held_out)) == (300, 100)


def test_too_few_rows_are_not_split_and_the_record_says_why() -> None:
    split = split_eval_rows(2 * MIN_ROWS_PER_SIDE - 1, seed=0)
    assert not split.is_split
    assert len(split.selection) == len(split.held_out) == 2 * MIN_ROWS_PER_SIDE - 1
    assert split.record.note is not None and "too few to split" in split.record.note


def test_a_fraction_of_zero_is_no_split_with_a_note() -> None:
    split = split_eval_rows(1000, seed=0, held_out_fraction=0.0)
    assert not split.is_split
    assert split.record.note is not None and "optimistic" in split.record.note
