"""When an LLM node's calls fail for a reason no row can fix, stop the run instead of failing row by row.

Dead letters are for bad rows. Some failures are not about the row at all, and under ``on_error:
dead_letter`` they would set every row aside (at 10 million rows: 10 million refused requests and a
"succeeded" run):

- an answer that says the key or the model is wrong: 401 (authentication), 403 (permission), 404 (an
  unknown model or endpoint), a refused key whatever its status (Gemini answers a wrong key with 400
  ``API_KEY_INVALID``), or a provider that cannot be built as configured: the first one stops;
- a prompt template that fails on every row of a batch and has rendered for no row yet;
- a provider that is down: the circuit breaker trips when at least ``BREAKER_FAILED_SHARE`` of the last
  ``BREAKER_WINDOW`` rows (once ``BREAKER_MIN_CALLS`` were tried) got no answer because every target,
  fallbacks included, failed after all its retries. A provider that is down while its fallback answers
  costs retries, not the run.

:class:`CallHealth` keeps this state for one run's node in one pool actor, across the batches it answers;
once it has stopped, every later row of that run raises the same :class:`FatalRunError` without a call.
"""

from __future__ import annotations

from collections import deque

from engine.errors import FatalRunError
from operators.providers.errors import KeyRejected, ProviderConfigError, ProviderError

FATAL_STATUS = {
    401: "authentication failed: the key is wrong, expired or missing",
    403: "permission denied: this key may not use this model or endpoint",
    404: "not found: the model (or the endpoint) does not exist for this key",
}
_KEY_VARIABLES = {
    "anthropic": "$ANTHROPIC_API_KEY",
    "gemini": "$GEMINI_API_KEY or $GOOGLE_API_KEY",
    "openai": "$OPENAI_API_KEY",
}
BREAKER_WINDOW = 100
BREAKER_MIN_CALLS = 10
BREAKER_FAILED_SHARE = 0.9


class CallHealth:
    """Whether a run's LLM node may go on calling: fatal answers, the template, the circuit breaker."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.rendered = 0
        """Prompts rendered so far."""
        self.stopped: FatalRunError | None = None
        """The error that stopped the node; every later row raises it."""
        self._recent: deque[bool] = deque(maxlen=BREAKER_WINDOW)

    def check(self) -> None:
        """Raise the stopping error, if the node has stopped."""
        if self.stopped is not None:
            raise self.stopped

    def answered(self) -> None:
        """A row got an answer (from its provider or a fallback)."""
        self._recent.append(True)

    def refused(self, exc: ProviderError, provider: str, model: str) -> None:
        """A call failed with ``exc``: raise ``FatalRunError`` when no row can pass that error."""
        if exc.status in FATAL_STATUS or isinstance(exc, (ProviderConfigError, KeyRejected)):
            # a refused key is an authentication failure whatever status carried it (Gemini: 400)
            status = 401 if isinstance(exc, KeyRejected) else exc.status or 0
            what = FATAL_STATUS.get(status, "the provider cannot be used as configured")
            key = f"providers.{provider}.config.api_key or {_KEY_VARIABLES.get(provider, 'its key variable')}"
            self._stop(
                f"node '{self.node}': {provider}/{model} answered {exc}: {what} (key from {key}); every "
                "row would fail the same way, so the run stopped at once"
            )

    def gave_up(self, exc: ProviderError, provider: str, model: str) -> None:
        """A row got no answer because every target failed after all its retries (``provider``/``model``
        the last one tried): the circuit breaker counts it (and may trip)."""
        self._recent.append(False)
        failed = self._recent.count(False)
        if len(self._recent) >= BREAKER_MIN_CALLS and failed >= BREAKER_FAILED_SHARE * len(self._recent):
            self._stop(
                f"node '{self.node}': {failed} of the last {len(self._recent)} rows got no answer after "
                f"every retry of every target (last: {provider}/{model}: {exc}); the provider looks down, so "
                "the run stopped (circuit breaker) instead of setting every row aside; resume once it "
                "answers again"
            )

    def template_failed_everywhere(self, rows: int, first_error: str) -> None:
        """Every row of a batch failed to render its prompt: stop when no prompt ever rendered."""
        if rows and self.rendered == 0:
            self._stop(
                f"node '{self.node}': the prompt template failed on all {rows} rows of a batch and has "
                f"rendered for no row ({first_error}); fix the template (a column it reads may be "
                "misspelt: `headrace validate` checks its syntax, not the row's columns)"
            )

    def _stop(self, message: str) -> None:
        if self.stopped is None:
            self.stopped = FatalRunError(message)
        raise self.stopped
