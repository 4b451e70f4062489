"""The *Operator* dashboard: jobs by phase, reconciles, errors, restarts and the queue."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models.dashboard import Dashboard

from finetune_api.metrics import Metric as M
from finetune_api.metrics import OperatorMetric as OM
from finetune_api.metrics import total

from .panels import Q, datasource_variable, series

UID = "finetune-operator"


def rate(counter: str) -> str:
    # max: with several replicas only the active one counts; its series is the largest.
    return f"max(rate({total(counter)}[$__rate_interval]))"


def quantile(q: float) -> Q:
    buckets = f"rate({OM.RECONCILE_SECONDS}_bucket[$__rate_interval])"
    return Q(f"histogram_quantile({q}, max by (le) ({buckets}))", f"p{round(q * 100)}")


def build() -> Dashboard:
    d = (
        dash.Dashboard("FineTuneJob: operator")
        .uid(UID)
        .tags(["finetune"])
        .description("The FineTuneJob operator: jobs, reconciles, errors, restarts, queue.")
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(datasource_variable())
    )
    d.with_panel(series("Jobs by phase", "none", Q(f"max by (phase) ({OM.JOBS})", "{{phase}}")))
    d.with_panel(series("Reconciles", "reqps", Q(rate(OM.RECONCILES), "reconciles/s")))
    d.with_panel(series("Reconcile latency", "s", quantile(0.5), quantile(0.99)))
    d.with_panel(series("Reconcile errors", "reqps", Q(rate(OM.RECONCILE_ERRORS), "errors/s")))
    d.with_panel(
        series(
            "Restarts per job",
            "none",
            Q(
                f"max by (namespace, finetunejob) ({M.ATTEMPT}) - 1",
                "{{namespace}}/{{finetunejob}}",
            ),
            description="Gang restarts of each running job (its attempt number less one).",
        )
    )
    d.with_panel(
        series(
            "Gang restarts and pods created",
            "reqps",
            Q(rate(OM.GANG_RESTARTS), "gang restarts/s"),
            Q(rate(OM.PODS_CREATED), "pods created/s"),
        )
    )
    d.with_panel(series("Queue depth", "none", Q(f"max({OM.QUEUE_DEPTH})", "jobs waiting")))
    d.with_panel(series("Watch lag", "s", Q(f"max({OM.WATCH_LAG})", "behind the API")))
    d.with_panel(
        series(
            "Active replica",
            "none",
            Q(f"max by (pod) ({OM.LEADER})", "{{pod}}"),
            description="1 on the replica that holds the Lease and reconciles, 0 on standbys.",
        )
    )
    return d.build()
