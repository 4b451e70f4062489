"""`finetune-operator`: kopf watches feeding the controller, plus metrics and health.

kopf does the watching (initial listing, reconnects, server-side label
selection); its handlers only enqueue the job a watch event concerns. With
--leader-elect, only the replica that holds the Lease (leader.py) runs the
controller's workers; the others watch and wait. The decisions live in
reconcile.py and the API calls in kube.py. Only `@kopf.on.event` is used:
those handlers keep no state in the watched objects and add no finalizers, so
deleting a job never waits on the operator, even when it is not running.
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import threading
import uuid
from typing import Any

import click
import kopf
from kubernetes import client, config
from prometheus_client import generate_latest

from finetune_api import names as c

from . import restart
from .builders import Defaults
from .controller import Controller
from .kube import Kube
from .leader import Elector, Timing
from .reconcile import Settings

log = logging.getLogger("finetune_operator")
_controller: Controller | None = None


def controller() -> Controller:
    assert _controller is not None, "the controller starts before kopf"
    return _controller


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)  # type: ignore[arg-type]
def job_event(type: str | None, name: str, namespace: str, meta: Any, **_: Any) -> None:
    rv = None if type == "DELETED" else meta.get("resourceVersion")
    controller().job_event(namespace, name, rv)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_JOB: kopf.PRESENT})  # type: ignore[arg-type]
def pod_event(namespace: str, labels: Any, **_: Any) -> None:
    controller().pod_event(namespace, labels[c.LABEL_JOB])


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf connects exactly as the operator's own client was configured."""
    cfg = client.Configuration.get_default_copy()
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _sep, token = (header or "").partition(" ")
    if not token:
        scheme, token = "", scheme
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Server-side filtering: the operator only ever receives its own pods.
    settings.watching.label_selectors["v1", "pods"] = c.LABEL_JOB
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


class _Handler(http.server.BaseHTTPRequestHandler):
    resync = 60.0

    def do_GET(self) -> None:
        ctl = controller()
        if self.path == "/metrics":
            self._send(200, generate_latest(ctl.metrics.registry), "text/plain; version=0.0.4")
        elif self.path == "/healthz":
            ok, why = ctl.health.live(self.resync)
            self._send(200 if ok else 500, why.encode())
        elif self.path == "/readyz":
            ready = ctl.health.is_ready()
            self._send(200 if ready else 503, b"ok" if ready else b"not synced yet")
        else:
            self._send(404, b"not found")

    def _send(self, code: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve_http(address: str, port: int, resync: float) -> http.server.ThreadingHTTPServer:
    _Handler.resync = resync
    server = http.server.ThreadingHTTPServer((address, port), _Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def _start_elector(elector: Elector, ctl: Controller) -> None:
    """Run the controller only while leading; a standby is ready once it reads the Lease."""

    def lost() -> None:
        # Another replica may take over at any moment now: stop reconciling at once,
        # and let the Deployment start this one again, as a standby.
        logging.shutdown()
        os._exit(1)

    stop = threading.Event()
    threading.Thread(
        target=elector.run, args=(stop, ctl.start, lost), name="leader-election", daemon=True
    ).start()
    ctl.health.standby = elector.reached_api


def _load_config(kubeconfig: str | None) -> client.ApiClient:
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FT_OPERATOR"}
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False),
    help="Kubeconfig (default: in-cluster, then ~/.kube/config).",
)
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Watch only these namespaces (repeatable; default: all).",
)
@click.option(
    "--image",
    default=c.DEFAULT_TRAINER_IMAGE,
    show_default=True,
    help="Trainer image for jobs that set none.",
)
@click.option(
    "--gang-scheduler",
    type=click.Choice(["none", "coscheduling", "volcano"]),
    default="none",
    show_default=True,
    help="Create a PodGroup for this gang scheduler.",
)
@click.option(
    "--trainer-metrics-port",
    type=int,
    default=c.METRICS_PORT,
    show_default=True,
    help="Port of the trainer pods' metrics endpoint (progress is read from rank 0).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Jobs reconciled in parallel.",
)
@click.option(
    "--resync-seconds",
    type=click.FloatRange(1),
    default=60.0,
    show_default=True,
    help="Every job is reconciled at least this often.",
)
@click.option(
    "--progress-seconds",
    type=click.FloatRange(1),
    default=15.0,
    show_default=True,
    help="How often a running job's progress is read.",
)
@click.option(
    "--restart-backoff-seconds",
    type=click.FloatRange(0),
    default=restart.DEFAULT_BASE_SECONDS,
    show_default=True,
    help="Wait before a failed gang's first restart; doubles with each further restart.",
)
@click.option(
    "--restart-backoff-max-seconds",
    type=click.FloatRange(0),
    default=restart.DEFAULT_CAP_SECONDS,
    show_default=True,
    help="The longest wait between attempts.",
)
@click.option(
    "--stale-watch-seconds",
    type=click.FloatRange(1),
    default=120.0,
    show_default=True,
    help="Liveness fails once the watch is this far behind the API.",
)
@click.option(
    "--http-port",
    type=int,
    default=8080,
    show_default=True,
    help="Port of /metrics, /healthz and /readyz.",
)
@click.option(
    "--http-address",
    default="0.0.0.0",  # noqa: S104 - probes and Prometheus reach the pod from outside
    show_default=True,
    help="Address of the HTTP endpoints.",
)
@click.option(
    "--leader-elect",
    is_flag=True,
    help="Reconcile only while holding a Lease, so that several replicas run with one active.",
)
@click.option(
    "--leader-election-namespace",
    envvar="POD_NAMESPACE",
    default="default",
    show_default="$POD_NAMESPACE, else default",
    help="Namespace of the Lease.",
)
@click.option(
    "--leader-election-id",
    default="finetune-operator",
    show_default=True,
    help="Name of the Lease (one per installation).",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(3),
    default=15.0,
    show_default=True,
    help="A standby takes over this long after the leader's last renewal.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(
    kubeconfig: str | None,
    namespaces: tuple[str, ...],
    image: str,
    gang_scheduler: str,
    trainer_metrics_port: int,
    workers: int,
    resync_seconds: float,
    progress_seconds: float,
    restart_backoff_seconds: float,
    restart_backoff_max_seconds: float,
    stale_watch_seconds: float,
    http_port: int,
    http_address: str,
    leader_elect: bool,
    leader_election_namespace: str,
    leader_election_id: str,
    lease_seconds: float,
    verbose: bool,
) -> None:
    """Run the FineTuneJob operator."""
    global _controller
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not verbose:  # kopf logs every handler call at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = Settings(
        defaults=Defaults(image=image, metrics_port=trainer_metrics_port),
        gang=gang_scheduler,  # type: ignore[arg-type]
        progress_interval=progress_seconds,
        restart_backoff=restart_backoff_seconds,
        restart_backoff_max=restart_backoff_max_seconds,
    )
    _controller = Controller(
        Kube(_load_config(kubeconfig)),
        settings,
        workers=workers,
        resync=resync_seconds,
        namespaces=namespaces,
    )
    _controller.health.stale_after = stale_watch_seconds
    serve_http(http_address, http_port, resync_seconds)
    elector = None
    if leader_elect:
        elector = Elector(
            _controller.kube.api,
            leader_election_namespace,
            leader_election_id,
            f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
            Timing(lease_seconds),
        )
        _start_elector(elector, _controller)
    else:
        _controller.start()
    try:
        kopf.run(clusterwide=not namespaces, namespaces=namespaces, standalone=True)
    finally:
        _controller.stop()
        if elector is not None:
            elector.release()


if __name__ == "__main__":
    main()
