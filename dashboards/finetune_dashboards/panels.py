"""Small helpers over the SDK's builders: one Prometheus query, one panel of each kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common, prometheus, stat, timeseries, trend
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common as models
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DataTransformerConfig,
    VariableRefresh,
    VariableSort,
)

# Every panel and variable reads the Prometheus the user picks in the `datasource` variable.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
LEGEND = (
    common.VizLegendOptions()
    .show_legend(True)
    .display_mode(models.LegendDisplayMode.LIST)
    .placement(models.LegendPlacement.BOTTOM)
)


@dataclass(frozen=True)
class Q:
    """One PromQL query and the legend of its series."""

    expr: str
    legend: str = ""


def _targets(queries: Sequence[Q]) -> list[Builder[variants.Dataquery]]:
    out: list[Builder[variants.Dataquery]] = []
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        target = prometheus.Dataquery().expr(q.expr).ref_id(ref).range().datasource(DATASOURCE)
        out.append(target.legend_format(q.legend or "__auto"))
    return out


def series(
    title: str, unit: str, *queries: Q, description: str = "", span: int = 12, empty: str = ""
) -> timeseries.Panel:
    """A time series panel; `empty` is what it says when the queries find no series."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(span)
        .height(8)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .legend(LEGEND)
    )
    return panel.no_value(empty) if empty else panel


def single(title: str, unit: str, query: Q, description: str = "", span: int = 4) -> stat.Panel:
    """A stat panel: the query's last value, large."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(span)
        .height(4)
        .datasource(DATASOURCE)
        .targets(_targets([query]))
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(models.BigValueGraphMode.NONE)
    )


def by_step(title: str, x: Q, *queries: Q, description: str = "", span: int = 12) -> trend.Panel:
    """A trend panel: the queries plotted against the series `x` (joined on time)."""
    return (
        trend.Panel()
        .title(title)
        .description(description)
        .span(span)
        .height(8)
        .datasource(DATASOURCE)
        .targets(_targets([x, *queries]))
        .with_transformation(
            DataTransformerConfig(
                id_val="joinByField", options={"byField": "Time", "mode": "outer"}
            )
        )
        .x_field(x.legend)
    )


def datasource_variable() -> dash.DatasourceVariable:
    return dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def label_variable(name: str, label: str, query: str) -> dash.QueryVariable:
    """A variable of the values of one label, as `label_values(...)` finds them."""
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
