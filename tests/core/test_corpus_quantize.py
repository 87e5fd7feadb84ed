"""Every quantize mode on every corpus model (other exporters, opsets 7 to 21, If/Loop
with weights inside, fixed and symbolic dims, ONNX-ML ops, a stateful GRU): the result
validates and runs, or the step refuses with a specific code saying what is not
supported (tests/corpus/expected.py lists which)."""

from __future__ import annotations

import pytest

from tests.corpus.expected import cases, check
from tests.corpus.run import QUANTIZE_MODES, Corpus

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
CASES = cases(QUANTIZE_MODES)


@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_each_quantize_mode_works_or_is_refused_with_a_specific_code(
    corpus: Corpus, name: str, method: str
) -> None:
    check(corpus.cell(name, method))
