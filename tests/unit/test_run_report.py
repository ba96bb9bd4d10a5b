"""``headrace runs report``: the HTML page of a run record, read as a person would read it."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from engine.records import Event, MemoryRecords, Recorder, RunView
from engine.records.dag import layout
from engine.records.report import render_report
from engine.records.svg import nice_ticks
from tests.records_runs import GRAPH_STEPS, PIPELINE_FILE, SPLIT_BYTES, SPLITS, dataflow_run, graph_run
from tests.unit.helpers import assert_no_traceback, invoke

SVG = "{http://www.w3.org/2000/svg}"
_VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr", "source"}


class _Page(HTMLParser):
    """The page's tags checked for balance, its table cells and text collected."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problems: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._section = ""
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._section = dict(attrs).get("id") or ""
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []
        if tag not in _VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass  # <rect .../> in SVG: nothing to close

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
            return
        self.open.pop()
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.tables.setdefault(self._section, []).append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    assert not page.problems, page.problems
    assert page.open == [], f"unclosed tags: {page.open}"
    return page


def _svgs(html: str) -> dict[str, ET.Element]:
    """Every inline <svg> parsed as XML, by its first class (dag, timeline, chart)."""
    found = {}
    for fragment in re.findall(r"<svg\b.*?</svg>", html, flags=re.S):
        root = ET.fromstring(fragment)
        css = (root.get("class") or "").split()
        found[css[-1] if css[0] == "chart" else css[0]] = root
    return found


def _with_class(root: ET.Element, tag: str, css: str) -> list[ET.Element]:
    return [e for e in root.iter(SVG + tag) if css in (e.get("class") or "").split()]


@pytest.fixture(scope="module")
def dataflow_html() -> str:
    store = MemoryRecords()
    events = dataflow_run()
    store.append(events)
    return render_report(RunView.of(store.events(events[0].run_id)), generated_at=0)


@pytest.fixture(scope="module")
def graph_html() -> str:
    return render_report(RunView.of(graph_run()), generated_at=0)


def test_header_names_the_run_and_what_it_cost(dataflow_html: str) -> None:
    page = _page(dataflow_html)
    text = " ".join(" ".join(page.text).split())
    assert "<title>ticket-triage · r-20260101-000000-7f3a</title>" in dataflow_html
    assert 'class="status status-failed">failed<' in dataflow_html
    for expected in (
        "pipeline file " + PIPELINE_FILE,
        "tenant support",
        "started 2026-01-01 00:00:00 UTC",
        "finished 2026-01-01 00:00:17 UTC",
        "duration 17.1 s",
        "attempts 1 (0 resumes)",
        "rows written 39,678",
        "cost $2.41 (2,539,392 tokens)",
        "retries 1",
        "dead letters out/_dead_letters/triage.jsonl",
        "outputs output: out/triage/",
        "error: node 'by_team' failed: sum(body_chars) needs numbers",
    ):
        assert expected in text


def test_dag_draws_each_node_once_with_its_edges_and_colours_failures(dataflow_html: str) -> None:
    dag = _svgs(dataflow_html)["dag"]
    boxes = {g.get("data-node"): g for g in _with_class(dag, "g", "dag-node")}
    assert sorted(boxes) == sorted(["tickets", "normalise", "triage", "output", "by_team", "team_counts"])
    assert len(_with_class(dag, "path", "edge")) == 5
    labels = {name: [t.text for t in g.iter(SVG + "text")] for name, g in boxes.items()}
    assert labels["triage"] == ["triage", "llm_classify", "39,678 rows out"]
    assert "error" in boxes["triage"].get("class", "") and "error" in boxes["by_team"].get("class", "")
    assert boxes["tickets"].get("class") == "dag-node ok"
    # left to right: a node sits right of everything that feeds it
    x = {name: float(g.find(SVG + "rect").get("x")) for name, g in boxes.items()}  # type: ignore[union-attr]
    assert x["tickets"] < x["normalise"] < x["triage"] < x["output"] == x["by_team"] < x["team_counts"]


def test_timeline_has_a_bar_per_batch_with_its_split_input_rows_and_seconds(dataflow_html: str) -> None:
    timeline = _svgs(dataflow_html)["timeline"]
    bars = _with_class(timeline, "rect", "bar")
    assert len(bars) == SPLITS
    tips = [bar.find(SVG + "title").text or "" for bar in bars]  # type: ignore[union-attr]
    split3 = next(t for t in tips if "split 3\n" in t)
    assert f"input data/tickets.csv bytes {3 * SPLIT_BYTES:,}–{4 * SPLIT_BYTES:,}" in split3
    assert "4,960 rows" in split3 and re.search(r"\n\d+\.\d\d s", split3)
    # two splits ran at once: the row stacks them in two lanes or more
    assert len({bar.get("y") for bar in bars}) >= 2


def test_rows_and_cost_over_time_are_drawn_with_axes(dataflow_html: str) -> None:
    svgs = _svgs(dataflow_html)
    rows, cost = svgs["rows"], svgs["cost"]
    assert [t.text for t in _with_class(rows, "text", "chart-title")] == ["Rows written by sinks"]
    assert "40,000" in [t.text for t in _with_class(rows, "text", "tick")]
    assert len(_with_class(rows, "circle", "rows-dot")) == SPLITS
    assert "$3.00" in [t.text for t in _with_class(cost, "text", "tick")]
    assert "no LLM cost in this run" not in dataflow_html


def test_node_table_has_the_runs_show_columns(dataflow_html: str) -> None:
    table = _page(dataflow_html).tables["nodes"]
    assert table[0] == [
        "node", "op", "rows in", "rows out", "failed", "seconds", "rows/s", "tokens", "cost", "retries",
        "dead-letter rows",
    ]  # fmt: skip
    rows = {r[0]: r for r in table[1:]}
    assert rows["triage"] == [
        "triage", "llm_classify", "39,680", "39,678", "2", "18.25", "2,174", "2,539,392", "$2.41", "1", "2",
    ]  # fmt: skip
    assert rows["tickets"][1:4] == ["read_csv", "0", "40,000"]


def test_error_table_says_where_and_what_to_do(dataflow_html: str) -> None:
    table = _page(dataflow_html).tables["errors"]
    assert table[0] == ["time (UTC)", "node", "code", "message", "location", "input", "hint"]
    bad_answer, type_error = table[1:]
    assert bad_answer[1:3] == ["triage", "llm_bad_answer"]
    assert bad_answer[4] == f"{PIPELINE_FILE}:25:3"
    assert (
        bad_answer[5]
        == f"data/tickets.csv · split 5 · bytes {5 * SPLIT_BYTES:,}–{6 * SPLIT_BYTES:,} · row 2811"
    )
    assert "only these labels" in bad_answer[6]
    assert type_error[1:3] == ["by_team", "type_error"] and type_error[4] == f"{PIPELINE_FILE}:40:9"
    assert type_error[0].startswith("00:00:17 (+17.0 s)")


def test_page_fetches_nothing(dataflow_html: str) -> None:
    assert "default-src 'none'" in dataflow_html
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", dataflow_html)
    assert (
        "<script" not in dataflow_html and "@import" not in dataflow_html and "url(http" not in dataflow_html
    )


def test_graph_run_draws_steps_loops_and_says_there_was_no_cost(graph_html: str) -> None:
    page = _page(graph_html)
    svgs = _svgs(graph_html)
    dag, timeline = svgs["dag"], svgs["timeline"]
    assert len(_with_class(dag, "g", "dag-node")) == 4
    assert len(_with_class(dag, "g", "dag-endpoint")) == 2  # start and end
    assert len(_with_class(dag, "path", "back")) == 1  # review → research
    bars = _with_class(timeline, "rect", "bar")
    assert len(bars) == len(GRAPH_STEPS)
    assert [t.text for t in _with_class(timeline, "text", "row-label")] == [
        "plan",
        "research",
        "write",
        "review",
    ]
    assert "step 5\n2.200 s" in "\n".join(b.find(SVG + "title").text or "" for b in bars)  # type: ignore[union-attr]
    assert "no LLM cost in this run" in graph_html and "rows" not in svgs
    rows = {r[0]: r for r in page.tables["nodes"][1:]}
    assert rows["research"][2:4] == ["2", "2"] and rows["research"][6] == "-"
    assert 'class="status status-succeeded"' in graph_html and "graph steps" in graph_html
    assert "a state graph writes no rows through sinks" in graph_html


def test_user_strings_are_escaped_everywhere() -> None:
    evil = '<script>alert("x")</script>'
    events = dataflow_run(names={"triage": evil, "by_team": "a&b <img src=x onerror=alert(1)>"})
    store = MemoryRecords()
    store.append(events)
    html = render_report(RunView.of(store.events(events[0].run_id)), generated_at=0)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    page = _page(html)
    assert evil in "".join(page.text)  # shown as text, in the tables and the SVG titles
    dag = _svgs(html)["dag"]  # still well-formed XML
    assert evil in [g.get("data-node") for g in _with_class(dag, "g", "dag-node")]
    assert any(evil in (row[1]) for row in page.tables["errors"][1:])


def test_a_record_still_running_with_no_batches_renders() -> None:
    run = "r-live"
    events = [
        Event(run, 0, 100.0, "run_started", None, {"pipeline": "p", "nodes": {"a": {"op": "read_csv"}}}),
        Event(run, 1, 103.0, "node_started", "a", {}),
    ]
    html = render_report(RunView.of(events), generated_at=0)
    page = _page(html)
    assert 'class="status status-running">running<' in html
    assert "- (last event 1970-01-01 00:01:43 UTC)" in " ".join(page.text)
    assert "no batches or steps recorded" in html and "no errors recorded" in html


def test_a_resumed_run_counts_its_attempts() -> None:
    first = dataflow_run("r-twice")
    again = [
        Event("r-twice", len(first) + i, e.at + 3600, e.kind, e.node, e.data)
        for i, e in enumerate(dataflow_run("r-twice"))
    ]
    html = render_report(RunView.of(first + again), generated_at=0)
    assert "2 (1 resume)" in html
    assert len(_with_class(_svgs(html)["timeline"], "rect", "attempt-2")) == SPLITS


def test_view_folds_graph_steps_and_rows_written() -> None:
    view = RunView.of(graph_run())
    assert [(s.node, s.step) for s in view.steps] == [(n, i) for i, (n, _) in enumerate(GRAPH_STEPS, 1)]
    assert view.steps[1].ended - view.steps[1].began == pytest.approx(GRAPH_STEPS[1][1])
    assert view.rows_written is None
    assert RunView.of(dataflow_run()).rows_written == 39_678  # output's rows; team_counts wrote none


def test_layout_layers_by_longest_path_and_survives_cycles() -> None:
    plan = layout(["a", "b", "c"], [("a", "b"), ("b", "c"), ("a", "c")])
    assert [[n for n in layer if not n.startswith("\0")] for layer in plan.layers] == [["a"], ["b"], ["c"]]
    assert len(plan.chains[("a", "c")]) == 3  # through a placeholder in b's layer
    loop = layout(["x", "y"], [("x", "y"), ("y", "x"), ("y", "y")])
    assert loop.layers == [["x"], ["y"]] and sorted(loop.back) == [("y", "x"), ("y", "y")]


def test_layout_orders_a_layer_to_avoid_crossings() -> None:
    plan = layout(["s1", "s2", "a", "b"], [("s1", "b"), ("s2", "a")])
    first, second = plan.layers
    assert first.index("s1") < first.index("s2") and second.index("b") < second.index("a")


def test_ticks_are_round() -> None:
    assert nice_ticks(0, 17.1, 8) == [0, 5, 10, 15, 20]
    assert nice_ticks(0, 17.1, 10) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert nice_ticks(0, 2.41, 4) == [0, 1, 2, 3]


def test_cli_writes_the_report_of_a_run_in_the_store(tmp_path: Path) -> None:
    from engine.records import open_records

    url = f"sqlite:///{tmp_path}/runs.db"
    store = open_records(url)
    recorder = Recorder(store, "r-cli", interval_s=60)
    # no kind=...: Recorder.emit's own first parameter is named kind (the run's kind defaults to dataflow)
    recorder.emit("run_started", pipeline="cli-run", nodes={"a": {"op": "read_csv"}})
    recorder.emit("run_finished", status="succeeded", seconds=0.5)
    recorder.close()
    store.close()
    out = tmp_path / "r.html"
    result = invoke("runs", "report", "r-cli", "-o", str(out), "--store", url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "cli-run" in out.read_text(encoding="utf-8")

    missing = invoke("runs", "report", "nope", "-o", str(tmp_path / "x.html"), "--store", url)
    assert missing.exit_code == 1
    assert f"no run nope in {url}; `headrace runs list` shows the runs there" in missing.stderr
    assert not (tmp_path / "x.html").exists()
    assert_no_traceback(missing.output)


def test_cli_reads_the_default_store_from_the_environment(tmp_path: Path) -> None:
    result = invoke(
        "runs",
        "report",
        "nope",
        "-o",
        str(tmp_path / "x.html"),
        env={"HEADRACE_CHECKPOINTS": str(tmp_path / "e.db")},
    )
    assert result.exit_code == 1 and str(tmp_path / "e.db") in result.stderr


def test_a_refused_budget_reservation_adds_no_nameless_node() -> None:
    events = [*dataflow_run("r-refused")[:-1]]
    events.append(Event("r-refused", len(events), events[-1].at, "budget", None, {"refused": "over $1.00"}))
    view = RunView.of(events)
    assert "" not in view.nodes
