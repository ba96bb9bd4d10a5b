"""Errors of the checkpoint layer.

HeadraceError                       (engine.errors)
└── CheckpointError                 base of every checkpoint-store error
    ├── CheckpointConflict          a write that breaks a run's history: a step that is not the
    │                               next one, a run id that exists, deleting a run forks depend on
    ├── CheckpointCorrupt           stored bytes that cannot be read back: bad JSON, a record of an
    │                               unknown format version; names the run, the step and where
    ├── RunNotFound                 no run with that id in this store
    └── NotJSON (also TypeError)    a value to store is not JSON (a set, bytes, an object, NaN);
                                    names the field path, e.g. ``delta.items[3]``
"""

from __future__ import annotations

from engine.errors import HeadraceError


class CheckpointError(HeadraceError):
    """Base of every error a checkpoint store raises on purpose."""

    code = "checkpoint_error"
    exit_code = 1


class CheckpointConflict(CheckpointError):
    """A write that would break a run's history; the message says what the store expected."""

    code = "checkpoint_conflict"


class CheckpointCorrupt(CheckpointError):
    """Stored checkpoint data that cannot be decoded; the message names run, step and file or row."""

    code = "checkpoint_corrupt"


class RunNotFound(CheckpointError, LookupError):
    """No run with the given id exists in the store."""

    code = "run_not_found"

    def __init__(self, run_id: str, where: str = "") -> None:
        suffix = f" in {where}" if where else ""
        super().__init__(f"no run '{run_id}'{suffix}; `headrace runs list` shows the runs this store holds")
        self.run_id = run_id

    def __reduce__(self) -> tuple[object, ...]:
        # the two-argument constructor does not survive default pickling across Ray processes
        return (RunNotFound, (self.run_id,))


class NotJSON(CheckpointError, TypeError):
    """A value given to a store is not plain JSON; the message names the field path.

    It is a ``TypeError`` too, so callers that validate input the usual Python way catch it.
    Non-finite floats (NaN, infinity) raise it as well: JSON has no spelling for them.
    """

    code = "checkpoint_not_json"
