"""Services a run talks to, checked once before anything is written.

An MLflow tracking server that does not answer makes the MLflow client retry with backoff for
about four minutes; a Ray address where no cluster listens makes ``ray.init`` wait forever.
Both are probed here first, with a short timeout, and refused in one line that names the
setting, the address (credentials redacted) and what was found there.

Only reachability is probed: an answer of any kind (even "unauthorized") is left to the
service's own client, which may hold credentials this probe does not.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request

from multivae.config import ConfigError
from multivae.redact import redact

PROBE_TIMEOUT_S = 10.0
"""Seconds a probe waits for a connection or an answer."""
RAY_GCS_PORT = 6379
RAY_CLIENT_PORT = 10001


def unreachable(error: BaseException) -> str:
    """What a failed connection found, in words."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, socket.gaierror):
        return "its host name does not resolve"
    if isinstance(reason, ConnectionRefusedError):
        return "nothing listens there (connection refused)"
    if isinstance(reason, TimeoutError | socket.timeout):
        return "no answer (timed out)"
    return f"no connection ({type(reason).__name__}: {reason})"


def probe_tcp(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` when ``host:port`` accepts a TCP connection, else what was found instead."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return unreachable(error)


def check_tracking_uri(uri: str, setting: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse an ``http(s)`` MLflow tracking URI whose server cannot be reached.

    Other schemes (a SQLite file, ``databricks``, ...) are left to MLflow.

    Raises:
        ConfigError: Naming ``setting`` (e.g. ``mlflow.tracking_uri``), the redacted URI and
            what the probe found.
    """
    split = urllib.parse.urlsplit(uri)
    if split.scheme not in ("http", "https"):
        return
    # Reachability only: the credentials of the URI's user-info part are not sent.
    host = f"[{split.hostname}]" if ":" in (split.hostname or "") else str(split.hostname)
    netloc = host if split.port is None else f"{host}:{split.port}"
    path = split.path.rstrip("/") + "/health"
    health = urllib.parse.urlunsplit((split.scheme, netloc, path, "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # the server answered; MLflow's client sends the credentials it has
    except (urllib.error.URLError, OSError) as error:
        found = unreachable(error)
    raise ConfigError(
        f"{setting}: could not reach the MLflow tracking server at {redact(uri)}: {found}; "
        "expected a running server (mlflow server --host HOST --port PORT), another URI, or "
        "mlflow.enabled: false"
    )


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port a Ray address connects to; ``None`` for ``auto`` and ``local``."""
    if address in ("", "auto", "local"):
        return None
    client = address.startswith("ray://")
    split = urllib.parse.urlsplit(address if "://" in address else f"gcs://{address}")
    if split.hostname is None:
        raise ConfigError(f"expected a Ray address HOST:PORT or ray://HOST:PORT, found {address!r}")
    return split.hostname, split.port or (RAY_CLIENT_PORT if client else RAY_GCS_PORT)


def check_ray_address(address: str | None, setting: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse a Ray address (``address`` or else ``RAY_ADDRESS``) where nothing listens.

    Raises:
        ConfigError: Naming the setting the address came from, the address and what the probe
            found.
    """
    if not address:
        address, setting = os.environ.get("RAY_ADDRESS", ""), "RAY_ADDRESS"
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    found = probe_tcp(*endpoint, timeout=timeout)
    if found is not None:
        raise ConfigError(
            f"{setting}: could not reach a Ray cluster at {redact(address)}: {found}; expected "
            "the address of a running cluster's head (ray start --head prints it), or no "
            "address for a local Ray"
        )
