"""The PromQL of the chart's dashboards, as Grafana sends it for given variables."""

from __future__ import annotations

import json
from pathlib import Path

FILES = Path(__file__).resolve().parent.parent / "charts" / "finetune-operator" / "dashboards"


def panel_queries(dashboard: str, **variables: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of `dashboard` (a file name), with Grafana's
    `$name` variables replaced by `variables` (`__rate_interval` among them)."""
    board = json.loads((FILES / dashboard).read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name in sorted(variables, key=len, reverse=True):
                expr = expr.replace(f"${name}", variables[name])
            assert "$" not in expr, expr
            out.append((panel["title"], expr))
    return out
