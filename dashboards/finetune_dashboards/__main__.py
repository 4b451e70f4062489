"""`python -m finetune_dashboards --write | --check`: the chart's dashboard JSON files,
and the table of their panels in docs/metrics.md (between its two markers)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from . import operator, training

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "charts" / "finetune-operator" / "dashboards"
DOCS = ROOT / "docs" / "metrics.md"
BEGIN = "<!-- panels: written by `make generate` from dashboards/ -->"
END = "<!-- end of panels -->"
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "training.json": training.build,
    "operator.json": operator.build,
}


def render(build: Callable[[], Dashboard]) -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def panel_table(boards: dict[str, Dashboard]) -> str:
    """Markdown: each dashboard's panels and their PromQL."""
    lines = []
    for name, board in boards.items():
        lines += ["", f"**{board.title}** (`{name}`)", "", "| panel | PromQL |", "| --- | --- |"]
        for panel in board.panels or []:
            for target in getattr(panel, "targets", None) or []:
                expr = str(target.expr).replace("|", "\\|")
                lines.append(f"| {panel.title} | `{expr}` |")
    return "\n".join([BEGIN, *lines, "", END])


def with_table(docs: str, table: str) -> str:
    head, _, rest = docs.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + table + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write the JSON files")
    action.add_argument("--check", action="store_true", help="fail if a file differs")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the JSON files")
    args = parser.parse_args()
    stale = []
    docs = DOCS.read_text()
    expected = with_table(docs, panel_table({n: b() for n, b in DASHBOARDS.items()}))
    if args.write:
        DOCS.write_text(expected)
    elif docs != expected:
        stale.append(str(DOCS))
    for name, build in DASHBOARDS.items():
        path, text = args.out / name, render(build)
        if args.write:
            args.out.mkdir(exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(str(path))
    if stale:
        print(f"stale: {', '.join(stale)}; run `make generate`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
