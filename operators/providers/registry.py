"""Provider names to factories: the built-ins, then plugins from the ``headrace.providers`` entry points.

A factory takes the provider's config mapping and returns a ``Provider``. Built-ins are imported lazily, so
running ``offline`` never imports an SDK. A plugin declares, in its ``pyproject.toml``::

    [project.entry-points."headrace.providers"]
    mistral = "headrace_mistral:MistralProvider"     # called as MistralProvider(config)

A plugin may not take a built-in's name (that would silently reroute paid calls): such entry points are
skipped with a warning, and so are entry points that fail to load, so one broken plugin does not stop
pipelines that do not use it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from operators.providers.base import Provider
from operators.providers.errors import ProviderConfigError

ProviderFactory = Callable[[Mapping[str, Any]], Provider]
ENTRY_POINT_GROUP = "headrace.providers"


def _anthropic(config: Mapping[str, Any]) -> Provider:
    from operators.providers.claude import AnthropicProvider

    return AnthropicProvider(config)


def _gemini(config: Mapping[str, Any]) -> Provider:
    from operators.providers.gemini import GeminiProvider

    return GeminiProvider(config)


def _openai(config: Mapping[str, Any]) -> Provider:
    from operators.providers.openai_chat import OpenAIProvider

    return OpenAIProvider(config)


def _offline(config: Mapping[str, Any]) -> Provider:
    from operators.providers.offline import OfflineProvider

    return OfflineProvider(config)


def _replay(config: Mapping[str, Any]) -> Provider:
    from operators.providers.replay import ReplayProvider

    return ReplayProvider.from_config(config, get_provider)


BUILTINS: Mapping[str, ProviderFactory] = {
    "anthropic": _anthropic,
    "gemini": _gemini,
    "openai": _openai,
    "offline": _offline,
    "replay": _replay,
}

DEFAULT_MODELS: Mapping[str, str] = {
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "openai": "gpt-5-mini",
    "offline": "offline",
}
"""The model an LLM node uses when neither it nor the pipeline's defaults name one."""

_lock = threading.Lock()
_registered: dict[str, ProviderFactory] = {}
_plugins: dict[str, ProviderFactory] | None = None


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed ``headrace.providers`` entry points (a seam for tests)."""
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _discover() -> dict[str, ProviderFactory]:
    global _plugins
    with _lock:
        if _plugins is None:
            found: dict[str, ProviderFactory] = {}
            for point in _entry_points():
                if point.name in BUILTINS:
                    warnings.warn(
                        f"ignoring provider plugin {point.value!r}: {point.name!r} is a built-in provider",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    continue
                try:
                    found[point.name] = point.load()
                except Exception as exc:  # any import failure of third-party code
                    warnings.warn(
                        f"ignoring provider plugin {point.name!r} ({point.value}): failed to load: {exc!r}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            _plugins = found
        return _plugins


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Register ``factory`` under ``name`` in this process (tests, notebooks); not a built-in's name."""
    if not name or name in BUILTINS:
        raise ValueError(f"cannot register a provider named {name!r}")
    with _lock:
        _registered[name] = factory


def available_providers() -> list[str]:
    """Every provider name that ``get_provider`` accepts, sorted."""
    return sorted({*BUILTINS, *_discover(), *_registered})


def get_provider(name: str, config: Mapping[str, Any] | None = None) -> Provider:
    """A new provider ``name`` built from ``config``.

    Raises ``ProviderConfigError`` for an unknown name (listing the known ones) or a bad config.
    """
    factory = BUILTINS.get(name) or _registered.get(name) or _discover().get(name)
    if factory is None:
        raise ProviderConfigError(
            f"unknown provider {name!r}; known: {', '.join(available_providers())} "
            f"(plugins register under the {ENTRY_POINT_GROUP!r} entry point group)",
            provider=name,
        )
    return factory(config or {})


def _reset_plugins() -> None:
    """Forget discovered plugins so the next lookup scans entry points again (for tests)."""
    global _plugins
    with _lock:
        _plugins = None
