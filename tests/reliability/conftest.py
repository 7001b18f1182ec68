"""What the reliability tests share: a small dataset, a model trained on it, its classifiers and
a fitted sampler (made once per test process, read-only for the cases), and local endpoints
standing in for services that cannot be reached."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kit.cli import run_config

from multivae.cli import main


class _Status(BaseHTTPRequestHandler):
    """Answers every request under ``/sNNN/`` with HTTP status NNN and an empty JSON body."""

    def _answer(self):
        status = int(self.path.split("/")[1][1:])
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def endpoints():
    """A server answering any HTTP status asked, and a local port where nothing listens."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    yield {"http": f"http://127.0.0.1:{server.server_port}", "closed": f"127.0.0.1:{closed}"}
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def shared(tmp_path_factory, endpoints):
    """A small dataset and a model trained on it, made once (read-only for the cases)."""
    root = tmp_path_factory.mktemp("shared")
    data = root / "views"
    assert (
        main(
            [
                "prepare-data",
                "gaussian-views",
                "--out",
                str(data),
                "--missing-rate",
                "0.3",
                "--param",
                "n_train=64",
                "--param",
                "n_val=16",
                "--param",
                "n_test=16",
            ]
        )
        == 0
    )
    config = run_config(root / "run", data)
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train-classifiers", str(data), "--epochs", "1"]) == 0
    sampler = root / "sampler"
    fit = ["--sampler", "gmm", "--fit-data", str(data), "--save-sampler", str(sampler)]
    synthetic = ["sample", "--model", str(root / "run" / "model"), "--n", "8"]
    assert main([*synthetic, "--out", str(root / "synthetic"), *fit]) == 0
    return {
        "data": data,
        "classifiers": root / "views-classifiers",
        "endpoints": endpoints,
        "model": root / "run" / "model",
        "run": root / "run",
        "sampler": sampler,
        "synthetic": root / "synthetic",
    }
