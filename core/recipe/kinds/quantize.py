"""Quantization of a candidate: quantize's auto mode (its candidates measured here, the
FP32 fallback of sensitive nodes, never slower than its input)."""

from __future__ import annotations

from pathlib import Path

from core.errors import UnsupportedModel
from core.recipe.kinds import KindContext, Produced, Proposal, register_kind, sub_context
from core.registry import get_step
from core.spec import AutoQuantize


class Quantize:
    name = "quantize"
    cost = 1
    trains = False

    def propose(self, kc: KindContext) -> tuple[list[Proposal], str | None]:
        return [
            Proposal(
                "quantize-auto",
                self.name,
                "INT8 (or INT4) where it measures faster here, sensitive nodes kept in FP32 "
                "until the metric target holds (quantize auto)",
            )
        ], None

    def produce(
        self, proposal: Proposal, base: Path, epochs: int, kc: KindContext, work_dir: Path
    ) -> Produced:
        config = AutoQuantize(method="quantize")
        output = get_step("quantize")(base, config, kc.data, sub_context(kc, work_dir))
        if output.unchanged_reason:
            raise UnsupportedModel(
                f"quantization kept its input: {output.unchanged_reason}",
                code="quantization_kept_input",
            )
        return Produced(output.model_path, output.details, float_path=base)


register_kind(Quantize())
