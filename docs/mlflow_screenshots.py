"""Screenshots of MLflow's UI on a tracking store, as a user opening it sees them.

Starts ``mlflow ui`` on a store (by default the one the README's main command writes,
``python -m pipelines run-local``: ``runs/pipeline/mlflow.db``) on a free local port, waits
until it answers, checks through its REST API what its pages will show (the experiment's kind,
each run's dataset inputs, source and logged models, the registered model's aliases), takes
headless Chromium screenshots of the home page, the experiment's runs page (as it opens, and
with every nested run a row) and the registered model's page, writes them as PNG files
(``docs/screenshots/`` by default), prints the checks as JSON, and stops the server::

    python docs/mlflow_screenshots.py --store runs/pipeline/mlflow.db

MLflow 3's UI opens in its GenAI mode unless told otherwise (a switch in its sidebar,
remembered by the browser, or ``?workflowType=machine_learning`` in the page address): the
pages are opened in its machine-learning mode. Chromium comes from the distribution's packages
(``apt-get install -y chromium``); ``--chromium`` names another binary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_STORE = ROOT / "runs" / "pipeline" / "mlflow.db"
ML_MODE = "workflowType=machine_learning"
"""The query that opens MLflow 3's UI in its machine-learning (not GenAI) mode."""


def store_uri(store: str) -> str:
    """A tracking URI from a URI or the path of a SQLite file."""
    if "://" in store:
        return store
    path = Path(store).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no MLflow store there (run the pipeline first)")
    return f"sqlite:///{path}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_ui(uri: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``mlflow ui`` on ``uri`` at ``127.0.0.1:port``, in its own process group."""
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [
        str(mlflow if mlflow.exists() else "mlflow"),
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # The store is the one given, whatever the environment says.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "wb") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the server and its workers."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def wait_until_up(url: str, server: subprocess.Popen[bytes], seconds: float = 180) -> None:
    """Wait until ``url/health`` answers 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow ui at {url} did not answer within {seconds:.0f} s")


def call(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One REST call of MLflow's API (GET with a query, or POST with a JSON body)."""
    if body is None:
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}")
    else:
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def _tags(entity: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag.get("value", "") for tag in entity.get("tags", [])}


def what_the_ui_shows(url: str, experiment_name: str) -> dict[str, Any]:
    """The experiment, its runs' Dataset/Source/Models columns and the registry, by REST."""
    name = urllib.parse.quote(experiment_name)
    experiment = call(url, f"experiments/get-by-name?experiment_name={name}")["experiment"]
    runs = call(
        url,
        "runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
    ).get("runs", [])
    rows = []
    for found in runs:
        # A search leaves the runs' model inputs out; one run's own page has them.
        run = call(url, f"runs/get?run_id={found['info']['run_id']}")["run"]
        tags = _tags(run["data"])
        inputs = run.get("inputs", {})
        rows.append(
            {
                "run_id": run["info"]["run_id"],
                "name": run["info"].get("run_name"),
                "parent": tags.get("mlflow.parentRunId"),
                "source": [tags.get("mlflow.source.type"), tags.get("mlflow.source.name")],
                "datasets": [
                    {
                        "name": entry["dataset"]["name"],
                        "digest": entry["dataset"]["digest"],
                        "source": json.loads(entry["dataset"]["source"]),
                        "context": _tags(entry).get("mlflow.data.context"),
                        "columns": len(
                            json.loads(entry["dataset"].get("schema") or "{}").get(
                                "mlflow_colspec", []
                            )
                        ),
                    }
                    for entry in inputs.get("dataset_inputs", [])
                ],
                "models": sorted(
                    {m["model_id"] for m in inputs.get("model_inputs", [])}
                    | {m["model_id"] for m in run.get("outputs", {}).get("model_outputs", [])}
                ),
                "system_metrics": sum(
                    m["key"].startswith("system/") for m in run["data"].get("metrics", [])
                ),
            }
        )
    models = call(url, "registered-models/search?max_results=100").get("registered_models", [])
    return {
        "experiment": {
            "id": experiment["experiment_id"],
            "name": experiment["name"],
            "kind": _tags(experiment).get("mlflow.experimentKind"),
        },
        "runs": rows,
        "registered_models": [
            {
                "name": model["name"],
                "aliases": {a["alias"]: a["version"] for a in model.get("aliases", [])},
            }
            for model in models
        ],
    }


def find_chromium(name: str | None) -> str:
    """The Chromium binary to run."""
    for candidate in [name] if name else ["chromium", "chromium-browser", "google-chrome"]:
        found = shutil.which(candidate)
        if found:
            return found
    raise FileNotFoundError(
        "no Chromium: install it with `apt-get install -y chromium`, or name it with --chromium"
    )


def screenshot(
    chromium: str, url: str, path: Path, size: tuple[int, int], wait_ms: int, profile: Path
) -> None:
    """A headless Chromium screenshot of ``url`` once its page has run ``wait_ms`` ms."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
        f"--virtual-time-budget={wait_ms}",
        f"--screenshot={path}",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"chromium failed on {url}: {done.stderr[-2000:]}")


def pages(url: str, shown: dict[str, Any]) -> dict[str, str]:
    """The pages to take: home, the experiment's runs, the first registered model.

    The runs page twice: as it opens (nested runs collapsed under their parent: one row per
    pipeline run) and with every run a row (sorted by name, which lists runs flat).
    """
    experiment = shown["experiment"]["id"]
    runs = f"{url}/#/experiments/{experiment}/runs?{ML_MODE}"
    by_name = urllib.parse.urlencode({"orderByKey": "tags.`mlflow.runName`", "orderByAsc": "true"})
    found = {
        "mlflow-home": f"{url}/#/?{ML_MODE}",
        "mlflow-runs": runs,
        "mlflow-runs-all": f"{runs}&{by_name}",
    }
    if shown["registered_models"]:
        model = urllib.parse.quote(shown["registered_models"][0]["name"])
        found["mlflow-registered-model"] = f"{url}/#/models/{model}?{ML_MODE}"
    return found


def main(argv: list[str] | None = None) -> int:
    """Take the screenshots; print where they are and what the UI shows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store",
        default=str(DEFAULT_STORE),
        help="tracking URI or SQLite file (runs/pipeline/mlflow.db)",
    )
    parser.add_argument("--experiment", default="multivae", help="experiment name (multivae)")
    parser.add_argument("--out", default=str(HERE / "screenshots"), help="folder of the PNGs")
    parser.add_argument("--chromium", help="Chromium binary (chromium)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument(
        "--wait-ms", type=int, default=20000, help="time the page runs before the shot"
    )
    args = parser.parse_args(argv)

    uri = store_uri(args.store)
    chromium = find_chromium(args.chromium)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="mlflow-ui-") as scratch:
        log = Path(scratch) / "mlflow-ui.log"
        server = start_ui(uri, port, log)
        try:
            wait_until_up(url, server)
            shown = what_the_ui_shows(url, args.experiment)
            taken = []
            for name, address in pages(url, shown).items():
                path = out / f"{name}.png"
                screenshot(
                    chromium,
                    address,
                    path,
                    (args.width, args.height),
                    args.wait_ms,
                    Path(scratch) / "profile",
                )
                taken.append({"file": path.name, "page": address.removeprefix(url)})
        except BaseException:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            stop(server)
    shown["screenshots"] = taken
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
