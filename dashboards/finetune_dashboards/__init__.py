"""Grafana dashboards of the project, written as code with grafana-foundation-sdk.

`python -m finetune_dashboards --write` (`make generate`) writes them as JSON into the
chart (charts/finetune-operator/dashboards/), where the chart ships them as ConfigMaps
for Grafana's dashboard sidecar; `--check` fails when the files drift from this code.
Every query uses the series names of `finetune_api.metrics`.
"""
