"""The ``headrace`` command line."""

from __future__ import annotations

from engine.cli.main import cli, main

__all__ = ["cli", "main"]
