"""Throughput measurements of headrace against baselines measured in the same run.

One entry point: ``python -m benchmarks run [--quick] [--only NAME]...`` runs every family in one session
(``benchmarks.session``) and writes the index of their results (``benchmarks.summary``). The families:
"streaming transform" (``benchmarks.streaming``: Parquet and CSV jobs on headrace, a single-process
pyarrow loop, plain Ray tasks and Ray Data, on data generated deterministically by ``benchmarks.data``;
tables and plots in ``benchmarks.report``), "LLM steps" (``benchmarks.llm``), "state graphs"
(``benchmarks.graphs``) and "concurrency" (``benchmarks.concurrency``; both rendered by
``benchmarks.graphs_report``). Timing, memory sampling, machine facts and results files are in
``benchmarks.harness``. Tests run a session with the hidden ``--tiny`` mode (every part once on the
smallest input). Nothing is imported here, so ``python -m benchmarks`` stays light and Ray Data and
matplotlib are imported only by the parts that use them.
"""
