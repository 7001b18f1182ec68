"""The one output claim (:func:`multivae.io.claim_output`): what it accepts, on folders built by
hand. What it refuses is tried on every command by ``tests/reliability/test_every_command.py``."""

from __future__ import annotations

import pytest

from multivae.io import OUTPUT_KINDS, claim_output, write_output_marker
from multivae.names import OUTPUT_MARKER_FILE


def marked(folder, kind, command="multivae x"):
    folder.mkdir(parents=True)
    write_output_marker(folder, kind, command)
    return folder


def test_a_new_or_empty_folder_is_claimed_and_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert claim_output("new", "dataset", "multivae sample") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert claim_output("empty", "evaluation", "multivae evaluate") == tmp_path / "empty"


def test_an_empty_current_directory_may_hold_one_output_but_not_one_with_files(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert claim_output(".", "dataset", "multivae prepare-data") == tmp_path
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="is the current directory"):
        claim_output(".", "dataset", "multivae prepare-data")
    (tmp_path / "below").mkdir()
    monkeypatch.chdir(tmp_path / "below")
    with pytest.raises(FileExistsError, match="is a folder above the current directory"):
        claim_output("..", "dataset", "multivae prepare-data")


@pytest.mark.parametrize(
    ("owner", "slot", "kind", "accepted"),
    [
        ("run", "evaluation", "evaluation", True),  # evaluate's default: MODEL/../evaluation
        ("run", "evaluation", "dataset", False),
        ("run", "elsewhere", "evaluation", False),
        ("sweep", "trials/t1", "run", True),  # a sweep's trial runs
        ("sweep", "trials/t1", "classifiers", False),
        ("pipeline runs", "kfp/run/step/data", "dataset", True),  # the pipeline's own steps
        ("pipeline runs", "other", "dataset", False),
        ("dataset", "x", "classifiers", False),
    ],
)
def test_an_output_lands_inside_another_only_in_a_slot_it_admits(
    tmp_path, owner, slot, kind, accepted
):
    folder = marked(tmp_path / "owner", owner)
    target = folder / slot
    if accepted:
        assert claim_output(target, kind, "multivae y") == target
    else:
        with pytest.raises(FileExistsError, match=r"inside the|inside the dataset"):
            claim_output(target, kind, "multivae y")


@pytest.mark.parametrize(
    ("kind", "overwrite", "accepted"),
    [
        ("dataset", False, False),
        ("dataset", True, True),
        ("run", False, True),  # the run's own checks decide (resume, or a checkpoint refused)
        ("sweep", True, False),  # a sweep never replaces another
        ("pipeline runs", False, True),  # run-local adds a run
    ],
)
def test_its_own_earlier_output_follows_the_kind_rule(tmp_path, kind, overwrite, accepted):
    folder = marked(tmp_path / "out", kind)
    (folder / "content").write_text("earlier")
    if accepted:
        assert claim_output(folder, kind, "multivae x", overwrite=overwrite) == folder
    else:
        with pytest.raises(FileExistsError, match="holds an earlier"):
            claim_output(folder, kind, "multivae x", overwrite=overwrite)


def test_a_run_written_before_markers_is_recognised_by_its_files(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.yaml").write_text("model: mvae\n")
    assert claim_output(folder, "run", "multivae train") == folder
    assert not (folder / OUTPUT_MARKER_FILE).exists()  # recognised, not written to
    with pytest.raises(FileExistsError, match="did not write"):
        claim_output(folder, "dataset", "multivae sample", overwrite=True)


def test_another_kind_is_refused_whatever_the_flags(tmp_path):
    folder = marked(tmp_path / "out", "classifiers", "multivae train-classifiers")
    with pytest.raises(FileExistsError, match="holds a classifiers written by multivae train"):
        claim_output(folder, "dataset", "multivae sample", overwrite=True)


def test_a_file_output_replaces_only_a_file_its_command_wrote(tmp_path):
    from pipelines.compile import compile_pipeline

    path = tmp_path / "pipeline.yaml"
    first = compile_pipeline(path).read_text()
    assert compile_pipeline(path).read_text() == first  # its own earlier file: replaced
    (tmp_path / "mine.yaml").write_text("mine: true\n")
    with pytest.raises(FileExistsError, match="did not write"):
        compile_pipeline(tmp_path / "mine.yaml")
    assert (tmp_path / "mine.yaml").read_text() == "mine: true\n"


def test_every_kind_is_described():
    for kind in OUTPUT_KINDS.values():
        assert kind.again in ("overwrite", "resume", "add", "never"), kind
        for admitted in kind.slots.values():
            assert admitted == "*" or admitted in OUTPUT_KINDS, kind
