"""A service (no Ray) in a process of its own, for tests that kill it: ``python -m tests.service_proc
INFO_FILE``. ``$HEADRACE_HOME`` is the test's; the engine runs one run at a time, so later ones queue.
It writes ``{"url": ..., "owner": ...}`` to INFO_FILE once it listens, and serves until killed."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from tests.service_live import live_service


def main(info_file: str) -> None:
    """Serve until the process is killed."""
    from engine.service.discovery import headrace_home

    with live_service(headrace_home(), max_concurrent_runs=1) as service:
        Path(info_file).write_text(json.dumps({"url": service.url, "owner": service.owner}))
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1])
