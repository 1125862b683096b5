"""Scaling studies from run directories: sweep plans, the results table, Pareto frontiers, scaling-law fits and
their plots. Reads MODEL_DIRs and never trains (the CLI's `sweep` runs `t5scale train` once per planned run)."""
