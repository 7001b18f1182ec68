"""Finding the pinned KubeRay CRDs: the offline folder, the cache and the download, all checked."""

import functools
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from multivae.integrations import kuberay_crds
from multivae.integrations.kuberay_crds import CRD_FILES, CRD_FOLDER_ENV, crd_path, crd_schema


@pytest.fixture(scope="session")
def crd_folder():
    """The folder the test session uses (CI sets the override; elsewhere the cache)."""
    return crd_path("RayJob").parent


@pytest.fixture
def isolated(crd_folder, monkeypatch, tmp_path):
    """No override, and an empty cache of its own (after ``crd_folder`` found the real files)."""
    monkeypatch.delenv(CRD_FOLDER_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def server(crd_folder):
    """A real HTTP server on localhost serving the CRD files, standing in for GitHub."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(crd_folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_pinned_files_have_the_pinned_digests(crd_folder):
    for kind, (file, digest) in CRD_FILES.items():
        assert hashlib.sha256((crd_folder / file).read_bytes()).hexdigest() == digest, kind
    schema = crd_schema("RayCluster")
    assert "spec" in schema["properties"]


def test_the_download_fills_the_cache_once(isolated, server, monkeypatch):
    requests = []
    original = kuberay_crds._download

    def counted(url, target, expected):
        requests.append(url)
        return original(url, target, expected)

    monkeypatch.setattr(kuberay_crds, "_download", counted)
    monkeypatch.setattr(kuberay_crds, "CRD_URL", server + "/{file}?v={version}")
    path = crd_path("RayJob")
    assert (
        path == isolated / "cache" / "multivae" / "kuberay-crds" / "v1.7.0" / CRD_FILES["RayJob"][0]
    )
    assert requests == [f"{server}/ray.io_rayjobs.yaml?v=1.7.0"]
    assert crd_path("RayJob") == path  # from the cache: no second request
    assert len(requests) == 1
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_a_corrupted_cache_entry_is_downloaded_again(isolated, server, monkeypatch):
    monkeypatch.setattr(kuberay_crds, "CRD_URL", server + "/{file}")
    path = crd_path("RayCluster")
    path.write_text("truncated")
    assert crd_path("RayCluster") == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CRD_FILES["RayCluster"][1]


def test_a_download_of_other_content_is_refused_and_not_cached(isolated, server, monkeypatch):
    # The RayCluster file served where the RayJob file is expected: the digest does not match.
    monkeypatch.setattr(kuberay_crds, "CRD_URL", server + "/ray.io_rayclusters.yaml#{file}")
    with pytest.raises(ValueError, match=r"SHA-256 \w+, expected 01a5cf3b\w+; nothing was cached"):
        crd_path("RayJob")
    assert not (kuberay_crds.cache_folder() / "ray.io_rayjobs.yaml").exists()


def test_no_network_names_the_offline_override(isolated, monkeypatch):
    # A closed port on localhost: the connection is refused at once.
    monkeypatch.setattr(kuberay_crds, "CRD_URL", "http://127.0.0.1:9/{file}")
    with pytest.raises(ConnectionError, match=f"set {CRD_FOLDER_ENV} to a folder holding"):
        crd_path("RayJob")


def test_the_override_folder_is_checked(isolated, crd_folder, monkeypatch, tmp_path):
    folder = tmp_path / "offline"
    folder.mkdir()
    monkeypatch.setenv(CRD_FOLDER_ENV, str(folder))
    with pytest.raises(FileNotFoundError, match=r"no ray\.io_rayjobs\.yaml there"):
        crd_path("RayJob")
    edited = (crd_folder / "ray.io_rayjobs.yaml").read_text() + "\n# edited\n"
    (folder / "ray.io_rayjobs.yaml").write_text(edited)
    with pytest.raises(ValueError, match=r"offline/ray\.io_rayjobs\.yaml \(from MULTIVAE_KUBERAY"):
        crd_path("RayJob")
    (folder / "ray.io_rayjobs.yaml").write_bytes((crd_folder / "ray.io_rayjobs.yaml").read_bytes())
    assert crd_path("RayJob") == folder / "ray.io_rayjobs.yaml"
    assert not Path(os.environ["XDG_CACHE_HOME"]).exists()  # the override never touches the cache


def test_unknown_kinds_and_versions_are_refused():
    with pytest.raises(ValueError, match="unknown KubeRay kind 'RayService'"):
        crd_path("RayService")
    with pytest.raises(ValueError, match="no API version 'v2'"):
        crd_schema("RayJob", version="v2")
