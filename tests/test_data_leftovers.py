"""Bad input to the interactions datamodule found by using it as a user would (session 57)."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules import InteractionsDataModule


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
