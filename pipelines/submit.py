"""Submitting the pipeline: a run of it created on a KFP endpoint with ``kfp.Client``.

The endpoint is ``--host`` or ``KFP_HOST``; a bearer token comes from ``--token`` or
``KFP_TOKEN``, or the client uses its own credentials: in-cluster service account, kubeconfig,
IAP. The endpoint is probed once before the client is built, and the client's network and HTTP
failures are said in one line naming it.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.arguments import check_arguments
from pipelines.compile import compile_pipeline


def submit(
    arguments: dict[str, Any],
    *,
    host: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
    experiment: str = "multivae",
    run_name: str | None = None,
    service_account: str | None = "multivae-pipeline",
    enable_caching: bool | None = None,
    train_gpus: int = 0,
    client: Any = None,
) -> Any:
    """Compile the cluster pipeline and create a run of it on a KFP endpoint.

    Args:
        arguments: Pipeline parameters.
        host: The KFP API endpoint (``https://kubeflow.example.com/pipeline``); else
            ``KFP_HOST``.
        token: A bearer token; else ``KFP_TOKEN``; else the client's default credentials.
        namespace: The Kubeflow profile namespace (multi-user installs).
        experiment: KFP experiment (created when needed).
        run_name: Name of the run.
        service_account: The steps' Kubernetes service account (the ``rayjob`` mode creates
            RayJobs with it; see ``infra/base/rbac.yaml``).
        enable_caching: Override the compiled caching settings for every step.
        train_gpus: GPUs of the train step's pod (``train_mode=local``; see ``build_pipeline``).
        client: A ``kfp.Client`` (built from host and token by default).

    Returns:
        The client's ``RunPipelineResult`` (``run_id``, ``run_info``).
    """
    import kfp

    check_arguments(arguments)
    owned = client is None
    host = host or os.environ.get("KFP_HOST")
    if client is None:
        if not host:
            raise ValueError("expected --host or KFP_HOST (the KFP API endpoint)")
        token = token or os.environ.get("KFP_TOKEN") or None
        probe_endpoint(host, token)
        with warnings.catch_warnings(), _endpoint_errors(host), _quiet_health_checks():
            # kfp.Client warns on every construction that it needs a KFP v2 backend.
            warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
            client = kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")
    try:
        endpoint = host or "the client's endpoint"
        with tempfile.TemporaryDirectory() as scratch, _endpoint_errors(endpoint):
            package = compile_pipeline(Path(scratch) / "pipeline.yaml", train_gpus=train_gpus)
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
                service_account=service_account,
                enable_caching=enable_caching,
            )
        if not result.run_id:
            raise ConnectionError(
                f"{endpoint} answered without a run id; expected a KFP API that creates "
                "the run (is it the KFP API, not its UI or a proxy's page?)"
            )
        return result
    finally:
        if owned:
            _close(client)


HEALTH_ROUTE = "/apis/v2beta1/healthz"
PROBE_TIMEOUT_S = 10.0


def probe_endpoint(host: str, token: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One request to the KFP API's health route before the client is built.

    ``kfp.Client`` retries its health check five times, 5 s apart, logging a traceback each
    time; this probe fails at once, in one line, on what cannot be a KFP API: a host that does
    not resolve or accept connections, a route that does not exist (404), a token refused.
    An answer asking for credentials without a token is left to the client, which may hold
    its own (service account, kubeconfig, IAP).

    Raises:
        ConnectionError: Naming the endpoint and what it answered.
    """
    import urllib.error
    import urllib.request

    from multivae.integrations.endpoints import unreachable

    request = urllib.request.Request(host.rstrip("/") + HEALTH_ROUTE)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code == 404 or (token and error.code in (401, 403)):
            hint = (
                "the token was refused (--token or KFP_TOKEN)"
                if error.code != 404
                else f"no {HEALTH_ROUTE} route there; expected the KFP API endpoint"
            )
            raise ConnectionError(
                f"the KFP API at {host} answered HTTP {error.code} {error.reason}: {hint}"
            ) from None
    except urllib.error.URLError as error:
        raise ConnectionError(
            f"could not reach the KFP API at {host}: {unreachable(error)}; expected a KFP "
            "endpoint (--host or KFP_HOST, e.g. http://localhost:8080 behind `kubectl "
            "port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)"
        ) from None
    except (TimeoutError, OSError) as error:
        raise ConnectionError(
            f"could not reach the KFP API at {host}: no answer within {timeout:g} s "
            f"({type(error).__name__})"
        ) from None


@contextmanager
def _quiet_health_checks() -> Iterator[None]:
    """Hold back the traceback ``kfp.Client`` logs for each failed health check attempt."""
    import logging

    def drop(record: logging.LogRecord) -> bool:
        return "healthz" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@contextmanager
def _endpoint_errors(host: str) -> Iterator[None]:
    """Turn the KFP client's network and HTTP failures into one line naming the endpoint."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except TimeoutError:
        raise ConnectionError(
            f"the KFP API at {host} failed its health check 5 times; check the "
            "credentials (--token or KFP_TOKEN, a service account, kubeconfig) and the endpoint"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        # What the probe did not catch (the connection lost since): the transport's own cause.
        cause = getattr(error, "reason", None) or error
        raise ConnectionError(
            f"could not reach the KFP API at {host}: {type(cause).__name__}: {cause}"
        ) from None
    except kfp_server_api.ApiException as error:
        hint = {
            401: "; the endpoint wants credentials: --token or KFP_TOKEN",
            403: "; the credentials may not create runs in this namespace",
            404: "; is this the KFP API (its /apis/v2beta1 routes)?",
        }.get(error.status, "")
        body = " ".join(str(error.body or "").split())[:200]
        raise ConnectionError(
            f"the KFP API at {host} answered HTTP {error.status} {error.reason}"
            + (f" ({body})" if body else "")
            + hint
        ) from None


def _close(client: Any) -> None:
    """Close the HTTP connections of a ``kfp.Client`` (it has no ``close`` of its own)."""
    api_client = getattr(getattr(client, "_run_api", None), "api_client", None)
    pool = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
    if pool is not None:
        pool.clear()
    if api_client is not None:
        api_client.close()
