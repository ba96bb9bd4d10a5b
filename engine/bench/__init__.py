"""``headrace bench``: throughput benchmarks of a user's own pipeline, with variants, statistics over
repeats, baselines and a report.

The chain, each step its own module: :mod:`~engine.bench.pipeline` reads what the pipeline's sources,
sinks and LLM limits are; :mod:`~engine.bench.inputs` builds inputs of a size; :mod:`~engine.bench.runners`
runs it on a warm engine (in this process, a cluster, or ``headrace serve``) and samples the process tree
with :mod:`~engine.bench.harness` (shared with ``benchmarks/``); :mod:`~engine.bench.figures` turns a run
into figures and repeats into statistics; :mod:`~engine.bench.session` drives variants and repeats;
:mod:`~engine.bench.baseline`, :mod:`~engine.bench.table` and :mod:`~engine.bench.report` compare, print
and draw the results.
"""

from __future__ import annotations

from engine.bench.session import BenchRequest, run_bench

__all__ = ["BenchRequest", "run_bench"]
