"""The test kit's own rules: built once per run, rebuilt after a crash, shared by the workers."""

import os
import subprocess
import sys
from pathlib import Path

from kit.shared import build_once, run_folder
from kit.speed import workload_seconds

TESTS = Path(__file__).parent


def test_a_thing_is_built_once_and_then_read(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        folder.mkdir()
        (folder / "value").write_text("1")

    first = build_once(tmp_path / "thing", build)
    second = build_once(tmp_path / "thing", build)
    assert first == second == tmp_path / "thing"
    assert calls == [tmp_path / "thing"]
    assert (first / "value").read_text() == "1"


def test_a_build_that_died_halfway_is_built_again(tmp_path):
    half = tmp_path / "thing"
    half.mkdir()
    (half / "partial").write_text("crashed here")  # no .done marker beside it

    def build(folder):
        assert not folder.exists()
        folder.mkdir()
        (folder / "value").write_text("whole")

    build_once(half, build)
    assert sorted(p.name for p in half.iterdir()) == ["value"]


def test_two_processes_asking_at_once_build_once(tmp_path):
    script = f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
from pathlib import Path
from kit.shared import build_once
def build(folder):
    with open({str(tmp_path / "builds")!r}, "a") as log:
        log.write("built\\n")
    time.sleep(0.5)
    folder.mkdir()
build_once(Path({str(tmp_path / "thing")!r}), build)
"""
    processes = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait(timeout=60) for p in processes] == [0, 0]
    assert (tmp_path / "builds").read_text() == "built\n"


def test_the_run_folder_is_shared_by_xdist_workers_and_not_kept_across_runs(tmp_path, monkeypatch):
    worker = tmp_path / "pytest-7" / "popen-gw1"
    worker.mkdir(parents=True)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert run_folder(worker) == tmp_path / "pytest-7" / "kit"
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    alone = tmp_path / "pytest-8"
    alone.mkdir()
    assert run_folder(alone) == alone / "kit"


def test_the_speed_workload_takes_measurable_time():
    seconds = workload_seconds(steps=20)
    assert 0 < seconds < 60
    assert os.environ["OMP_NUM_THREADS"] == "1"  # the session's one-thread rule reaches children
