"""Every prune kind on every corpus model: the pruned model validates and runs, or the
step refuses with a specific code (e.g. `unsupported_op` naming the ops PyTorch cannot
rebuild, `channel_dependency_untraced` naming the node pruning broke)."""

from __future__ import annotations

import pytest

from tests.corpus.expected import cases, check
from tests.corpus.run import PRUNE_KINDS, Corpus

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
CASES = cases(PRUNE_KINDS)


@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_each_prune_kind_works_or_is_refused_with_a_specific_code(
    corpus: Corpus, name: str, method: str
) -> None:
    check(corpus.cell(name, method))
