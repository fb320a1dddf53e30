"""User-item interactions (MovieLens ``ratings.csv``/``u.data``/``ratings.dat`` or any CSV of user, item[, rating])
split for collaborative filtering as Liang et al. (2018) split them: strong generalization over held-out users."""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_info
from scipy import sparse
from torch import Tensor

from datamodules.base import ImageDataModule, Split
from datamodules.checks import NonNegativeInt, OpenUnitInterval, PositiveInt, number_type
from datamodules.loader import TensorBatchLoader, fingerprint

# The paper's rule: a held-out user with fewer items than this keeps them all as fold-in (and is not evaluated).
MIN_ITEMS_TO_HOLD_OUT = 5
# The test users' share when neither test_users nor test_path names them.
DEFAULT_TEST_USERS = 0.1
# The settings that decide which users are training users, named when a checkpoint's differ.
SPLIT_SETTINGS = ("path", "test_path", "min_rating", "min_user_items", "val_users", "test_users", "seed")
# min_rating: any finite number (ratings may be negative, as Jester's -10 to 10); NaN would keep no rating.
FiniteFloat = number_type("(-inf, inf)")


@dataclass
class Interactions:
    """The split click matrices (users x items, CSR, 1 at a click): ``train``, the training users'; per evaluated split,
    ``fold_in`` (the clicks the model sees, 80% of each user's by default) and ``held_out`` (the rest, to rank);
    ``items``, the item id of each column (the training users' items, sorted); ``users``, each row's user, per split."""

    items: np.ndarray
    train: sparse.csr_matrix
    fold_in: dict[str, sparse.csr_matrix]
    held_out: dict[str, sparse.csr_matrix]
    users: dict[str, np.ndarray]


class InteractionsDataModule(ImageDataModule):
    """Users' click vectors under the strong-generalization split of Liang et al. (2018) (README, "Recommendation"):
    batches ``(clicks, held_out, user)`` of dense ``[B, num_items]`` rows (``held_out`` is ``[B, 0]`` in training).

    Args:
        path: a file of user, item[, rating[, anything]] per line, separated by commas, tabs, ``::`` or spaces.
        min_rating: keep only interactions rated at least this (the paper: 4 on MovieLens); None keeps all.
        min_user_items: keep only users with at least this many interactions after the rating filter (the paper: 5).
        val_users, test_users: validation/test users: a count, or a fraction of the users if below 1 (``test_users``
            None: 0.1; unset with ``test_path``).
        held_out_fraction: share of each validation/test user's items held out to rank.
        test_path: a file of the test users' held-out interactions (MovieLens-100K's ``u1.test`` beside ``u1.base``);
            its users' interactions in ``path`` are folded in and trained on (weak generalization).
        header: whether the first line of ``path`` names the columns (never a line of numbers only); None: a first
            line without numbers before one with numbers does (a file whose first two lines hold no number must say).
            ``test_path``'s first line names them where it holds no number and neither a user nor an item of ``path``.
        seed: seed of the user split, the held-out draw and the epoch orders.
    """

    def __init__(
        self,
        path: str,
        min_rating: FiniteFloat | None = None,
        min_user_items: PositiveInt = 5,
        val_users: PositiveInt | OpenUnitInterval = 0.1,
        test_users: PositiveInt | OpenUnitInterval | None = None,
        held_out_fraction: OpenUnitInterval = 0.2,
        test_path: str | None = None,
        header: bool | None = None,
        batch_size: PositiveInt = 500,
        seed: NonNegativeInt = 42,
        num_workers: NonNegativeInt = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if test_users is not None and test_path is not None:
            raise ValueError(
                f"test_users={test_users} and test_path={test_path} both name the test users (test_path: the users of "
                "its lines); leave test_users unset with test_path (--data.test_users null where a config sets it, "
                "as an earlier run's config.yaml may)"
            )
        self.path = Path(path).expanduser()  # as torchvision expands its root: a YAML config is no shell
        self.test_path = Path(test_path).expanduser() if test_path is not None else None
        self.check_sources_exist()

    # --- what the data are ------------------------------------------------------------------------------------------
    @cached_property
    def interactions(self) -> Interactions:
        """The split click matrices, read and split on first use."""
        min_rating = self.hparams.min_rating
        frame = read_interactions(self.path, self.hparams.header, min_rating)
        if self.test_path is None:
            return self.split(frame)
        return self.split(frame, read_interactions(self.test_path, names_columns(self.test_path, frame), min_rating))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(num_items,)``: the items of the training users."""
        return (len(self.interactions.items),)

    @property
    def item_counts(self) -> Tensor:
        """The number of training users who clicked each item: the popularity baseline's scores."""
        return torch.from_numpy(np.asarray(self.interactions.train.sum(0)).ravel().astype(np.float32))

    is_image_data = False
    class_names = None
    has_labels = False

    @property
    def dataset_name(self) -> str:
        return self.path.stem

    def source_paths(self) -> list[str]:
        return [str(self.path)] + ([str(self.test_path)] if self.test_path else [])

    # --- what a model trained on them is tied to --------------------------------------------------------------------
    def split_record(self) -> dict[str, Any]:
        """What a model trained on these data depends on (kept in its checkpoint): ``items``, the item id of each output
        column; ``train_users``, the training users' number and fingerprint; ``settings``, the split's."""
        users = self.interactions.users["train"]
        digest = hashlib.sha256("\n".join(sorted(map(str, users))).encode()).hexdigest()[:16]
        settings = {key: self.hparams[key] for key in SPLIT_SETTINGS}
        return {"items": self.interactions.items.tolist(), "train_users": [len(users), digest], "settings": settings}

    def check_split_record(self, record: dict[str, Any], model: str, users: bool = True) -> None:
        """Raise a ValueError naming what differs if a checkpoint's ``record`` (:meth:`split_record`) has other item
        columns than these data or, where ``users``, other training users; ``model`` names the checkpoint's model."""
        mine = self.split_record()
        theirs, ours = [str(item) for item in record["items"]], [str(item) for item in mine["items"]]
        if theirs != ours:
            if sorted(theirs) == sorted(ours):
                detail = "the same item ids in another column order (ids read as numbers in one, as text in the other)"
            elif len(theirs) != len(ours):
                new, gone = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
                which = f"item {new[0]} is not in the checkpoint" if new else f"item {gone[0]} is not here"
                detail = f"{len(theirs)} items in the checkpoint, {len(ours)} here ({which})"
            else:
                differ = [i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b]
                detail = (f"{len(differ)} of its {len(ours)} columns are other items here (column {differ[0]}: item "
                          f"{theirs[differ[0]]} in the checkpoint, {ours[differ[0]]} here)")  # fmt: skip
            raise ValueError(
                f"{model} was trained on other item columns than {self.path} gives: {detail}, so its scores would "
                "rank other items. Give it the data it was trained on (the same item ids), or train a model on these"
            )
        if users and record["train_users"] != mine["train_users"]:
            (n, digest), (m, my_digest), stored = record["train_users"], mine["train_users"], record["settings"]
            changed = [f"{key}={stored[key]!r} in the checkpoint, {mine['settings'][key]!r} here"
                       for key in SPLIT_SETTINGS if stored.get(key) != mine["settings"][key]]  # fmt: skip
            why = ", ".join(changed) or f"the same split settings, but {self.path} holds other users"
            raise ValueError(
                f"{model} was trained on other users than this split's training users ({n} users, fingerprint "
                f"{digest}, in the checkpoint; {m}, fingerprint {my_digest}, here: {why}), so its validation and test "
                "users may be users it trained on. Use the data and split settings it was trained with (its run's "
                "config.yaml), or train a model on this split"
            )

    # --- the split --------------------------------------------------------------------------------------------------
    def split(self, frame: pd.DataFrame, test: pd.DataFrame | None = None) -> Interactions:
        """The split of ``frame``: strong generalization, or weak with ``test``'s held-out lines."""
        first_line = frame.attrs.get("first_line", 1)
        if test is not None:  # ids read as numbers in one file and as text in the other: compared as text
            for column in ("user", "item"):
                if frame[column].dtype != test[column].dtype:
                    frame[column], test[column] = frame[column].astype(str), test[column].astype(str)
        counts, least, min_rating = frame["user"].value_counts(), self.hparams.min_user_items, self.hparams.min_rating
        if counts.max() < least:
            rated = f" rated at least min_rating={min_rating}" if min_rating is not None else ""
            raise ValueError(
                f"{self.path}: no user has min_user_items={least} interactions{rated} (the most a user has is "
                f"{counts.max()}): lower min_user_items"
            )
        frame = frame[frame["user"].isin(counts.index[counts >= least])]
        users = np.sort(frame["user"].unique())
        if test is not None:
            test_users = np.sort(test["user"].unique())
            self.check_test_file(frame, first_line, test)
            users = users[~np.isin(users, test_users)]  # validation users are drawn from the others
            if len(users) == 0:
                raise ValueError(
                    f"every user of {self.path} with min_user_items={least} interactions is a test user of "
                    f"{self.test_path}, but validation users are drawn from the others: give a test_path that holds "
                    "some of the users (MovieLens-100K's u1.test does; its ua.test holds every user)"
                )
        asked = {"val_users": self.hparams.val_users}
        if test is None:  # else test_path names the test users
            asked["test_users"] = self.hparams.test_users or DEFAULT_TEST_USERS
        sizes = {key: round(value * len(users)) if isinstance(value, float) else value for key, value in asked.items()}
        for name, size in sizes.items():
            if size == 0:
                raise ValueError(f"{name}={asked[name]} of the {len(users)} users of {self.path} who can be drawn is 0 "
                                 f"users: give a larger fraction, or a count")  # fmt: skip
        n_val, n_test = sizes["val_users"], sizes.get("test_users", 0)
        if n_val + n_test >= len(users):
            raise ValueError(
                f"{self.path}: {len(users)} users with at least min_user_items={self.hparams.min_user_items} "
                f"interactions, too few for {n_val} validation and {n_test} test users and at least one training "
                "user; lower val_users/test_users or min_user_items"
            )
        rng = np.random.default_rng(self.hparams.seed)
        users = users[rng.permutation(len(users))]
        groups = {"test": users[:n_test], "val": users[n_test : n_test + n_val], "train": users[n_test + n_val :]}
        if test is not None:  # weak generalization: the test users are training users too
            groups["test"], groups["train"] = test_users, np.concatenate([groups["train"], test_users])
        groups = {name: np.sort(group) for name, group in groups.items()}  # rows in id order
        train = frame[frame["user"].isin(groups["train"])]
        items = np.sort(train["item"].unique())
        fold_in, held_out, kept = {}, {}, {"train": groups["train"]}
        for name in ("val", "test"):
            from_file = name == "test" and test is not None  # held out by test_path's lines, not drawn
            source = self.test_path if from_file else self.path  # of the unknown items' lines
            part = frame[frame["user"].isin(groups[name])]
            if from_file:
                part = pd.concat([part, test], keys=["fold_in", "held_out"])
            known = part[part["item"].isin(items)]
            if len(known) < len(part):
                rank_zero_info(
                    f"{source}: {len(part) - len(known)} interactions of {name} users with items no training user "
                    "has are left out (the model has no output for them)"
                )
            drawn, fraction = len(groups[name]), self.hparams.held_out_fraction
            if from_file:
                held = pd.Series(known.index.get_level_values(0) == "held_out", index=known.index)
                why, fix = f"a line in {source} with an item that training users have", f"give {source} such lines"
            else:
                held = _draw_held_out(known, fraction, rng)
                why = (f"{MIN_ITEMS_TO_HOLD_OUT} or more items that training users have, and held_out_fraction="
                       f"{fraction} of them at least 1")  # fmt: skip
                fix = f"raise {name}_users or held_out_fraction, or use a larger file"
            evaluated = np.sort(known.loc[held, "user"].unique())
            kept_rows = known["user"].isin(evaluated)
            known, held = known[kept_rows], held[kept_rows]
            if len(evaluated) == 0:
                raise ValueError(f"{source}: none of the {drawn} {name} users has {why}; {fix}")
            if len(evaluated) < drawn:
                rank_zero_info(f"{source}: {drawn - len(evaluated)} of the {drawn} {name} users are not evaluated: "
                               f"each needs {why}")  # fmt: skip
            fold_in[name] = _click_matrix(known[~held], evaluated, items)
            held_out[name] = _click_matrix(known[held], evaluated, items)
            kept[name] = evaluated
        return Interactions(items, _click_matrix(train, groups["train"], items), fold_in, held_out, kept)

    def check_test_file(self, frame: pd.DataFrame, frame_first_line: int, test: pd.DataFrame) -> None:
        """Raise a ValueError naming the line of ``test_path`` whose user is unknown or whose pair is in ``path``."""
        test_path, first_line = self.test_path, test.attrs.get("first_line", 1)
        unknown = ~test["user"].isin(frame["user"])
        if unknown.any():
            row = test.index[unknown.to_numpy()][0]
            raise ValueError(
                f"{test_path} line {line_of(test_path, row, first_line)}: user {test['user'][row]} has no "
                f"interactions in {self.path} (after min_rating and min_user_items={self.hparams.min_user_items}), so "
                "the model has nothing to recommend from; every test user must be a user of path"
            )
        both = test.reset_index().merge(frame.reset_index(), on=["user", "item"], suffixes=("_test", ""))
        if len(both):
            first = both.iloc[0]
            line = line_of(self.path, first["index"], frame_first_line)
            test_line = line_of(test_path, first["index_test"], first_line)
            raise ValueError(
                f"{test_path} line {test_line} and {self.path} line {line} both hold user {first['user']}, item "
                f"{first['item']}; a held-out interaction must not be in the training file"
            )

    def setup(self, stage: str | None = None) -> None:
        self.hparams.data_source = self.data_source
        _ = self.interactions  # read and split now, not in the first loader

    def split_size(self, split: Split) -> int:
        return len(self.interactions.users[split])

    # --- loaders ----------------------------------------------------------------------------------------------------
    def _loader(self, split: Split, shuffle: bool) -> UserRows:
        data = self.interactions
        clicks, held_out = (data.train, None) if split == "train" else (data.fold_in[split], data.held_out[split])
        return UserRows(clicks, held_out, **self._loader_settings(split, shuffle))

    def training_content(self) -> tuple[int, int]:
        return self.interactions.train.shape[0], click_fingerprint(self.interactions.train)

    def predict_dataloader(self) -> UserRows:
        return self._loader("test", shuffle=False)


class UserRows(TensorBatchLoader):
    """:class:`~datamodules.loader.TensorBatchLoader` (``**kwargs``) over the users (rows) of a split's ``clicks``
    and ``held_out`` clicks (CSR; None for training users), in dense batches ``(clicks [B, I], held_out [B, I] or
    [B, 0], rows [B])``."""

    def __init__(self, clicks: sparse.csr_matrix, held_out: sparse.csr_matrix | None, **kwargs: Any) -> None:
        users = torch.arange(clicks.shape[0])
        super().__init__(users, users, users, **kwargs)
        self.clicks, self.held_out = clicks, held_out
        self.fingerprint = click_fingerprint(clicks)

    def _make_batch(self, rows: Tensor, batch_index: int) -> tuple[Tensor, Tensor, Tensor]:
        index = rows.cpu().numpy()
        clicks = torch.from_numpy(self.clicks[index].toarray())
        held_out = torch.from_numpy(self.held_out[index].toarray()) if self.held_out is not None else clicks[:, :0]
        return clicks, held_out, torch.from_numpy(index)


def click_fingerprint(clicks: sparse.csr_matrix) -> int:
    """A cheap fingerprint of a click matrix's content (its clicks' columns, row by row)."""
    return fingerprint(torch.from_numpy(clicks.indices.astype(np.int64)))


def read_interactions(path: Path, header: bool | None = None, min_rating: float | None = None) -> pd.DataFrame:
    """The ``user``, ``item`` (and ``rating``) columns of an interactions file, with ratings below ``min_rating``
    dropped; blank lines, a UTF-8 BOM and CRLF line ends are read past, and the index is each line's data row
    (:func:`line_of`). Raises a ValueError naming the file and line of a missing field, a rating not finite, a
    repeated (user, item) pair or a ``header`` of numbers only, or a ``min_rating`` without ratings."""
    if not path.is_file():
        if path.is_dir():
            names = sorted(entry.name for entry in path.iterdir() if entry.is_file())
            inside = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") or "no files"
            raise FileNotFoundError(
                f"interactions file {path} is a folder; give the file of interactions in it ({inside})"
            )
        raise FileNotFoundError(f"interactions file {path} does not exist")
    (at, first), (second_at, second) = _first_lines(path)
    if not first:
        raise ValueError(f"{path} is empty or blank; expected user, item[, rating] per line")
    separator = _separator(first)
    fields = re.split(separator, first)
    if len(fields) < 2:
        raise ValueError(
            f"{path} line {at}: {first!r} has one field; expected user, item[, rating] separated by tabs, commas, "
            "'::' or spaces"
        )
    if header is None and not any(_is_number(field) for field in fields):
        if second and not any(_is_number(field) for field in re.split(separator, second)):
            raise ValueError(
                f"{path}: lines {at} and {second_at} hold no number, so whether line {at} ({first!r}) names the "
                "columns cannot be told; set header: true or false"
            )
        header = True
    if header and all(map(_is_number, fields)):
        raise ValueError(
            f"{path} line {at} ({first!r}) holds numbers only, an interaction, but header: true reads it as the "
            "columns' names: set header to false, or null to tell by the file"
        )
    if header and not second:
        raise ValueError(f"{path}: no interactions after line {at} ({first!r}), its header")
    if header and "user" in fields[1].lower() and "user" not in fields[0].lower():  # e.g. book_id,user_id,rating
        raise ValueError(
            f"{path} line {at} ({first!r}) names the users' column second; the columns are read as user, item[, "
            "rating] whatever their names: put the users' column first"
        )
    first_line = at + 1 if header else 1  # where data rows start (line_of counts past blank lines from here)
    names = ["user", "item", "rating"][: min(len(fields), 3)]
    # Only an empty field is missing: "NA", "null" or "None" are ids (or, as ratings, not numbers).
    settings = {"sep": separator, "header": None, "skiprows": first_line - 1, "usecols": range(len(names)),
                "names": names, "engine": "python" if len(separator) > 1 else "c", "keep_default_na": False,
                "na_values": dict.fromkeys(names, [""])}  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)  # handled below
            frame = pd.read_csv(path, **settings)
        # Ids read as numbers are read again as text where that lost how they are written ("007", "7.0" and "7").
        kinds = {name: pd.api.types.infer_dtype(frame[name]) for name in ("user", "item")}
        text = [name for name, kind in kinds.items() if kind.startswith("mixed") or kind in ("floating", "boolean")]
        text += [name for name, kind in kinds.items() if kind == "integer" and frame[name].dtype == object]  # > 64 bits
        integers = [name for name, kind in kinds.items() if kind == "integer" and name not in text]
        text += _integers_not_as_written(path, separator, integers)
        if text:
            frame = pd.read_csv(path, **settings, dtype=dict.fromkeys(text, str))
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from error
    for column in ("user", "item"):  # a blank id (a field of spaces) is a missing one
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].str.strip().replace("", None)
    missing = frame[["user", "item"]].isna().any(axis=1)
    if missing.any():
        line = line_of(path, int(np.flatnonzero(missing)[0]), first_line)
        raise ValueError(f"{path} line {line}: no user or no item; every line must hold user, item[, rating]")
    repeated = frame[frame.duplicated(["user", "item"], keep=False)]  # indexed by data row
    if len(repeated):
        user, item = repeated["user"].iloc[0], repeated["item"].iloc[0]
        same = repeated.index[(repeated["user"] == user) & (repeated["item"] == item)]
        line_a, line_b = (line_of(path, int(row), first_line) for row in same[:2])
        raise ValueError(
            f"{path} lines {line_a} and {line_b} both hold user {user}, item {item}; each (user, item) pair must "
            "appear once (aggregate repeated interactions first)"
        )
    if "rating" in frame:
        ratings = pd.to_numeric(frame["rating"], errors="coerce")
        bad = ~np.isfinite(ratings.to_numpy(dtype=float))  # NaN where not a number; inf would pass any min_rating
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            given = frame["rating"].iloc[row]
            kind = "finite" if np.isinf(ratings.iloc[row]) else "a number"
            missing = pd.isna(given) or not str(given).strip()
            what = "has no rating" if missing else f"rating {str(given)!r} is not {kind}"
            raise ValueError(f"{path} line {line_of(path, row, first_line)}: {what}")
        frame["rating"] = ratings
        if min_rating is not None:
            kept = frame[frame["rating"] >= min_rating]
            if kept.empty and not frame.empty:
                raise ValueError(f"min_rating={min_rating} keeps none of the {len(frame)} interactions of {path}, "
                                 f"whose ratings lie in [{ratings.min()}, {ratings.max()}]")  # fmt: skip
            frame = kept
    elif min_rating is not None:
        raise ValueError(
            f"min_rating={min_rating}, but {path} has no rating column (user, item only): set min_rating null "
            "(--data.min_rating null where a config sets it) to take every line as a click"
        )
    frame.attrs["first_line"] = first_line  # with the index (data rows), the file's line numbers
    return frame


def names_columns(test_path: Path, frame: pd.DataFrame) -> bool:
    """Whether the first line of ``test_path`` (held-out interactions of ``frame``'s users) names the columns: it
    holds no number, and neither a user nor an item of ``frame`` (a line of their ids is data, whatever ``header``)."""
    (_, first), _ = _first_lines(test_path)
    fields = re.split(_separator(first), first)
    return not any(map(_is_number, fields)) and not any(
        not pd.api.types.is_numeric_dtype(frame[column]) and (frame[column] == field.strip().strip('"')).any()
        for column, field in zip(("user", "item"), fields)
    )


def _first_lines(path: Path) -> tuple[tuple[int, str], tuple[int, str]]:
    """The number and text of the first two lines of ``path`` that are not blank (``""`` for none)."""
    try:
        with path.open(encoding="utf-8-sig") as file:  # blank lines skipped, as pandas skips them
            lines = ((number, text.strip()) for number, text in enumerate(file, 1) if text.strip())
            return next(lines, (1, "")), next(lines, (2, ""))
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from error


def _not_utf8(path: Path, error: UnicodeDecodeError) -> ValueError:
    """The error for a file that is not UTF-8 text, naming its first line that is not."""
    where = error.reason
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            try:
                raw.decode()
            except UnicodeDecodeError as bad:
                where = f"line {number}, byte {bad.start + 1}: {bad.reason}"
                break
    return ValueError(
        f"{path} is not a text file in UTF-8 ({where}); expected user, item[, rating] per line (decompress a .gz "
        "or .zip first; convert another encoding, e.g. iconv -f latin1 -t utf-8)"
    )


def _is_number(text: str) -> bool:
    try:
        float(text.strip().strip('"'))
    except ValueError:
        return False
    return True


def _integers_not_as_written(path: Path, separator: str, columns: list[str]) -> list[str]:
    """Those of the id ``columns`` ("user", "item") written somewhere with a plus sign or a leading zero ("+7",
    "007"), which would read as another id's number ("7")."""
    number = r'[ \t"]*(?:\+|-0|0\d)'
    sep = re.escape(separator)  # the user's field ends at the first separator, as pandas splits ("a:1::007")
    field = f"[^{sep}\n]*" if len(separator) == 1 else f"(?:(?!{sep})[^\n])*"
    first = r"[ \t]*\S+[ \t]+" if separator == r"\s+" else field + sep
    patterns = {"user": re.compile(f"\n{number}".encode()), "item": re.compile(f"\n{first}{number}".encode())}
    found: list[str] = []
    with path.open("rb") as file:  # in blocks of whole lines, each searched from a line start
        while len(found) < len(columns) and (block := file.read(1 << 24)):
            block = b"\n" + block.removeprefix(b"\xef\xbb\xbf") + file.readline()  # without a BOM
            found += [name for name in columns if name not in found and patterns[name].search(block)]
    return found


def _separator(line: str) -> str:
    """The field separator of a file whose first line is ``line`` (a tab or comma first: ``::`` may be in an id)."""
    return "\t" if "\t" in line else "," if "," in line else "::" if "::" in line else r"\s+"


def line_of(path: Path, row: int, first_line: int) -> int:
    """The file's line number of data row ``row``, counting the blank lines pandas skips."""
    seen = -1
    with path.open(encoding="utf-8-sig") as file:
        separator = _separator(next((text for text in file if text.strip()), ""))
        file.seek(0)
        for number, text in enumerate(file, 1):
            if number < first_line or (not text.strip() and (separator == r"\s+" or separator not in text)):
                continue
            seen += 1
            if seen == row:
                return number
    return first_line + row


def _click_matrix(frame: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> sparse.csr_matrix:
    """The ``len(users) x len(items)`` CSR matrix with a 1 at each (user, item) of ``frame``."""
    rows = np.searchsorted(users, frame["user"].to_numpy())
    columns = np.searchsorted(items, frame["item"].to_numpy())
    ones = np.ones(len(rows), dtype=np.float32)
    return sparse.csr_matrix((ones, (rows, columns)), shape=(len(users), len(items)))


def _draw_held_out(frame: pd.DataFrame, fraction: float, rng: np.random.Generator) -> pd.Series:
    """Which interactions of ``frame`` are held out: a random ``int(fraction * n)`` of each user's n items, for users
    with at least :data:`MIN_ITEMS_TO_HOLD_OUT` items (the paper's rule), none for the others."""
    order = rng.permutation(len(frame))
    shuffled = frame["user"].iloc[order]
    position = np.empty(len(frame), dtype=np.int64)
    position[order] = shuffled.groupby(shuffled, sort=False).cumcount().to_numpy()
    n_items = frame.groupby("user")["user"].transform("size").to_numpy()
    n_held = np.where(n_items >= MIN_ITEMS_TO_HOLD_OUT, (fraction * n_items).astype(np.int64), 0)
    return pd.Series(position < n_held, index=frame.index)


__all__ = ["Interactions", "InteractionsDataModule", "UserRows", "read_interactions"]
