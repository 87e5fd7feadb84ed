"""Structured pruning recovered by distillation from the original: channels (or, in
attention models, heads) removed by importance, so the model is physically smaller and
faster, then trained against the original's outputs on the training data (the teacher
needs no labels: calibration data serves when there is no training data). The pruned
model of a first, short round is trained further in a long round when it survives."""

from __future__ import annotations

from pathlib import Path

from core.errors import EngineError
from core.formats import load_model
from core.prune.heads import find_attention_blocks
from core.recipe.kinds import KindContext, Produced, Proposal, register_kind, sub_context
from core.registry import get_step
from core.spec import DistillStep, FineTune, StepInputStudent, StructuredPrune


class PruneDistill:
    name = "prune_distill"
    cost = 2
    trains = True

    def propose(self, kc: KindContext) -> tuple[list[Proposal], str | None]:
        if kc.training_source is None:
            return [], kc.no_training_reason
        heads = _has_attention(kc)
        what = "attention heads" if heads else "channels"
        return [
            Proposal(
                f"{'heads' if heads else 'prune'}{round(ratio * 100)}-distill",
                self.name,
                f"removes {ratio:.0%} of the {what} (a smaller, faster model) and recovers "
                f"by distillation from the original on the {kc.training_source}",
                {"ratio": ratio, "heads": heads},
            )
            for ratio in kc.config.prune_ratios
        ], None

    def produce(
        self, proposal: Proposal, base: Path, epochs: int, kc: KindContext, work_dir: Path
    ) -> Produced:
        details: dict[str, object] = {}
        if base.resolve() == kc.original.resolve():
            ratio = float(proposal.params["ratio"])
            prune = StructuredPrune(
                method="prune",
                kind="structured",
                sparsity=0.0 if proposal.params["heads"] else ratio,
                head_sparsity=ratio if proposal.params["heads"] else 0.0,
                fine_tune=FineTune(epochs=0),
            )
            pruned = get_step("prune")(base, prune, kc.data, sub_context(kc, work_dir / "prune"))
            details["prune"] = {
                key: pruned.details.get(key)
                for key in ("kind", "removed_channel_fraction", "parameters", "macs", "export")
            }
            base = pruned.model_path
        distill = DistillStep(
            method="distill",
            student=StepInputStudent(source="step_input"),
            epochs=epochs,
            early_stopping_patience=None,
        )
        out = get_step("distill")(base, distill, kc.data, sub_context(kc, work_dir / "distill"))
        details["distill"] = {
            "epochs": epochs,
            "best_epoch": out.details.get("best_epoch"),
            "eval_metric": out.details.get("eval_metric"),
        }
        return Produced(out.model_path, details)


def _has_attention(kc: KindContext) -> bool:
    """Whether the model holds attention blocks: their channels do not prune here (the
    exporters' reshapes), their heads do."""
    try:
        return bool(find_attention_blocks(load_model(kc.original), kc.data.eval_feeds(rows=2)))
    except EngineError:
        return False


register_kind(PruneDistill())
