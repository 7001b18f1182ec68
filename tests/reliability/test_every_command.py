"""The battery generated from the commands themselves: every rule on every path of every command.

The subcommands of both programs (``multivae`` and ``python -m pipelines``) and the paths each
takes (options, positional arguments, and the paths of a config file that ``--set`` overrides)
are read from their parsers (:func:`multivae.cli.paths.path_roles`): a path option added with
its role is covered here without a hand-written case. Every output is tried with the rules of
the one output claim (:func:`multivae.io.claim_output`): an empty path, a place inside a dataset,
a file where a folder is expected (or the other way round), a folder of the user's files,
another command's output, a place inside another command's output, and the current directory
full of files. Every input is tried with an empty path, nothing there, a file for a folder (or
the other way round), a folder of the user's files, and another command's output. Each must be
refused: exit status 2, one line naming the option or the path and why, no traceback, nothing
that was there changed, no staging folder left.

A command needs one valid invocation in :data:`BASES` (the test below fails for a command
without one); the paths it declares are then substituted one at a time.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kit.cli import SECRET, run_config, snapshot

from multivae.cli import build_parser as multivae_parser
from multivae.cli import main as multivae_main
from multivae.cli.paths import DeclaredPath, leaf_parsers, path_roles
from pipelines.cli import build_parser as pipelines_parser
from pipelines.cli import main as pipelines_main

PROGRAMS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[list[str]], int]]] = {
    "multivae": (multivae_parser, multivae_main),
    "python -m pipelines": (pipelines_parser, pipelines_main),
}

Paths = Mapping[str, str]
Base = Callable[[dict[str, str], Paths], list[str]]


def _given(paths: Paths, dest: str, default: str) -> str:
    return paths.get(dest, default)


def _sample(c: dict[str, str], p: Paths) -> list[str]:
    argv = ["sample", "--model", _given(p, "model", c["model"]), "--n", "4"]
    argv += ["--out", _given(p, "out", c["new"])]
    if "fit_data" in p:
        argv += ["--sampler", "gmm", "--fit-data", p["fit_data"]]
    if "sampler_dir" in p:
        argv += ["--sampler-dir", p["sampler_dir"]]
    if "save_sampler" in p:
        argv += ["--sampler", "gmm", "--fit-data", c["data"], "--save-sampler", p["save_sampler"]]
    return argv


def _with_sweep(argv: list[str], p: Paths) -> list[str]:
    return [*argv, "--sweep", p["sweep"]] if "sweep" in p else argv


BASES: dict[tuple[str, tuple[str, ...]], Base] = {
    ("multivae", ("prepare-data",)): lambda c, p: [
        "prepare-data", "gaussian-views", "--out", _given(p, "out", c["new"]),
        "--param", "n_train=8", "--param", "n_val=4", "--param", "n_test=4",
    ],
    ("multivae", ("convert", "polymnist")): lambda c, p: [
        "convert", "polymnist", _given(p, "source_path", c["release"]),
        "--out", _given(p, "out", c["new"]),
    ],
    ("multivae", ("convert", "mnist-svhn")): lambda c, p: [
        "convert", "mnist-svhn", "--mnist", _given(p, "mnist", c["mnist"]),
        "--svhn", _given(p, "svhn", c["release"]), "--out", _given(p, "out", c["new"]),
    ],
    ("multivae", ("inspect",)): lambda c, p: ["inspect", _given(p, "path", c["data"])],
    ("multivae", ("list-models",)): lambda c, p: ["list-models"],
    ("multivae", ("train",)): lambda c, p: ["train", "--config", _given(p, "config", c["config"])],
    ("multivae", ("tune",)): lambda c, p: ["tune", "--sweep", _given(p, "sweep", c["sweep"])],
    ("multivae", ("train-classifiers",)): lambda c, p: [
        "train-classifiers", _given(p, "data", c["data"]), "--epochs", "1",
        "--out", _given(p, "out", c["new"]),
    ],
    ("multivae", ("evaluate",)): lambda c, p: [
        "evaluate", "--model", _given(p, "model", c["model"]),
        "--data", _given(p, "data", c["data"]), "--out", _given(p, "out", c["new"]),
    ],
    ("multivae", ("sample",)): _sample,
    ("multivae", ("impute",)): lambda c, p: [
        "impute", "--model", _given(p, "model", c["model"]),
        "--data", _given(p, "data", c["data"]), "--out", _given(p, "out", c["new"]),
    ],
    ("python -m pipelines", ("compile",)): lambda c, p: [
        "compile", "--out", _given(p, "out", c["new"] + ".yaml"),
    ],
    ("python -m pipelines", ("submit",)): lambda c, p: _with_sweep(
        ["submit", "--host", f"http://{c['closed']}", "--token", SECRET], p
    ),
    ("python -m pipelines", ("run-local",)): lambda c, p: _with_sweep(
        ["run-local", "--out", _given(p, "out", c["new"])], p
    ),
}  # fmt: skip
"""One valid invocation of every command; a path given in ``p`` (by its dest) replaces the
default, and an optional path option appears (with what it needs) only when given."""


@dataclass(frozen=True)
class Rule:
    """One rule tried on a path: what to give, and what the refusal must say."""

    name: str
    direction: str  # "output" or "input"
    make: Callable[[Path, dict[str, Path], DeclaredPath], str]
    says: Callable[[DeclaredPath, str], tuple[str, ...]]
    applies: Callable[[DeclaredPath], bool] = lambda path: True


def _user_files(work: Path) -> Path:
    folder = work / "mine"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("keep")
    return folder


def _user_file(work: Path) -> Path:
    (work / "notes.txt").write_text("just text")
    return work / "notes.txt"


def _copy(shared: dict[str, Path], work: Path, what: str) -> Path:
    target = work / f"copy-{what}"
    if not target.exists():
        shutil.copytree(shared[what], target)
    return target


def _other_output(shared: dict[str, Path], work: Path, path: DeclaredPath) -> Path:
    """A copy of another command's output than ``path``'s own kind."""
    return _copy(shared, work, "run" if path.role.kind == "classifiers" else "classifiers")


def _name(path: DeclaredPath) -> str:
    """How a refusal names the path: its flag or metavar, or its config key's last part."""
    return path.option.rsplit(".", 1)[-1]


def _inside_dataset(work, shared, path):
    inside = _copy(shared, work, "data") / "train" / "new"
    return str(inside.with_suffix(".yaml") if path.role.file else inside)


def _file_for_folder(work, shared, path):
    if path.role.file:
        (work / "folder").mkdir()
        return str(work / "folder")
    return str(_user_file(work))


def _user_folder(work, shared, path):
    return str(_user_file(work) if path.role.file else _user_files(work))


def _inside_other_output(work, shared, path):
    return str(_other_output(shared, work, path) / ("sub.yaml" if path.role.file else "sub"))


OUTPUT_RULES = [
    Rule("an empty path", "output", lambda w, s, p: "", lambda p, v: (_name(p), "empty text")),
    Rule("inside a dataset", "output", _inside_dataset, lambda p, v: ("inside the dataset", v)),
    Rule("a file for a folder, or a folder for a file", "output", _file_for_folder,
         lambda p, v: (("is a folder",) if p.role.file else ("is a file",)) + (v,)),
    Rule("the user's files", "output", _user_folder, lambda p, v: ("did not write", v)),
    Rule("another command's output", "output",
         lambda w, s, p: str(_other_output(s, w, p)),
         lambda p, v: (("is a folder",) if p.role.file else ("written by", "not a")) + (v,)),
    Rule("inside another command's output", "output", _inside_other_output,
         lambda p, v: ("inside the", "written by", v)),
    Rule("the current directory, full of files", "output", lambda w, s, p: ".",
         lambda p, v: ("is the current directory", _name(p))),
]  # fmt: skip


def _edit_json(path: Path, how: str) -> None:
    """Give ``path``'s first key twice (``twice``), or add an unknown key (``unknown``)."""
    text = path.read_text()
    if how == "twice":
        key = text[text.index('"') : text.index('"', text.index('"') + 1) + 1]
        path.write_text(text.replace(f"{key}:", f"{key}: null, {key}:", 1))
    else:
        path.write_text(text.replace("{", '{"bogus_key": 1, ', 1))


def _edit_dataset(folder: Path, how: str) -> None:
    import pyarrow.parquet as pq

    from multivae.data.schema import METADATA_KEY

    for part in sorted(folder.glob("*/*.parquet")):
        table = pq.read_table(part)
        text = table.schema.metadata[METADATA_KEY].decode()
        if how == "twice":
            text = text.replace('"name":', '"name": "twice", "name":', 1)
        else:
            text = text.replace("{", '{"bogus_key": 1, ', 1)
        pq.write_table(table.replace_schema_metadata({METADATA_KEY: text.encode()}), part)


READ_FILES = {"run config", "sweep file", "model", "dataset", "sampler"}
"""The inputs read from a file of keys: each is tried with a key given twice and an unknown one."""


def _miswritten(how: str) -> Callable[[Path, dict[str, Path], DeclaredPath], str]:
    def make(work: Path, shared: dict[str, Path], path: DeclaredPath) -> str:
        kind = path.role.kind
        if path.role.file:  # the run config and the sweep file that context() wrote
            source = work / ("run-new.yaml" if kind == "run config" else "sweep.yaml")
            target = work / f"{how}-{source.name}"
            first = source.read_text().splitlines()[0].split(":")[0]
            extra = f"{first}: twice" if how == "twice" else "bogus_key: 1"
            target.write_text(f"{source.read_text()}{extra}\n")
            return str(target)
        key = {"model": "model", "dataset": "data", "sampler": "sampler"}[kind]
        target = work / f"{how}-{key}"
        shutil.copytree(shared[key], target)
        if kind == "dataset":
            _edit_dataset(target, how)
        else:
            _edit_json(target / ("config.json" if kind == "model" else "sampler.json"), how)
        return str(target)

    return make


INPUT_RULES = [
    Rule("an empty path", "input", lambda w, s, p: "", lambda p, v: (_name(p), "empty text")),
    Rule("nothing there", "input", lambda w, s, p: str(w / "absent"), lambda p, v: (v,)),
    # A release may be a zip file or a folder: no file is wrong for it as such.
    Rule("a file for a folder, or a folder for a file", "input", _file_for_folder,
         lambda p, v: (v,), applies=lambda p: p.role.kind != "release"),
    Rule("the user's files", "input", _user_folder, lambda p, v: (v,)),
    Rule("another command's output", "input", lambda w, s, p: str(_other_output(s, w, p)),
         lambda p, v: (v,), applies=lambda p: not p.role.file),
    Rule("a key given twice", "input", _miswritten("twice"), lambda p, v: (v, "given"),
         applies=lambda p: p.role.kind in READ_FILES),
    Rule("an unknown key", "input", _miswritten("unknown"),
         lambda p, v: (v, "unknown key 'bogus_key'"),
         applies=lambda p: p.role.kind in READ_FILES),
]  # fmt: skip


def declared_paths() -> list[tuple[str, DeclaredPath]]:
    """Every path of every command of both programs, from their parsers."""
    return [
        (program, path)
        for program, (parser, _) in PROGRAMS.items()
        for path in path_roles(parser())
    ]


def generated_cases() -> list[tuple[str, DeclaredPath, Rule]]:
    cases = []
    for program, path in declared_paths():
        rules = OUTPUT_RULES if path.role.direction == "output" else INPUT_RULES
        cases += [(program, path, rule) for rule in rules if rule.applies(path)]
    return cases


CASES = generated_cases()


def case_id(case: tuple[str, DeclaredPath, Rule]) -> str:
    program, path, rule = case
    prefix = "pipelines " if program != "multivae" else ""
    return f"{prefix}{' '.join(path.command)} {path.option}: {rule.name}"


def context(work: Path, shared: dict[str, Path]) -> dict[str, str]:
    """The paths the base invocations use: the shared material, and new places in ``work``."""
    config = run_config(work / "run-new", shared["data"])
    sweep = {
        "run": {
            "model": "mvae",
            "data": str(shared["data"]),
            "training": {"epochs": 1, "progress_bar": False},
            "mlflow": {"enabled": False},
            "output_dir": "unused",
        },
        "output_dir": str(work / "sweep-new"),
        "space": {"model_config.latent_dim": {"choice": [2]}},
    }
    (work / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    # MNIST's files, present (their content is read after the SVHN files are found).
    mnist = work / "mnist" / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        for stem in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            (mnist / f"{prefix}-{stem}").write_bytes(b"")
    return {
        "mnist": str(work / "mnist"),
        "data": str(shared["data"]),
        "model": str(shared["model"]),
        "config": str(config),
        "sweep": str(work / "sweep.yaml"),
        "new": str(work / "new"),
        "release": str(work / "release-absent"),
        "closed": shared["endpoints"]["closed"],
    }


def invocation(program: str, path: DeclaredPath, value: str, ctx: dict[str, str]) -> list[str]:
    base = BASES[(program, path.command)]
    if path.in_config:
        return [*base(ctx, {}), "--set", f"{path.dest}={value}"]
    return base(ctx, {path.dest: value})


def test_every_command_has_a_base_invocation_that_takes_each_of_its_paths():
    commands = {
        (program, command)
        for program, (parser, _) in PROGRAMS.items()
        for command, _ in leaf_parsers(parser())
    }
    assert set(BASES) == commands, (
        f"tests/reliability/test_every_command.py: BASES lacks {sorted(commands - set(BASES))} "
        f"(add one valid invocation per new command) and has extra {sorted(set(BASES) - commands)}"
    )
    keys = ("data", "model", "config", "sweep", "new", "release", "mnist")
    ctx = {key: f"<{key}>" for key in keys}
    ctx["closed"] = "127.0.0.1:1"
    for program, path in declared_paths():
        argv = invocation(program, path, "<GIVEN>", ctx)
        assert argv.count("<GIVEN>") + argv.count(f"{path.dest}=<GIVEN>") == 1, (program, path)
        # The parser takes it: a base that a parser refuses would refuse every rule for nothing.
        PROGRAMS[program][0]().parse_args(argv)


def test_every_path_option_declares_its_role():
    """An option that looks like a path (``--out``, a DIR/FILE metavar) has a declared role."""
    for program, (parser, _) in PROGRAMS.items():
        for command, leaf in leaf_parsers(parser()):
            for action in leaf._actions:
                looks = (action.metavar in ("DIR", "FILE", "ZIP_OR_DIR")) or any(
                    flag in ("--out", "--data", "--config", "--sweep") or flag.endswith("-dir")
                    for flag in action.option_strings
                )
                assert not looks or hasattr(action, "path_role"), (program, command, action.dest)


def test_the_battery_covers_every_command_that_takes_a_path():
    covered = {(program, path.command) for program, path, _ in CASES}
    takes_paths = {(program, command) for program, command in BASES if command != ("list-models",)}
    assert covered == takes_paths
    outputs = {(program, path.command, path.option) for program, path, rule in CASES
               if rule.direction == "output"}  # fmt: skip
    # Every command that writes: the dataset writers, the run and the sweep, the judges, the
    # evaluation, the sampler, the pipeline's runs and its compiled file.
    assert len(outputs) == 12, sorted(outputs)


@pytest.mark.parametrize("case", CASES, ids=[case_id(case) for case in CASES])
def test_rule(case, shared, tmp_path, capsys, monkeypatch):
    program, path, rule = case
    monkeypatch.setenv("MULTIVAE_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    ctx = context(work, shared)
    value = rule.make(work, shared, path)
    if value == ".":
        monkeypatch.chdir(work)
    argv = invocation(program, path, value, ctx)
    capsys.readouterr()
    before, shared_before = snapshot(work), snapshot(shared["data"].parent)
    status = PROGRAMS[program][1](argv)
    err = capsys.readouterr().err
    assert snapshot(shared["data"].parent) == shared_before
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{program} {argv[0]}"), err
    assert "Traceback" not in err and SECRET not in err
    for fragment in rule.says(path, value):
        assert fragment in err, f"expected {fragment!r} in: {err}"
    assert snapshot(work) == before  # nothing that was there changed, nothing half-written
    assert not [p for p in work.rglob(".*tmp-*")], "a staging folder was left behind"


def test_the_generated_battery_counts_are_reported():
    commands = {(program, path.command) for program, path, _ in CASES}
    outputs = sum(path.role.direction == "output" for _, path in declared_paths())
    inputs = sum(path.role.direction == "input" for _, path in declared_paths())
    results = (Path(__file__).resolve().parents[2] / "benchmarks" / "RESULTS.md").read_text()
    reported = (
        f"{len(CASES)} generated cases over {len(commands)} commands ({outputs} outputs, "
        f"{inputs} inputs): {len(CASES)} refused with a clear one-line error, 0 wrongly "
        "accepted, 0 tracebacks"
    )
    assert reported in results.replace("\n", " "), (
        f"benchmarks/RESULTS.md must report the generated battery's counts: {reported}"
    )
