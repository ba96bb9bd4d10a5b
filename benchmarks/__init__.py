"""Throughput measurements of headrace against baselines measured in the same run."""
