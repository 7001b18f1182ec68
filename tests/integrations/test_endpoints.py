"""The probes of the services a run talks to: what they let through and what they refuse."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from multivae.config import ConfigError
from multivae.integrations.endpoints import (
    RAY_CLIENT_PORT,
    RAY_GCS_PORT,
    check_ray_address,
    check_tracking_uri,
    probe_tcp,
    ray_endpoint,
)
from pipelines.local import StepLog

SECRET = "s3cret"
USERINFO = "alice:" + SECRET + "@"  # assembled: no file holds a URI with credentials


class _Answer(BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self):
        self.paths.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Answer.paths = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_port
    httpd.shutdown()
    httpd.server_close()


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("status", [200, 401, 403, 500])
def test_a_tracking_server_that_answers_anything_passes(server, status, monkeypatch):
    monkeypatch.setattr(_Answer, "status", status)
    # Any answer means a server is there; its client sends the credentials, the probe does not.
    check_tracking_uri(f"http://{USERINFO}127.0.0.1:{server}/prefix/", "mlflow.tracking_uri")
    assert _Answer.paths == ["/prefix/health"]


def test_a_tracking_server_that_does_not_answer_is_refused_with_the_setting_named():
    uri = f"http://{USERINFO}127.0.0.1:{closed_port()}"
    with pytest.raises(ConfigError) as error:
        check_tracking_uri(uri, "mlflow.tracking_uri", timeout=2)
    message = str(error.value)
    assert message.startswith("mlflow.tracking_uri: could not reach the MLflow tracking server")
    assert "nothing listens there" in message and "alice:***@" in message
    assert SECRET not in message


def test_other_tracking_schemes_are_left_to_mlflow(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/none/mlflow.db", "x")
    check_tracking_uri("databricks", "x")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("address", "endpoint"),
    [
        ("auto", None),
        ("local", None),
        ("", None),
        ("10.0.0.5:6380", ("10.0.0.5", 6380)),
        ("head", ("head", RAY_GCS_PORT)),
        ("ray://head", ("head", RAY_CLIENT_PORT)),
        ("ray://head:10002", ("head", 10002)),
    ],
)
def test_ray_addresses_are_read_as_ray_reads_them(address, endpoint):
    assert ray_endpoint(address) == endpoint


def test_a_ray_address_is_probed_and_refused_where_nothing_listens(monkeypatch):
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert probe_tcp("127.0.0.1", port) is None
        check_ray_address(f"127.0.0.1:{port}", "ray.address")
    port = closed_port()
    with pytest.raises(ConfigError, match=r"^ray\.address: could not reach a Ray cluster at "):
        check_ray_address(f"127.0.0.1:{port}", "ray.address")
    # Without an address of its own, RAY_ADDRESS is probed and named.
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"^RAY_ADDRESS: .*nothing listens there"):
        check_ray_address(None, "ray.address")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    check_ray_address(None, "ray.address")


def test_the_step_log_names_the_last_error_of_a_failed_step(capsys):
    import sys

    log = StepLog(sys.stdout)
    log.write('    Traceback (most recent call last):\n      File "x.py", line 1\n')
    log.write("    ValueError: first\n\n    During handling of the above exception...\n")
    log.write("    \x1b[91mmultivae.config.ConfigError: training: unknown key 'epoch'\x1b[0m\n")
    log.write("12:00:00 - ERROR - Task 'train' finished with status FAILURE\n")
    assert log.last_error() == "ConfigError: training: unknown key 'epoch'"
    assert "Task 'train'" in capsys.readouterr().out  # shown as it came
    assert StepLog(sys.stdout).last_error() is None
