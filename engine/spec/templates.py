"""The scaffolding templates behind ``headrace new``: the pipelines in ``configs/templates/``."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from engine.errors import ConfigError, Diagnostic
from engine.spec.convert import dump_commented, load_commented
from engine.spec.models import FORMAT_VERSION


@dataclass(frozen=True)
class Template:
    """One template: its key (the file stem), text and one-line summary."""

    key: str
    text: str
    summary: str


def templates() -> dict[str, Template]:
    """Every bundled template by key."""
    folder = files("configs").joinpath("templates")
    out: dict[str, Template] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            text = entry.read_text(encoding="utf-8")
            data = load_commented(text)
            key = entry.name.removesuffix(".yaml")
            out[key] = Template(key, text, str(data.get("description", "")).strip().split("\n")[0])
    return out


def render_template(key: str, name: str) -> str:
    """The template ``key`` with its pipeline name set to ``name``, comments kept."""
    available = templates()
    if key not in available:
        raise ConfigError(
            [
                Diagnostic(
                    key,
                    1,
                    1,
                    f"no template '{key}'",
                    code="unknown_template",
                    hint=f"templates: {', '.join(sorted(available))}",
                )
            ]
        )
    data = load_commented(available[key].text)
    data["name"] = name
    schema = files("configs").joinpath("schema").joinpath(f"pipeline-v{FORMAT_VERSION}.json")
    return f"# yaml-language-server: $schema={schema}\n" + dump_commented(data)
