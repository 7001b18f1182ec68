"""Credentials out of everything the project records or prints.

A URI may carry credentials in its user-info part (``http://user:password@host``, or a token as
``https://TOKEN@host``). :func:`redact` replaces the password (or a lone token) with ``***``
wherever such a URI appears in a text; :func:`redact_values` does it for every string of a
nested config. Run configs written to disk (``run.yaml``), MLflow params, the MLflow run file
and the command-line errors go through them. Pass credentials to MLflow by its own environment
variables (``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``)
rather than inside the URI: a redacted URI in ``run.yaml`` no longer carries them.
"""

from __future__ import annotations

import re
from typing import Any

HIDDEN = "***"
"""What stands in for a password or token."""

# ``scheme://`` or, once a URI went through a path normalisation, ``scheme:/``.
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*:/{1,2})"
    r"(?P<user>[^/\s:@?#]*)(?::(?P<password>[^/\s@?#]*))?@"
)


def _hide(match: re.Match[str]) -> str:
    if match.group("password") is not None:
        return f"{match['scheme']}{match['user']}:{HIDDEN}@"
    return f"{match['scheme']}{HIDDEN}@"


def redact(text: str) -> str:
    """``text`` with the password (or lone token) of every URI in it replaced by ``***``.

    >>> redact("http://alice:<password>@mlflow:5000 and https://<token>@host/x")
    'http://alice:***@mlflow:5000 and https://***@host/x'
    """
    return _USERINFO.sub(_hide, text)


def redact_values(value: Any) -> Any:
    """A copy of a nested structure (mappings, lists) with every string :func:`redact`-ed."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_values(item) for item in value)
    return value
