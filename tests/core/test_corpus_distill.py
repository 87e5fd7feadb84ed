"""Distillation into a family student and into the step's input on every corpus model:
the student validates and runs under the teacher's names, or the step refuses with a
specific code (`invalid_student` saying why no such student fits the teacher)."""

from __future__ import annotations

import pytest

from tests.corpus.expected import cases, check
from tests.corpus.run import DISTILL_STUDENTS, Corpus

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
CASES = cases(DISTILL_STUDENTS)


@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_each_distillation_works_or_is_refused_with_a_specific_code(
    corpus: Corpus, name: str, method: str
) -> None:
    check(corpus.cell(name, method))
