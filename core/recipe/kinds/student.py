"""Distillation into a smaller student of a built-in family (core.families: a CNN for
(C, H, W) inputs, a transformer for (L, F) features, else an MLP), sized so its latency
in ONNX Runtime is a share of the original's that the goal asks for."""

from __future__ import annotations

from pathlib import Path

from core.recipe.kinds import KindContext, Produced, Proposal, register_kind, sub_context
from core.registry import get_step
from core.spec import AutoStudent, DistillStep, StepInputStudent

# the student's latency share of the original's when the goal names no speed-up
DEFAULT_LATENCY_RATIO = 0.3


class Student:
    name = "student"
    cost = 2
    trains = True

    def propose(self, kc: KindContext) -> tuple[list[Proposal], str | None]:
        if kc.training_source is None:
            return [], kc.no_training_reason
        if len(kc.data.inputs) != 1 or kc.data.inputs[0].dtype not in ("float32", "float16"):
            return [], "built-in students take one float input; this model takes others"
        speedup = kc.config.goal.speedup
        ratio = min(0.5, 0.8 / speedup) if speedup else DEFAULT_LATENCY_RATIO
        return [
            Proposal(
                "student-distill",
                self.name,
                f"a built-in student at {ratio:.0%} of the original's latency, trained "
                f"against the original on the {kc.training_source}",
                {"latency_ratio": ratio},
            )
        ], None

    def produce(
        self, proposal: Proposal, base: Path, epochs: int, kc: KindContext, work_dir: Path
    ) -> Produced:
        fresh = base.resolve() == kc.original.resolve()
        student = (
            AutoStudent(latency_ratio=float(proposal.params["latency_ratio"]))
            if fresh
            else StepInputStudent(source="step_input")
        )
        distill = DistillStep(
            method="distill", student=student, epochs=epochs, early_stopping_patience=None
        )
        out = get_step("distill")(base, distill, kc.data, sub_context(kc, work_dir))
        return Produced(
            out.model_path,
            {
                "student": out.details.get("student"),
                "epochs": epochs,
                "best_epoch": out.details.get("best_epoch"),
            },
        )


register_kind(Student())
