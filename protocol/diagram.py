"""Render the connection state machine's transition table as a Mermaid diagram.

``python -m protocol.diagram`` prints it; docs/protocol.md embeds the output and
a test checks the two are equal, so the picture cannot drift from the code.
"""

from __future__ import annotations

from collections import defaultdict

from .machine import TRANSITIONS, State


def mermaid() -> str:
    """A ``stateDiagram-v2`` with one arrow per (from, to) pair, inputs joined."""
    edges: dict[tuple[State, State], list[str]] = defaultdict(list)
    for (source, kind), target in TRANSITIONS.items():
        edges[source, target].append(kind.value)
    lines = ["stateDiagram-v2", f"    [*] --> {State.AWAITING_AUTH.value}"]
    for (source, target), kinds in edges.items():
        lines.append(f"    {source.value} --> {target.value}: {', '.join(kinds)}")
    lines.append(f"    {State.CLOSED.value} --> [*]")
    return "\n".join(lines)


if __name__ == "__main__":
    print(mermaid())
