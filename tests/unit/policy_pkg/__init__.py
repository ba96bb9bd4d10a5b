"""A stand-in for an operator's allowed package (``mycompany``): a few honest functions, and the
gadgets an attacker would reach through it (modules it imported, functions it re-exported)."""

from __future__ import annotations

import functools
import os
import subprocess
from subprocess import run as imported_run
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.parquet import write_table

shell = os
partial_run = functools.partial(subprocess.run, ["true"])
builtin_open = open
settings = {"a": 1}

__all__ = [
    "Own",
    "builtin_open",
    "imported_run",
    "own",
    "own_rows",
    "partial_run",
    "pq",
    "shell",
    "write_table",
]


def own(table: pa.Table) -> pa.Table:
    """An honest batch function defined here."""
    return table


def own_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """An honest row function defined here."""
    return [row]


class Own:
    """An honest class whose static method is a state node."""

    @staticmethod
    def step(state: Any) -> dict[str, Any]:
        return {}
