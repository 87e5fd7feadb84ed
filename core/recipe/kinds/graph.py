"""Graph rewrites that keep the numbers: the exporter's batch-independent shape
arithmetic folded into constants (core.quantize.common.fold_shape_computations, which
ONNX Runtime cannot fold while the batch is symbolic), checked by running both graphs."""

from __future__ import annotations

from pathlib import Path

from core.errors import UnsupportedModel
from core.formats import load_model, save_model
from core.quantize.common import fold_shape_computations
from core.recipe.kinds import KindContext, Produced, Proposal, register_kind

# eval rows both graphs run on (one at a time and all at once) before a rewrite is kept
CHECK_ROWS = 8


class GraphRewrite:
    name = "graph"
    cost = 0
    trains = False

    def propose(self, kc: KindContext) -> tuple[list[Proposal], str | None]:
        return [
            Proposal(
                "graph-rewrite",
                self.name,
                "folds the exporter's shape arithmetic into constants, which ONNX Runtime "
                "cannot do while dims are symbolic; kept only if both graphs compute alike",
            )
        ], None

    def produce(
        self, proposal: Proposal, base: Path, epochs: int, kc: KindContext, work_dir: Path
    ) -> Produced:
        folded, report = fold_shape_computations(
            load_model(base),
            work_dir / "shape-folding",
            kc.data.eval_feeds(rows=CHECK_ROWS),
            kc.data.eval_layout,
        )
        if not report.get("folded"):
            raise UnsupportedModel(
                "no shape computation to fold: "
                + str(report.get("skipped", "every shape depends on the input's dims")),
                code="nothing_to_rewrite",
            )
        return Produced(save_model(folded, work_dir / "model.onnx"), {"shape_folding": report})


register_kind(GraphRewrite())
