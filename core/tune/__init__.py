"""Method-independent tuning: choosing among measured candidates, the Pareto front, and
the successive-halving schedule. Quantize's auto mode (core.quantize.auto) and the
cross-method recipe (core.recipe) both choose with these rules."""
