"""Throughput measurements of headrace against baselines measured in the same run.

One entry point: ``python -m benchmarks run [--quick] [--only NAME]``. The first case family is the
"streaming transform" (``benchmarks.streaming``): Parquet and CSV jobs run on headrace, a
single-process pyarrow loop, plain Ray tasks and Ray Data, on data generated deterministically
(``benchmarks.data``). Timing, memory sampling and machine facts are in ``benchmarks.harness``; the
markdown table and plots in ``benchmarks.report``. Tests call ``benchmarks.streaming.run_case``
directly on a tiny input. Nothing is imported here, so ``python -m benchmarks`` stays light and Ray
Data and matplotlib are imported only by the parts that use them.
"""
