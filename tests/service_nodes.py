"""State-graph nodes for the service's tests (run inline on the engine's loop, no Ray)."""

from __future__ import annotations

import os
import time
from typing import Any

from engine.graph import interrupt

HOLD_ENV = "SERVICE_NODES_HOLD"


def add_one(state: Any) -> dict[str, Any]:
    """``n + 1``."""
    return {"n": state.n + 1}


def held(state: Any) -> dict[str, Any]:
    """Wait while the file named by ``$SERVICE_NODES_HOLD`` exists (at most a minute)."""
    marker = os.environ.get(HOLD_ENV, "")
    deadline = time.monotonic() + 60
    while marker and os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"n": state.n + 1}


def ask(state: Any) -> dict[str, Any]:
    """Pause for a human; the resume value becomes ``n``."""
    return {"n": int(interrupt({"question": "how many?"}))}
