"""The run report's DAG: a layered layout computed here, drawn as inline SVG.

Layers are longest paths from the nodes nobody feeds (left to right); an edge that spans several layers
passes through a placeholder in each layer between, so it is ordered and drawn like the others. Within a
layer, nodes are ordered by the mean position of their neighbours, sweeping down and up a few times and
keeping the order with the fewest crossings (the Sugiyama method, small enough for ~30 nodes). A state
graph's edges back to an earlier layer (its loops) are left out of the layering and drawn dashed below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from engine.records.svg import el, fit

NODE_W, NODE_H = 170.0, 56.0
_GAP_X, _GAP_Y, _MARGIN = 70.0, 22.0, 16.0
_SWEEPS = 4
_ENDPOINT_INSET = 45.0


@dataclass(frozen=True)
class DagNode:
    """A node as the DAG draws it."""

    id: str
    op: str
    detail: str
    """The third line of the box (rows out, or executions of a graph node)."""
    state: str = "ok"
    """``ok``, ``dead_letter`` or ``error``: the box's colour."""
    tip: str = ""


@dataclass(frozen=True)
class Layout:
    """Where each node (and each placeholder, named ``\\0edge\\0k``) sits: layer and order in it."""

    layers: list[list[str]]
    chains: dict[tuple[str, str], list[str]]
    """Every forward edge's path: source, its placeholders, target."""
    back: list[tuple[str, str]]
    """Edges left out of the layering (to the same or an earlier layer)."""

    def position(self) -> dict[str, tuple[int, int]]:
        """``{node: (layer, index in layer)}``."""
        return {n: (li, i) for li, layer in enumerate(self.layers) for i, n in enumerate(layer)}


def layout(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> Layout:
    """The layered layout of ``nodes`` and ``edges`` (edge ends missing from ``nodes`` are added)."""
    order = list(dict.fromkeys([*nodes, *(n for e in edges for n in e)]))
    edges = list(dict.fromkeys(edges))
    back = _back_edges(order, edges)
    forward = [e for e in edges if e not in back]
    rank = _longest_path(order, forward)
    layers: list[list[str]] = [[] for _ in range(max(rank.values(), default=-1) + 1)]
    for node in order:
        layers[rank[node]].append(node)
    chains: dict[tuple[str, str], list[str]] = {}
    for a, b in forward:
        chain = [a]
        for k, layer in enumerate(range(rank[a] + 1, rank[b])):
            dummy = f"\0{a}\0{b}\0{k}"
            layers[layer].append(dummy)
            chain.append(dummy)
        chains[(a, b)] = [*chain, b]
    links = [(chain[i], chain[i + 1]) for chain in chains.values() for i in range(len(chain) - 1)]
    return Layout(_ordered(layers, links), chains, [e for e in edges if e in back])


def _back_edges(order: Sequence[str], edges: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Edges that close a cycle in a depth-first walk from the nodes in ``order``."""
    succ: dict[str, list[str]] = {n: [] for n in order}
    for a, b in edges:
        succ[a].append(b)
    state: dict[str, int] = {}  # 1 on the walk's path, 2 done
    back: set[tuple[str, str]] = set()
    roots = [n for n in order if not any(b == n for _, b in edges)] + list(order)
    for root in roots:
        if root in state:
            continue
        stack = [(root, iter(succ[root]))]
        state[root] = 1
        while stack:
            node, todo = stack[-1]
            nxt = next(todo, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((node, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))
    return back


def _longest_path(order: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    rank = dict.fromkeys(order, 0)
    preds: dict[str, list[str]] = {n: [] for n in order}
    for a, b in edges:
        preds[b].append(a)
    done: set[str] = set()
    while len(done) < len(order):
        for node in order:
            if node not in done and all(p in done for p in preds[node]):
                rank[node] = max((rank[p] + 1 for p in preds[node]), default=0)
                done.add(node)
    return rank


def _ordered(layers: list[list[str]], links: Sequence[tuple[str, str]]) -> list[list[str]]:
    """``layers`` reordered by neighbours' mean positions, the order with the fewest crossings."""
    best = [list(layer) for layer in layers]
    fewest = _crossings(best, links)
    current = [list(layer) for layer in layers]
    preds: dict[str, list[str]] = {}
    succs: dict[str, list[str]] = {}
    for a, b in links:
        succs.setdefault(a, []).append(b)
        preds.setdefault(b, []).append(a)
    for _ in range(_SWEEPS):
        for i in range(1, len(current)):
            current[i] = _by_mean(current[i], current[i - 1], preds)
        for i in range(len(current) - 2, -1, -1):
            current[i] = _by_mean(current[i], current[i + 1], succs)
        count = _crossings(current, links)
        if count < fewest:
            best, fewest = [list(layer) for layer in current], count
    return best


def _by_mean(layer: list[str], fixed: list[str], neighbours: dict[str, list[str]]) -> list[str]:
    where = {n: i for i, n in enumerate(fixed)}

    def key(item: tuple[int, str]) -> float:
        index, node = item
        near = [where[m] for m in neighbours.get(node, []) if m in where]
        return sum(near) / len(near) if near else float(index)

    return [n for _, n in sorted(enumerate(layer), key=key)]


def _crossings(layers: list[list[str]], links: Sequence[tuple[str, str]]) -> int:
    where = {n: i for layer in layers for i, n in enumerate(layer)}
    rank = {n: li for li, layer in enumerate(layers) for n in layer}
    count = 0
    between: dict[int, list[tuple[int, int]]] = {}
    for a, b in links:
        between.setdefault(rank[a], []).append((where[a], where[b]))
    for pairs in between.values():
        for i, (a1, b1) in enumerate(pairs):
            count += sum(1 for a2, b2 in pairs[i + 1 :] if (a1 - a2) * (b1 - b2) < 0)
    return count


def dag_svg(nodes: Sequence[DagNode], edges: Sequence[tuple[str, str]]) -> Markup:
    """The run's graph: a box per node (id, op, detail; coloured by state), arrows for its edges."""
    known = {n.id: n for n in nodes}
    plan = layout([n.id for n in nodes], edges)
    tallest = max((len(layer) for layer in plan.layers), default=1)
    height_of = tallest * (NODE_H + _GAP_Y) - _GAP_Y
    loop_room = 46.0 if plan.back else 0.0
    xy: dict[str, tuple[float, float]] = {}
    for li, layer in enumerate(plan.layers):
        top = _MARGIN + (height_of - (len(layer) * (NODE_H + _GAP_Y) - _GAP_Y)) / 2
        for i, name in enumerate(layer):
            xy[name] = (_MARGIN + li * (NODE_W + _GAP_X), top + i * (NODE_H + _GAP_Y))
    width = _MARGIN * 2 + len(plan.layers) * (NODE_W + _GAP_X) - _GAP_X
    height = _MARGIN * 2 + height_of + loop_room
    parts: list[str] = [_arrow_marker()]
    for (a, b), chain in plan.chains.items():
        d = _chain_path([xy[n] for n in chain], _inset(a, known), _inset(b, known))
        parts.append(el("path", {"class_": "edge", "d": d}, _edge_tip(a, b)))
    for a, b in plan.back:
        parts.append(el("path", {"class_": "edge back", "d": _loop_path(xy[a], xy[b])}, _edge_tip(a, b)))
    for name in (n for layer in plan.layers for n in layer if not n.startswith("\0")):
        node = known.get(name)
        parts.append(_node_box(node, *xy[name]) if node else _endpoint(name, *xy[name]))
    frame = {
        "xmlns": "http://www.w3.org/2000/svg",
        "class_": "dag",
        "width": width,
        "height": height,
        "viewBox": f"0 0 {width:.0f} {height:.0f}",
        "role": "img",
    }
    return el("svg", frame, *parts)


def _node_box(node: DagNode, x: float, y: float) -> Markup:
    return el(
        "g",
        {"class_": f"dag-node {node.state}", "data_node": node.id},
        el("title", None, node.tip or node.id),
        el("rect", {"x": x, "y": y, "width": NODE_W, "height": NODE_H, "rx": 7.0}),
        el("text", {"class_": "node-id", "x": x + 10, "y": y + 18}, fit(node.id, NODE_W - 20)),
        el("text", {"class_": "node-op", "x": x + 10, "y": y + 33}, fit(node.op, NODE_W - 20)),
        el("text", {"class_": "node-detail", "x": x + 10, "y": y + 48}, fit(node.detail, NODE_W - 20)),
    )


def _endpoint(name: str, x: float, y: float) -> Markup:
    """An edge end that is no node of the run (a state graph's start or end)."""
    return el(
        "g",
        {"class_": "dag-endpoint"},
        el("title", None, name),
        el(
            "rect",
            {
                "x": x + _ENDPOINT_INSET,
                "y": y + 14,
                "width": NODE_W - 2 * _ENDPOINT_INSET,
                "height": NODE_H - 28,
                "rx": 14.0,
            },
        ),
        el(
            "text",
            {"x": x + NODE_W / 2, "y": y + NODE_H / 2 + 4, "text_anchor": "middle"},
            fit(name.strip("_") or name, NODE_W - 2 * _ENDPOINT_INSET - 8),
        ),
    )


def _inset(name: str, known: dict[str, DagNode]) -> float:
    """How far inside its slot a box's side is: an endpoint is narrower than a node."""
    return 0.0 if name in known else _ENDPOINT_INSET


def _chain_path(points: Sequence[tuple[float, float]], start_inset: float, end_inset: float) -> str:
    """A smooth path from the right side of the first box through placeholders to the next's left side."""
    (x0, y0), *rest = points
    cur = (x0 + NODE_W - start_inset, y0 + NODE_H / 2)
    d = [f"M{cur[0]:.1f} {cur[1]:.1f}"]
    for i, (x, y) in enumerate(rest):
        last = i == len(rest) - 1
        nxt = (x + end_inset - 6, y + NODE_H / 2) if last else (x + NODE_W / 2, y + NODE_H / 2)
        bend = (nxt[0] - cur[0]) / 2
        d.append(
            f"C{cur[0] + bend:.1f} {cur[1]:.1f} {nxt[0] - bend:.1f} {nxt[1]:.1f} {nxt[0]:.1f} {nxt[1]:.1f}"
        )
        cur = nxt
    return " ".join(d)


def _loop_path(a: tuple[float, float], b: tuple[float, float]) -> str:
    """A dashed arc below the boxes, from the bottom of ``a`` back to the bottom of ``b``."""
    ax, ay = a[0] + NODE_W / 2 + 12, a[1] + NODE_H
    bx, by = b[0] + NODE_W / 2 - 12, b[1] + NODE_H + 6
    drop = max(ay, by) + 36
    return f"M{ax:.1f} {ay:.1f} C{ax:.1f} {drop:.1f} {bx:.1f} {drop:.1f} {bx:.1f} {by:.1f}"


def _edge_tip(a: str, b: str) -> Markup:
    return el("title", None, f"{a} → {b}")


def _arrow_marker() -> Markup:
    head = el("path", {"d": "M0 0 L10 5 L0 10 z", "class_": "arrow-head"})
    marker = el(
        "marker",
        {
            "id": "arrow",
            "viewBox": "0 0 10 10",
            "refX": 9.0,
            "refY": 5.0,
            "markerWidth": 7.0,
            "markerHeight": 7.0,
            "orient": "auto-start-reverse",
        },
        head,
    )
    return el("defs", None, marker)
