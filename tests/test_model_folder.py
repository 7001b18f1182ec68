"""Model folders: JSON config, safetensors weights and a card; strict, code-free loading."""

import json

import pytest
import torch
from safetensors import safe_open

import multivae
from multivae import model_folder
from multivae.config import ConfigError


@pytest.fixture
def model(tiny_mvae):
    return tiny_mvae


def test_folder_holds_json_safetensors_and_a_card_only(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    document = json.loads((folder / "config.json").read_text())
    assert document["model"] == "mvae" and document["format_version"] == 1
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert set(weights.keys()) == set(model.state_dict())
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: multivae-platform\ntags:\n- multimodal\n")
    assert "| y | () | categorical | embedding | mlp |" in card
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folders left


def test_load_restores_weights_and_class(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "m")
    loaded = multivae.load_model(folder)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not loaded.training
    assert type(model).from_pretrained(folder).config == model.config


def test_overwriting_replaces_the_folder_atomically(model, tmp_path, monkeypatch):
    folder = model.save_pretrained(tmp_path / "m")
    before = (folder / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model_folder, "save_file", broken)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda d: d.update(format_version=7), ConfigError, "expected format_version 1, found 7"),
        (lambda d: d.update(model="nosuch"), ConfigError, "unknown model 'nosuch'"),
        (lambda d: d.pop("config"), ConfigError, "unreadable model config"),
        (lambda d: d["config"].update(latnet_dim=3), ConfigError, "Did you mean 'latent_dim'"),
    ],
    ids=["version", "model-name", "no-config", "misspelled-key"],
)
def test_bad_config_files_are_refused(model, tmp_path, edit, error, message):
    folder = model.save_pretrained(tmp_path / "m")
    document = json.loads((folder / "config.json").read_text())
    edit(document)
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(error, match=message):
        multivae.load_model(folder)


def test_missing_folder_or_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a model folder or a Hub repository id"):
        multivae.load_model(tmp_path / "nowhere" / "deeper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json; not a multivae model folder"):
        multivae.load_model(tmp_path / "empty")


def test_wrong_class_from_pretrained(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "m")
    other = multivae.get_model_class("mopoe")
    with pytest.raises(ConfigError, match="holds a mvae model, not mopoe"):
        other.from_pretrained(folder)


def test_repo_id_downloads_only_the_three_files(model, tmp_path, monkeypatch):
    # The Hub cannot be reached here: stand in for the download call and check what is asked.
    folder = model.save_pretrained(tmp_path / "snapshot")
    calls = []

    def snapshot_download(repo_id, revision, allow_patterns):
        calls.append((repo_id, revision, allow_patterns))
        return str(folder)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    loaded = multivae.load_model("owner/repo")
    assert calls == [("owner/repo", None, ["config.json", "model.safetensors", "README.md"])]
    assert loaded.config == model.config
