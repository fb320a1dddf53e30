"""Bad input to the datamodules found by using them as a user would (sessions 57 and 58)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.core.saving import save_hparams_to_yaml

from datamodules import InteractionsDataModule, MNISTDataModule, StreamingDataModule
from datamodules.stream_store import StreamManifest


def _ratings(path: Path, separator: str = ",") -> Path:
    """Twelve users with 4 to 7 rated items each, under a header."""
    lines = ["user,item,rating".replace(",", separator)]
    rows = [(user, item, 1 + item % 5) for user in range(12) for item in range(4 + user % 4)]
    lines += [separator.join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_min_user_items_no_user_reaches_is_named_with_the_most_a_user_has(tmp_path: Path) -> None:
    # it was "val_users=0.1 of the 0 users of ... who can be drawn is 0 users: give a larger fraction, or a count"
    data = InteractionsDataModule(str(_ratings(tmp_path / "r.csv")), min_user_items=8)
    with pytest.raises(ValueError, match=r"r.csv: no user has min_user_items=8 interactions \(the most a user has is "
                       r"7\): lower min_user_items"):  # fmt: skip
        data.setup()
    rated = InteractionsDataModule(str(_ratings(tmp_path / "r.csv")), min_user_items=4, min_rating=4)
    with pytest.raises(ValueError, match=r"no user has min_user_items=4 interactions rated at least min_rating=4 "
                       r"\(the most a user has is 2\)"):  # fmt: skip
        rated.setup()


def test_a_file_of_another_separator_is_refused_naming_the_separators_read(tmp_path: Path) -> None:
    data = InteractionsDataModule(str(_ratings(tmp_path / "r.csv", separator=";")))
    with pytest.raises(ValueError, match=r"r.csv line 1: 'user;item;rating' has one field; expected user, item\[, "
                       r"rating\] separated by tabs, commas, '::' or spaces"):  # fmt: skip
        data.setup()


def test_classes_given_as_a_tuple_are_written_to_hparams_yaml_as_a_list_safe_load_reads(
    data_dir: Path, tmp_path: Path
) -> None:
    # it was "!!python/tuple [0, 1]", which yaml.safe_load refuses (ConstructorError)
    data = MNISTDataModule(data_dir=str(data_dir), classes=(0, 1))
    save_hparams_to_yaml(tmp_path / "hparams.yaml", data.hparams)
    assert yaml.safe_load((tmp_path / "hparams.yaml").read_text())["classes"] == [0, 1]


def test_a_manifest_count_of_the_wrong_type_is_named_with_its_file_key_and_value(tmp_path: Path) -> None:
    # it was "TypeError: '<' not supported between instances of 'str' and 'int'", from the first check of the split
    counts = {"train": "99", "val": 9, "test": 12}
    manifest = StreamManifest(16, 16, 3, "png", counts, {split: {} for split in counts}, fingerprint="0" * 64)
    (tmp_path / "manifest.json").write_text(json.dumps(asdict(manifest)))
    for split in counts:
        (tmp_path / split).mkdir()
        (tmp_path / split / "index.json").write_text("{}")
    with pytest.raises(ValueError, match=r"manifest.json: counts.train is '99', expected an integer >= 0; prepare"):
        StreamingDataModule(str(tmp_path)).setup()
