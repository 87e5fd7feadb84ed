"""Method-independent tuning: what a candidate's measurement is judged by (judge), how one
candidate is chosen among the judged (choose), measuring a candidate on the worker
(measure), the Pareto front (front) and the successive-halving schedule (halving).
Quantize's auto mode (core.quantize.auto), the cross-method recipe (core.recipe) and the
deployment targets (core.deployment) all judge and choose with these rules."""
