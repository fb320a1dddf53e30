"""The shipped configs as a user runs them: ``--print_config`` written out and trained from, then ``validate``, ``test``
and ``predict --ckpt_path last`` in the same run folder; and what the configs' comments and the README say of them.

Runs from a working folder holding ``data/`` (relative paths resolve against it, not against the config's folder).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_image_folder
from tiny_runs import ROOT, run_cli

# A representative subset: automatic and manual optimization (two optimizers), MNIST and Fashion-MNIST (seeded by
# the config), feature vectors from a relative path, and a config with a callback list and an image folder.
TINY = {
    "ae": [],
    "aae": ["--model.init_args.discriminator_hidden_dims", "[16]"],
    "vqvae": ["--model.init_args.codebook_size", "16"],
    "tabular_anomaly_ae": ["--data.path", "data/table.npz"],
    "photos/kl_f8": ["--data.image_size", "24", "--model.init_args.perceptual_pretrained", "false"],
}
SMALL = ["--model.init_args.hidden_dims", "[16,16]", "--model.init_args.latent_dim", "4", "--data.batch_size", "16"]
RUN = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
       "--trainer.enable_model_summary", "false"]  # fmt: skip
EVAL = ["--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches", "1",
        "--trainer.enable_progress_bar", "false", "--ckpt_path", "last"]  # fmt: skip


def fit_config(root: Path) -> str:
    return (root / "lightning_logs" / "version_0" / "config.yaml").read_text().replace(f"default_root_dir: {root}", "")


@pytest.mark.parametrize("config", list(TINY))
def test_a_printed_config_trains_as_its_config_and_its_run_evaluates_from_last(
    config: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # data_dir is ./data, the configs' default
    if config.startswith("photos/"):
        write_image_folder(tmp_path / "data" / "photos" / "train", classes=(), per_class=12, size=24)
    args = ["--config", str(ROOT / "configs" / f"{config}.yaml"), *SMALL, *TINY[config]]
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", *args, "--print_config")
    assert exit_.value.code in (0, None)
    printed = tmp_path / "printed" / "config.yaml"  # not beside ./data: a relative path must not follow the file
    printed.parent.mkdir()
    printed.write_text(capsys.readouterr().out)

    run_cli("fit", *args, *RUN, "--trainer.default_root_dir", str(tmp_path / "a"))
    run_cli("fit", "--config", str(printed), *RUN, "--trainer.default_root_dir", str(tmp_path / "b"))
    a, b = (torch.load(next((tmp_path / r).rglob("last.ckpt")), weights_only=False) for r in "ab")
    assert a["global_step"] == b["global_step"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert fit_config(tmp_path / "a") == fit_config(tmp_path / "b")

    last = str(next((tmp_path / "b").rglob("last.ckpt")))
    for step, version in (("validate", 1), ("test", 2), ("predict", 3)):
        cli = run_cli(step, "--config", str(printed), *EVAL, "--trainer.default_root_dir", str(tmp_path / "b"))
        assert cli.trainer.ckpt_path == last
        assert (tmp_path / "b" / "lightning_logs" / f"version_{version}" / "config.yaml").is_file()
        if step != "predict":
            assert all(math.isfinite(float(v)) for v in cli.trainer.callback_metrics.values())
    assert (tmp_path / "b" / "lightning_logs" / "version_3" / "predictions.pt").is_file()


MODEL_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "model" in yaml.safe_load(p.read_text()))
# The input size of each dataset a config's comment may start a network with: MNIST's 28x28 and dSprites' 64x64.
INPUTS = {"MNISTDataModule": 784, "DSpritesDataModule": 4096}


def comment(path: Path) -> str:
    return " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))


def protocol(config: dict) -> tuple:
    """The data, epochs and optimizer a config trains with."""
    data = config["data"]
    return (
        data["class_path"],
        data.get("init_args"),
        config["trainer"]["max_epochs"],
        config["model"]["init_args"].get("optimizer"),
    )


def network(config: dict) -> list[int]:
    args = config["model"]["init_args"]
    return [*args["hidden_dims"], args["latent_dim"]]


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in MODEL_CONFIGS])
def test_the_network_and_training_a_config_comment_states_are_the_configs(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    text = comment(path)
    size = INPUTS.get(config["data"]["class_path"].rsplit(".", 1)[-1])
    for widths in re.findall(r"\b(?:784|4096)(?:-\d+)+\b", text):  # "784-256-64-20 MLP"
        first, *rest = map(int, widths.split("-"))
        assert (first, rest) == (size, network(config)), f"{path.name} says {widths}"
    for other in re.findall(r"\bthe (?:VAE|autoencoder|network|MLP) of (configs/[\w/]+\.yaml)", text):
        assert network(config) == network(yaml.safe_load((ROOT / other).read_text())), f"{path.name}: {other}"
    for other in re.findall(r"\bthe protocol of (configs/[\w/]+\.yaml)", text):  # trained as the other config is
        theirs = yaml.safe_load((ROOT / other).read_text())
        assert [protocol(config), network(config)] == [protocol(theirs), network(theirs)], f"{path.name}: {other}"
    for batch, epochs, other in re.findall(r"\bbatch (\d+), (\d+) epochs, as (configs/[\w/]+\.yaml)", text):
        for one in (config, yaml.safe_load((ROOT / other).read_text())):
            assert (one["data"]["init_args"]["batch_size"], one["trainer"]["max_epochs"]) == (int(batch), int(epochs))
    if "Adam's default eps" in text:
        assert "eps" not in (config["model"]["init_args"].get("optimizer") or {}).get("init_args", {})


def readme_rows() -> list[tuple[str, list[str]]]:
    """(class, configs) of each row of the README's table of variants."""
    rows = []
    for line in (ROOT / "README.md").read_text().split("## Variants", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = line.split(" | ")
        if len(cells) > 2 and cells[1].startswith("`ae_lightning."):
            rows.append((cells[1].split("`")[1], re.findall(r"`(configs/[\w/]+\.yaml)`", cells[2])))
    return rows


def test_every_readme_variant_row_names_configs_of_its_class() -> None:
    rows = readme_rows()
    assert len(rows) > 20
    for cls, configs in rows:
        assert configs, f"the README row of {cls} names no config"
        for config in configs:
            assert yaml.safe_load((ROOT / config).read_text())["model"]["class_path"] == cls, config


SPACES = sorted((ROOT / "configs" / "search").glob("*.yaml"))


@pytest.mark.parametrize("space", SPACES, ids=[p.stem for p in SPACES])
def test_a_shipped_search_space_names_only_values_its_config_takes(space: Path) -> None:
    # ae-lightning-search --config configs/<name>.yaml --space configs/search/<name>.yaml: checked before any trial.
    from ae_lightning.search import check_names, check_values, read_space, resolve_config

    config, parsed = [ROOT / "configs" / space.name], read_space(space)
    check_names(parsed, space, config, resolve_config(config, []))
    check_values(parsed, space, config, [])
    assert parsed["metric"].startswith("val/")


@pytest.mark.parametrize(
    "dataset, kwargs, files",
    [
        ("EMNIST", {"split": "balanced"}, r"Put its files \(gzip.zip\) in \S+/EMNIST/raw "),
        ("QMNIST", {}, r"\(qmnist-train-images-idx3-ubyte.gz, .*xnist-labels-idx2-int.xz\) in \S+/QMNIST/raw "),
    ],
)
def test_a_failed_torchvision_download_names_the_files_and_leaves_no_folder(
    dataset: str, kwargs: dict, files: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--data TorchvisionDataModule --data.dataset EMNIST` (README) offline: the MNIST family downloads into
    # <data_dir>/<Class>/raw/, which a failed download left behind, empty (CIFAR-10: tests/test_own_data.py).
    import urllib.error
    import urllib.request

    from datamodules import TorchvisionDataModule

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    data = TorchvisionDataModule(dataset, data_dir=str(tmp_path / "data"), dataset_kwargs=kwargs)
    with pytest.raises(FileNotFoundError, match=rf"{dataset} is not in \S+ and could not be downloaded .*{files}"):
        data.prepare_data()
    assert list(tmp_path.iterdir()) == []
