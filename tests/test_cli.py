import json
import subprocess
import sys
from pathlib import Path

from multivae.cli import main


def test_prepare_data_then_inspect(tmp_path, capsys):
    out = tmp_path / "d"
    status = main(
        [
            "prepare-data",
            "poly-digits",
            "--out",
            str(out),
            "--missing-rate",
            "0.5",
            "--seed",
            "0",
            "--param",
            "n_train=400",
            "--param",
            "n_val=100",
            "--param",
            "n_test=100",
        ]
    )
    assert status == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json", "--validate"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in summary["modalities"]] == ["m0", "m1", "m2", "m3", "m4"]
    assert all(m["shape"] == [3, 28, 28] for m in summary["modalities"])
    train = summary["splits"]["train"]
    assert train["rows"] == 400
    assert train["presence"]["m0"] == 1.0
    assert 0.35 < train["presence"]["m3"] < 0.65
    assert train["label_counts"] == [40] * 10
    assert train["validated"] is True
    assert summary["splits"]["test"]["presence"]["m4"] == 1.0

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "m4           shape (3, 28, 28)" in text
    assert "train       400" in text
    assert "balance 1.00" in text
    assert "polymnist: always_present=m0, rate=0.5" in text


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("multivae inspect: error: ")
    assert "missing" in error
    assert main(["prepare-data", "digits", "--out", str(tmp_path / "x")]) == 2
    assert "unknown built-in dataset 'digits'" in capsys.readouterr().err


def test_console_script_help_lists_datasets():
    script = Path(sys.executable).parent / "multivae"
    result = subprocess.run(
        [str(script), "prepare-data", "--help"], capture_output=True, text=True, check=True
    )
    for name in ("poly-digits", "digits-label", "gaussian-views", "--missing-rate", "n_train"):
        assert name in result.stdout
