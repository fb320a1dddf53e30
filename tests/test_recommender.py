"""Mult-VAE and Mult-DAE, the interactions datamodule and the ranking metrics, on small files the tests write."""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from scipy import sparse
from tiny_runs import ROOT, build_cli, last_checkpoint, run_cli

from ae_lightning import MultDAE, MultVAE
from ae_lightning.blocks import losses
from ae_lightning.cli import ConfigError
from ae_lightning.evaluation.ranking import ndcg_at_k, recall_at_k
from datamodules import InteractionsDataModule


def write_interactions(path: Path, n_users: int = 120, n_items: int = 60, seed: int = 0, header: str = "") -> Path:
    """A ratings file with structure: each user likes one of 4 item groups (rating 4-5 there, 1-2 elsewhere)."""
    rng = np.random.default_rng(seed)
    lines = [header] if header else []
    for user in range(n_users):
        group = user % 4
        liked = [i for i in range(n_items) if i % 4 == group]
        items = rng.choice(liked, size=8, replace=False).tolist() + rng.choice(n_items, size=3, replace=False).tolist()
        for item in dict.fromkeys(items):  # unique, in order
            rating = rng.integers(4, 6) if item % 4 == group else rng.integers(1, 3)
            lines.append(f"u{user},{item},{rating}")
    path.write_text("\n".join(lines) + "\n")
    return path


def data(path: Path, **kwargs) -> InteractionsDataModule:
    settings = {"val_users": 20, "test_users": 20, "batch_size": 32, "min_rating": 3.5}
    if "test_path" in kwargs:  # the test file names the test users
        del settings["test_users"]
    return InteractionsDataModule(str(path), **{**settings, **kwargs})


def make_trainer(root: Path, **kwargs) -> L.Trainer:
    settings = {"accelerator": "cpu", "max_epochs": 1, "logger": False, "enable_checkpointing": False}
    settings |= {"enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": root}
    return L.Trainer(**{**settings, **kwargs})


# --- metrics and loss -----------------------------------------------------------------------------------------------
def test_ranking_metrics_match_values_worked_by_hand() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])  # ranks items 0, 1, 2, 3, 4
    held_out = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0]])
    # top 2 = {0, 1}: one hit of min(2, 3) possible
    assert recall_at_k(scores, held_out, 2).item() == pytest.approx(1 / 2)
    # top 3 = {0, 1, 2}: one hit of min(3, 3)
    assert recall_at_k(scores, held_out, 3).item() == pytest.approx(1 / 3)
    # DCG@3: the hit at rank 2 -> 1/log2(3); ideal: hits at ranks 1, 2, 3
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(scores, held_out, 3).item() == pytest.approx((1 / math.log2(3)) / ideal)
    # k beyond the number of items: all three hits, at ranks 2, 4, 5, over the ideal ranks 1, 2, 3
    dcg = 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)
    assert ndcg_at_k(scores, held_out, 100).item() == pytest.approx(dcg / ideal)
    assert recall_at_k(scores, held_out, 100).item() == 1.0


@pytest.mark.parametrize("metric", [recall_at_k, ndcg_at_k])
def test_ranking_metrics_refuse_k_below_1(metric) -> None:
    # recall_at_k returned NaN for every user, ndcg_at_k an IndexError
    with pytest.raises(ValueError, match=r"k=0: expected at least 1 \(the number of top-ranked items scored\)"):
        metric(torch.rand(2, 5), torch.ones(2, 5), 0)


def test_multinomial_log_likelihood_by_hand() -> None:
    logits = torch.zeros(1, 4)  # uniform over 4 items
    counts = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert losses.multinomial_log_likelihood(logits, counts).item() == pytest.approx(2 * math.log(1 / 4))


# --- the datamodule -------------------------------------------------------------------------------------------------
def test_strong_generalization_split(tmp_path: Path) -> None:
    path = write_interactions(tmp_path / "ratings.csv", header="userId,movieId,rating,timestamp")
    module = data(path)
    split = module.interactions
    assert isinstance(split.train, sparse.csr_matrix)  # no dense users x items matrix
    assert module.input_shape == (len(split.items),) == (split.train.shape[1],)
    users = {name: set(ids) for name, ids in split.users.items()}
    assert users["train"].isdisjoint(users["val"]) and users["val"].isdisjoint(users["test"])
    assert len(users["val"]) == len(users["test"]) == 20 and len(users["train"]) == 80
    assert set(np.flatnonzero(np.asarray(split.train.sum(0)).ravel())) == set(range(len(split.items)))
    for name in ("val", "test"):
        fold_in, held_out = split.fold_in[name], split.held_out[name]
        assert fold_in.multiply(held_out).nnz == 0  # disjoint
        n = np.asarray((fold_in + held_out).sum(1)).ravel()
        np.testing.assert_array_equal(np.asarray(held_out.sum(1)).ravel(), (0.2 * n).astype(int))
    # only ratings >= 3.5 are clicks: every user keeps 8 liked items (+ the random ones in their group)
    assert (np.asarray(split.train.sum(1)).ravel() >= 8).all()
    module.setup("fit")
    clicks, held, rows = next(iter(module.val_dataloader()))
    assert clicks.shape == held.shape == (20, len(split.items)) and rows.tolist() == list(range(20))
    clicks, held, _ = next(iter(module.train_dataloader()))
    assert clicks.shape == (32, len(split.items)) and held.shape == (32, 0)


def test_movielens_u_data_layout_reads_the_same(tmp_path: Path) -> None:
    text = write_interactions(tmp_path / "ratings.csv").read_text().replace("u", "")  # numeric user ids
    csv, tabbed = tmp_path / "numeric.csv", tmp_path / "u.data"
    csv.write_text(text)
    tabbed.write_text(text.replace(",", "\t"))  # u.data: user item rating time, tab-separated, no header
    a, b = data(csv).interactions, data(tabbed).interactions
    assert a.train.nnz == b.train.nnz and len(a.items) == len(b.items)


@pytest.mark.parametrize(
    "lines, kwargs, message",
    [
        (["1,10,4", "2,10,5", "1,11,3", "1,10,2"], {}, r"lines 1 and 4 both hold user 1, item 10"),
        (["user,item,rating", "1,10,4", "", "2,10,five"], {}, r"line 4: rating 'five' is not a number"),
        (["1,10,4", "2,10,5", "3,998"], {}, r"line 3: has no rating"),
        (["1,10,4", "2,10,", "3,11,NA"], {}, r"line 2: has no rating"),
        (["1,10,4", "3,11,NA"], {}, r"line 2: rating 'NA' is not a number"),
        (["1,10,4", "3,11,-inf", "3,12,inf"], {}, r"line 2: rating '-inf' is not finite"),
        (["1,10", "2,10"], {"min_rating": 3.5}, r"min_rating=3.5, but .* no rating column \(.*\): set min_rating null"),
        (
            ["1,10,4", "2,11,5"],
            {"min_rating": None, "min_user_items": 1},
            r"2 users .* too few for 20 validation and 20 test users",
        ),
        (["1,10,4", "2, ,5", "3,11,4"], {}, r"line 2: no user or no item"),
        (["1\t10", " \t ", "2\t11"], {"min_rating": None}, r"line 2: no user or no item"),
        (["userId,movieId,rating"], {}, r"no interactions after line 1 \('userId,movieId,rating'\), its header"),
        (
            ["book_id,user_id,rating", "1,10,4"],
            {},
            r"line 1 \('book_id,user_id,rating'\) names the users' column second",
        ),
        (  # u.data under a config written for ratings.csv: its first interaction was dropped as the columns' names
            ["1\t10\t4", "2\t10\t5"],
            {"header": True},
            r"line 1 \('1\\t10\\t4'\) holds numbers only, an interaction, but header: true reads it as the columns'",
        ),
        (
            [f"u{u},{i},5" for u in range(30) for i in range(8)],
            {"held_out_fraction": 0.1, "val_users": 5, "test_users": 5},
            r"none of the 5 val users has 5 or more items .* held_out_fraction=0.1 of them at least 1; raise val_us",
        ),
    ],
    ids=[
        "duplicate",
        "non-numeric",
        "missing-rating",
        "empty-rating",
        "NA-rating",
        "infinite-rating",
        "no-ratings",
        "too-few-users",
        "blank-id",
        "blank-tabbed",
        "header-only",
        "users-second",
        "numbers-as-header",
        "nothing-held-out",
    ],  # fmt: skip
)
def test_bad_interactions_files_are_named_with_the_line(tmp_path: Path, lines, kwargs, message) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        _ = data(path, **kwargs).interactions


# --- the models -----------------------------------------------------------------------------------------------------
class Outputs(Callback):
    def __init__(self) -> None:
        self.betas: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.betas.append(float(outputs["beta"]))


def test_mult_vae_anneals_the_kl_weight_to_its_cap(tmp_path: Path) -> None:
    module = data(write_interactions(tmp_path / "r.csv"), batch_size=16)
    model = MultVAE(input_shape=module.input_shape, latent_dim=4, hidden_dims=[8], anneal_cap=0.5, anneal_steps=4)
    seen = Outputs()
    make_trainer(tmp_path, limit_train_batches=4, limit_val_batches=0, callbacks=[seen]).fit(model, datamodule=module)
    assert seen.betas == [0.0, 0.25, 0.5, 0.5]


@pytest.mark.parametrize("cls", [MultVAE, MultDAE])
def test_mult_models_train_and_beat_chance_and_report_beside_popularity(cls, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = data(write_interactions(tmp_path / "r.csv"), batch_size=16)
    extra = {"anneal_steps": 0} if cls is MultVAE else {}  # the KL weight at its cap from the start
    model = cls(input_shape=module.input_shape, latent_dim=8, hidden_dims=[16], input_dropout=0.2, **extra)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(tmp_path, max_epochs=30, limit_val_batches=0)
    trainer.fit(model, datamodule=module)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    (results,) = trainer.test(model, datamodule=module, verbose=False)
    for name in ("recall_20", "recall_50", "ndcg_100"):
        assert 0 <= results[f"test/{name}"] <= 1 and 0 <= results[f"test/popularity_{name}"] <= 1
    assert ("test/kl" in results) == (cls is MultVAE)
    # a user likes one group of 15 items: a model that learnt the groups ranks the held-out liked items high,
    # where popularity (all groups alike) cannot tell the groups apart
    assert results["test/ndcg_100"] > results["test/popularity_ndcg_100"]
    assert results["test/recall_20"] > results["test/popularity_recall_20"]


def test_the_popularity_ranking_keeps_exact_counts_under_bf16_true(tmp_path: Path) -> None:
    path = tmp_path / "popular.csv"  # items 0-5: about 260 training users each, one fewer each (bf16: every 2nd)
    path.write_text("".join(f"{user},{item},5\n" for user in range(300) for item in
                            [*range(min(6, user + 1)), *(10 + (user + k) % 20 for k in range(5))]))  # fmt: skip
    module = data(path, min_rating=None)
    results = {}
    for precision in ("32-true", "bf16-true"):
        model = MultDAE(input_shape=module.input_shape, latent_dim=2, hidden_dims=[4])
        (results[precision],) = make_trainer(tmp_path, precision=precision).test(model, module, verbose=False)
        assert model.item_popularity.tolist() == module.item_counts.tolist(), precision
    popularity = {name: value for name, value in results["32-true"].items() if "popularity" in name}
    assert popularity == {name: results["bf16-true"][name] for name in popularity}


def test_the_popularity_figures_are_those_of_one_ranking_with_ties_by_item_column(tmp_path: Path) -> None:
    # 160 items clicked by about 11 training users each: most counts are tied, also across the top 20, 50 and 100
    module = data(write_interactions(tmp_path / "r.csv", n_users=160, n_items=160), min_rating=None)
    model = MultDAE(input_shape=module.input_shape, latent_dim=2, hidden_dims=[4])
    (results,) = make_trainer(tmp_path).test(model, module, verbose=False)
    split = module.interactions
    counts = np.asarray(split.train.sum(0)).ravel()
    ranking = np.argsort(-counts, kind="stable")  # the most training users first, ties by the lower column
    expected = {"recall_20": [], "recall_50": [], "ndcg_100": []}
    for clicked, held in zip(split.fold_in["test"].toarray() > 0, split.held_out["test"].toarray() > 0):
        hits = held[ranking[~clicked[ranking]]]  # the user's unclicked items in that order
        for k in (20, 50):
            expected[f"recall_{k}"].append(hits[:k].sum() / min(k, held.sum()))
        dcg = (hits[:100] / np.log2(np.arange(2, len(hits[:100]) + 2))).sum()
        expected["ndcg_100"].append(dcg / (1 / np.log2(np.arange(2, min(100, held.sum()) + 2))).sum())
    for name, values in expected.items():
        assert results[f"test/popularity_{name}"] == pytest.approx(np.mean(values), abs=1e-6), name


def test_recommend_leaves_out_clicked_items() -> None:
    torch.manual_seed(0)
    model = MultDAE(input_shape=(12,), latent_dim=3, hidden_dims=[5]).eval()
    clicks = (torch.rand(4, 12) < 0.5).float()
    top = model.recommend(clicks, k=3)
    assert top.shape == (4, 3)
    assert clicks.gather(1, top).sum() == 0
    assert torch.allclose(model(clicks).sum(-1), torch.ones(4))
    # more than a user's unclicked items: those, then -1; never an item clicked already
    crowded = torch.zeros(1, 12).index_fill_(1, torch.arange(10), 1.0)
    assert sorted(model.recommend(crowded, k=5)[0].tolist()) == [-1, -1, -1, 10, 11]
    with pytest.raises(ValueError, match=r"k=13: expected 1 to 12 \(the number of items\)"):
        model.recommend(clicks, k=13)


def test_a_mult_vae_samples_users_from_its_standard_normal_prior() -> None:
    # MultVAE.sample(n) said "MultVAE is not a generative model: it has no prior to sample from"
    torch.manual_seed(0)
    model = MultVAE(input_shape=(12,), latent_dim=3, hidden_dims=[5]).eval()
    assert model.is_generative
    torch.manual_seed(1)
    probabilities = model.sample(4)
    assert probabilities.shape == (4, 12) and torch.allclose(probabilities.sum(-1), torch.ones(4))
    torch.manual_seed(1)
    assert torch.equal(probabilities, model.decode(torch.randn(4, 3)))
    with pytest.raises(NotImplementedError, match="MultDAE is not a generative model"):
        MultDAE(input_shape=(12,), latent_dim=3, hidden_dims=[5]).sample(4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"input_shape": (1, 28, 28)},
            r"takes click vectors, input_shape \(num_items,\), got input_shape \(1, 28, 28\)",
        ),
        ({"input_dropout": 1.0}, r"input_dropout must lie in \[0, 1\), got 1.0"),
        ({"anneal_cap": -0.1}, r"anneal_cap must be >= 0, got -0.1"),
        ({"network": "conv"}, r"has an MLP encoder and decoder, got network 'conv'"),
    ],
)
def test_bad_model_arguments_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultVAE(**{"input_shape": (10,), **kwargs})


@pytest.mark.parametrize("config", ["mult_vae", "mult_dae"])
def test_configs_fit_from_the_command_line_and_test_their_best_checkpoint(config: str, tmp_path: Path) -> None:
    path = write_interactions(tmp_path / "ratings.csv", header="userId,movieId,rating,timestamp")
    cli = build_cli(
        "--config", str(ROOT / "configs" / f"{config}.yaml"), "--data.path", str(path),
        "--data.val_users", "20", "--data.test_users", "20", "--data.batch_size", "32",
        "--model.init_args.latent_dim", "4", "--model.init_args.hidden_dims", "[8]",
        "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    )  # fmt: skip
    assert cli.model.input_shape == cli.datamodule.input_shape  # linked by the command
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert "best-epoch" in cli.trainer.checkpoint_callback.best_model_path  # chosen by val/ndcg_100
    (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    assert {"test/recall_20", "test/ndcg_100", "test/popularity_ndcg_100"} <= set(results)
    # predict: each user's ranking, not the held-out click matrix as the label of an image
    data = cli.datamodule
    batch = next(iter(data.predict_dataloader()))
    predicted = cli.model.eval().predict_step(batch, 0)
    top = predicted["top_items"]
    assert set(predicted) == {"z", "index", "top_items"} and top.shape == (len(batch[0]), 100)
    unclicked = (batch[0] == 0).sum(1)  # of the 60 items: those ranked, best first, then -1
    assert ((top >= 0).sum(1) == unclicked).all() and (top[:, 60:] == -1).all()
    assert not batch[0].gather(1, top.clamp(min=0))[top >= 0].any()  # none of them clicked already
    if config == "mult_vae":  # the annealed weight's cap, not its value at the test run's step 0
        expected = results["test/recon"] + cli.model.anneal_cap * results["test/kl"]
        assert results["test/loss"] == pytest.approx(expected, rel=1e-5) and results["test/kl"] > 0
    assert (tmp_path / "run" / "lightning_logs" / "version_0" / "config.yaml").is_file()
    spec = importlib.util.spec_from_file_location("evaluate", ROOT / "scripts" / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    with pytest.raises(ValueError, match=r"holds a recommender \(Mult.AE\), which this script does not score: `ae-l"):
        evaluate.main([cli.trainer.checkpoint_callback.best_model_path])


@pytest.mark.parametrize("config", ["mult_vae", "mult_dae"])
def test_configs_click_ratings_of_four_or_more_as_the_paper(config: str, tmp_path: Path) -> None:
    from datamodules.interactions import read_interactions

    path = write_interactions(tmp_path / "ratings.csv")  # MovieLens-20M's half stars: the paper's clicks are 4 and up
    path.write_text(path.read_text().replace(",4\n", ",3.5\n"))
    cli = build_cli("--config", str(ROOT / "configs" / f"{config}.yaml"), "--data.path", str(path),
                    "--data.val_users", "20", "--data.test_users", "20")  # fmt: skip
    split, frame = cli.datamodule.interactions, read_interactions(path)
    rows, columns = split.train.nonzero()
    clicked = set(zip(split.users["train"][rows].tolist(), split.items[columns].tolist()))
    half_stars = set(zip(frame["user"][frame["rating"] == 3.5], frame["item"][frame["rating"] == 3.5]))
    assert clicked and half_stars and not clicked & half_stars


def test_a_mult_vae_resumed_mid_epoch_or_at_an_epoch_end_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    path = write_interactions(tmp_path / "ratings.csv")
    settings = [
        "--config",
        str(ROOT / "configs" / "mult_vae.yaml"),
        "--data.path",
        str(path),
        "--data.val_users",
        "20",
        "--data.test_users",
        "20",
        "--data.batch_size",
        "32",
        "--model.init_args.latent_dim",
        "4",
        "--model.init_args.hidden_dims",
        "[8]",
        "--model.init_args.anneal_steps",
        "10",
        "--trainer.max_epochs",
        "4",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]  # fmt: skip  (80 training users: 3 batches an epoch, 12 steps)
    run_cli("fit", *settings, "--trainer.default_root_dir", str(tmp_path / "reference"))
    expected = last_checkpoint(tmp_path / "reference")
    for stop in ("4", "6"):  # inside epoch 1, and at the end of epoch 1
        root = str(tmp_path / f"stopped-{stop}")
        run_cli("fit", *settings, "--trainer.default_root_dir", root, "--trainer.max_steps", stop)
        run_cli("fit", *settings, "--trainer.default_root_dir", root, "--ckpt_path", "last")
        resumed = last_checkpoint(Path(root))
        assert resumed["global_step"] == expected["global_step"] == 12
        for name, value in expected["state_dict"].items():
            assert torch.equal(resumed["state_dict"][name], value), f"stopped at {stop}: {name} differs"
    with pytest.raises(ValueError, match=r"other users than this split's .*seed=42 in the checkpoint, 7 here"):
        run_cli("fit", *settings, "--trainer.default_root_dir", root, "--ckpt_path", "last", "--data.seed", "7")


def test_a_test_file_holds_out_its_interactions_of_training_users(tmp_path: Path) -> None:
    base = write_interactions(tmp_path / "u1.base")
    lines = base.read_text().splitlines()
    of = {user: [line for line in lines if line.startswith(f"{user},")] for user in ("u1", "u2")}
    held = of["u1"][:2] + of["u2"][:2]
    base.write_text("\n".join(line for line in lines if line not in held) + "\n")
    test = tmp_path / "u1.test"
    test.write_text("\n".join(held) + "\n")
    split = data(base, test_path=str(test), min_rating=None).interactions
    assert set(split.users["test"]) == {"u1", "u2"}
    assert {"u1", "u2"} <= set(split.users["train"]) and not {"u1", "u2"} & set(split.users["val"])
    assert split.held_out["test"].sum(1).ravel().tolist() == [[2, 2]]  # the test file's lines
    assert split.fold_in["test"].sum(1).ravel().tolist() == [[len(of["u1"]) - 2, len(of["u2"]) - 2]]  # u1.base's


@pytest.mark.parametrize("header", [True, False])
def test_a_test_file_with_or_without_a_header_loses_no_line(tmp_path: Path, header: bool) -> None:
    # Text ids make header: true or false necessary; it named path's first line and test_path's, so a u1.test without
    # the header of a clicks.csv with one lost its first interaction, and one with it read "user,item" as a click.
    lines = [f"user{u},book{(u + i) % 12}" for u in range(12) for i in range(8)]
    base, test = tmp_path / "clicks.csv", tmp_path / "test.csv"
    base.write_text("user,item\n" * header + "\n".join(lines) + "\n")
    held = ["user0,book8", "user0,book9", "user1,book10", "user1,book11"]
    for test_header in ("", "user,item\n"):
        test.write_text(test_header + "\n".join(held) + "\n")
        split = data(base, test_path=str(test), min_rating=None, header=header, val_users=2).interactions
        assert split.held_out["test"].sum(1).ravel().tolist() == [[2, 2]], f"test file header: {test_header!r}"


def test_interactions_files_under_home_as_a_yaml_config_writes_them(tmp_path: Path, monkeypatch) -> None:
    # "~/ratings.csv" in a config (no shell expands it) was refused as missing, as the image folders' paths were
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no folder named "~" here
    base = write_interactions(tmp_path / "u1.base")
    lines = base.read_text().splitlines()
    base.write_text("\n".join(lines[1:]) + "\n")
    (tmp_path / "u1.test").write_text(lines[0] + "\n")
    split = data("~/u1.base", test_path="~/u1.test", min_rating=None).interactions
    assert split.held_out["test"].sum() == 1


@pytest.mark.parametrize(
    "test_lines, message",
    [
        (["u1,3,5", "nobody,4,5"], r"u1.test line 2: user nobody has no interactions in .*u1.base"),
        (["u1,{item},5"], r"u1.test line 1 and .*u1.base line \d+ both hold user u1, item \d+"),
    ],
    ids=["unknown-user", "also-in-training"],
)
def test_bad_test_files_are_named_with_the_line(tmp_path: Path, test_lines: list[str], message: str) -> None:
    base = write_interactions(tmp_path / "u1.base")
    item = next(line for line in base.read_text().splitlines() if line.startswith("u1,")).split(",")[1]
    test = tmp_path / "u1.test"
    test.write_text("\n".join(line.format(item=item) for line in test_lines) + "\n")
    with pytest.raises(ValueError, match=message):
        _ = data(base, test_path=str(test), min_rating=None).interactions


def test_test_users_without_a_known_item_are_named_by_the_test_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base, test = write_interactions(tmp_path / "u1.base"), tmp_path / "u1.test"  # MovieLens-100K's u1.base, u1.test
    test.write_text("u1,new1,5\nu1,new2,4\nu2,new1,5\nu3,2,5\n")  # u1 and u2: items no u1.base user has
    base.write_text("".join(line + "\n" for line in base.read_text().splitlines() if not line.startswith("u3,2,")))
    with caplog.at_level("INFO"):
        assert list(data(base, test_path=str(test), min_rating=None).interactions.users["test"]) == ["u3"]
    assert r"u1.test: 3 interactions of test users with items no training user has" in caplog.text
    assert "u1.test: 2 of the 3 test users are not evaluated: each needs a line in " in caplog.text
    assert "5 or more items" not in caplog.text  # the held-out draw's rule, not test_path's
    test.write_text("u1,new1,5\n")
    with pytest.raises(ValueError, match=r"u1.test: none of the 1 test users has a line in .*u1.test with an item"):
        _ = data(base, test_path=str(test), min_rating=None).interactions


def test_a_folder_a_compressed_file_and_a_quoted_csv(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"interactions file {tmp_path} is a folder"):
        _ = data(tmp_path).interactions
    (tmp_path / "ml-20m").mkdir()  # MovieLens unzipped: the folder named instead of its ratings.csv
    for name in ("movies.csv", "ratings.csv", "README.txt"):
        (tmp_path / "ml-20m" / name).write_text("1,10,4\n")
    with pytest.raises(FileNotFoundError, match=r"is a folder; give the file of interactions in it \(README.txt, movi"):
        _ = data(tmp_path / "ml-20m").interactions
    packed = tmp_path / "ratings.csv.gz"
    packed.write_bytes(gzip.compress(b"1,10,4\n"))
    with pytest.raises(ValueError, match=r"ratings.csv.gz is not a text file .*decompress a .gz"):
        _ = data(packed).interactions
    plain = write_interactions(tmp_path / "plain.csv")
    quoted = tmp_path / "quoted.csv"
    quoted.write_text("".join(",".join(f'"{field}"' for field in line.split(",")) + "\n"
                              for line in plain.read_text().splitlines()))  # fmt: skip
    assert data(quoted).interactions.train.nnz == data(plain).interactions.train.nnz


def test_ids_are_read_as_they_are_written(tmp_path: Path) -> None:
    from datamodules.interactions import read_interactions

    path = tmp_path / "na.csv"  # ids that pandas would take for missing values
    path.write_text("user,item,rating\nalice,NA,4\nbob,null,5\nNone,x,4\n")
    frame = read_interactions(path)
    assert list(frame["user"]) == ["alice", "bob", "None"] and list(frame["item"]) == ["NA", "null", "x"]
    # item ids that are numbers in the first 2**18 rows (the C parser's block) and text after them, as Amazon's ISBNs
    # and ASINs: all text, leading zeros kept (they were ints in one block, without their zeros, and refused)
    path = tmp_path / "mixed.csv"
    path.write_text("".join(f"u{row // 64},{row % 64:04d}\n" for row in range(2**18)) + "u0,B0001\n")
    items = read_interactions(path, header=False)["item"]
    assert items.iloc[0] == "0000" and items.iloc[-1] == "B0001" and items.map(type).eq(str).all()


@pytest.mark.parametrize("separator", [",", "\t", "::", " "])
def test_numeric_ids_written_differently_stay_different_ids(tmp_path: Path, separator: str) -> None:
    from datamodules.interactions import read_interactions

    path = tmp_path / "zeros.csv"  # all ids are numbers: "007" and "7" are still two users, "0010" and "10" two items
    rows = [("007", "0010"), ("7", "10"), ("007", "+5"), ("7", "5"), ("8", "7.0"), ("8", "7")]
    path.write_text("".join(f"{user}{separator}{item}{separator}4\n" for user, item in rows))
    frame = read_interactions(path)
    assert list(zip(frame["user"], frame["item"])) == rows  # no duplicate pair, ids as written
    path.write_text("\ufeff012,10,4\n1,10,4\n2,11,5\n", encoding="utf-8")  # users only (the first, after a BOM)
    frame = read_interactions(path)
    assert list(frame["user"]) == ["012", "1", "2"] and list(frame["item"]) == [10, 10, 11]  # items stay numbers


def test_ids_of_more_than_64_bits_are_read_as_text(tmp_path: Path) -> None:
    from datamodules.interactions import read_interactions

    path = tmp_path / "accounts.csv"  # 26-digit user ids: Python ints to pandas, which .str could not strip
    users = [str(10**25 + user) for user in range(30)]
    path.write_text("".join(f"{user},{item},5\n" for user in users for item in range(8)))
    assert list(dict.fromkeys(read_interactions(path)["user"])) == users
    split = data(path, val_users=5, test_users=5, min_rating=None).interactions
    assert sorted(map(str, np.concatenate(list(split.users.values())))) == users


def test_ids_read_as_booleans_or_holding_the_separators_character_stay_as_written(tmp_path: Path) -> None:
    from datamodules.interactions import read_interactions

    path = tmp_path / "flags.csv"  # pandas reads True, true and TRUE as one boolean
    path.write_text("True,1,4\ntrue,2,4\nFalse,3,5\nTRUE,4,5\n")
    assert list(read_interactions(path)["user"]) == ["True", "true", "False", "TRUE"]
    path = tmp_path / "ratings.dat"  # user "a:1"'s item "007" is not user "b:2"'s item 7
    path.write_text("a:1::007::4\nb:2::7::4\nb:2::8::5\n")
    assert list(zip(*(read_interactions(path)[column] for column in ("user", "item")))) == [
        ("a:1", "007"), ("b:2", "7"), ("b:2", "8")
    ]  # fmt: skip
    path = tmp_path / "namespaced.csv"  # a CSV whose item ids hold "::", MovieLens-1M's separator
    path.write_text("1,ns::10\n1,ns::11\n2,ns::10\n")
    assert list(read_interactions(path)["item"]) == ["ns::10", "ns::11", "ns::10"]


@pytest.mark.parametrize(
    "layout",
    ["blank-line-2", "blank-lines-first-and-between", "trailing-blank-lines", "crlf", "bom", "bom-crlf-blank-line-2"],
)
def test_blank_lines_crlf_and_a_bom_read_as_the_plain_file_and_errors_name_the_files_line(
    tmp_path: Path, layout: str
) -> None:
    from datamodules.interactions import read_interactions

    lines = ["user,item,rating", "1,10,4", "2,11,5", "3,12,x"]  # line 4 of the plain file: rating 'x'
    blank_before = {"blank-line-2": {1: 1}, "blank-lines-first-and-between": {0: 2, 2: 1, 3: 1},
                    "bom-crlf-blank-line-2": {1: 1}}.get(layout, {})  # fmt: skip
    text = "".join("\n" * blank_before.get(index, 0) + line + "\n" for index, line in enumerate(lines))
    text += "\n\n" if layout == "trailing-blank-lines" else ""
    text = text.replace("\n", "\r\n") if "crlf" in layout else text
    path = tmp_path / "ratings.csv"
    path.write_bytes(("\ufeff" if "bom" in layout else "").encode() + text.encode())
    bad_line = 4 + sum(blank_before.values())  # as an editor numbers it
    with pytest.raises(ValueError, match=rf"ratings.csv line {bad_line}: rating 'x' is not a number"):
        read_interactions(path)
    path.write_bytes(path.read_bytes().replace(b"x", b"4"))
    frame = read_interactions(path)  # was: "no interactions after line 1, its header", or the first line "empty"
    assert frame.values.tolist() == [[1, 10, 4], [2, 11, 5], [3, 12, 4]]


def test_a_file_in_another_encoding_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"  # the first 8 KB (read before pandas) are ASCII
    path.write_bytes(
        b"".join(b"u%d,book%d,4\n" % (i // 10, i) for i in range(2000)) + "José,book1,4\n".encode("latin1")
    )
    with pytest.raises(ValueError, match=r"latin1.csv is not a text file in UTF-8 \(line 2001, byte 4: .*iconv"):
        _ = data(path).interactions


def test_a_test_file_of_numeric_items_beside_text_items_compares_them_as_ids(tmp_path: Path) -> None:
    base = write_interactions(tmp_path / "u1.base")
    base.write_text(base.read_text() + "u5,12a,4\n")  # one text item: the base file's items are read as text
    item = next(line for line in base.read_text().splitlines() if line.startswith("u1,")).split(",")[1]
    test = tmp_path / "u1.test"
    test.write_text(f"u1,{item},5\n")  # numbers only
    with pytest.raises(ValueError, match=rf"u1.test line 1 and .*u1.base line \d+ both hold user u1, item {item}"):
        _ = data(base, test_path=str(test), min_rating=None).interactions


def test_a_test_file_of_numeric_users_beside_text_users_holds_them_out(tmp_path: Path) -> None:
    base = write_interactions(tmp_path / "u1.base")
    lines = base.read_text().replace("u", "").splitlines()  # numeric users, and one named user below
    held = [line for line in lines if line.startswith("1,")][:2]
    alice = "".join(f"alice,{item},5\n" for item in range(0, 40, 4))
    base.write_text("".join(line + "\n" for line in lines if line not in held) + alice)
    test = tmp_path / "u1.test"
    test.write_text("".join(line + "\n" for line in held))  # numbers only: compared as the text of u1.base's ids
    split = data(base, test_path=str(test), min_rating=None).interactions  # a TypeError comparing "1" with 1
    assert list(split.users["test"]) == ["1"] and split.held_out["test"].sum() == 2
    assert "1" in set(split.users["train"]) and "1" not in set(split.users["val"])
    assert len(split.users["train"]) == 121 - 20  # all but the validation users, the test user among them


def test_a_file_of_text_only_lines_must_say_whether_it_has_a_header(tmp_path: Path) -> None:
    from datamodules.interactions import read_interactions

    path = tmp_path / "clicks.csv"
    path.write_text("alice,book1\nalice,book2\nbob,book1\n")  # text ids, no ratings: line 1 may be data or names
    with pytest.raises(ValueError, match=r"clicks.csv: lines 1 and 2 hold no number, .* set header: true or false"):
        read_interactions(path)
    assert list(read_interactions(path, header=False)["user"]) == ["alice", "alice", "bob"]
    assert list(read_interactions(path, header=True)["user"]) == ["alice", "bob"]
    path.write_text("user,item,rating\nalice,book1,4\nbob,book1,5\n")  # a number below names: a header
    assert list(read_interactions(path)["rating"]) == [4, 5]


def test_a_checkpoint_refuses_data_with_other_item_ids_or_training_users(tmp_path: Path) -> None:
    path = write_interactions(tmp_path / "ratings.csv")
    renumbered = tmp_path / "renumbered.csv"  # the same interactions under other item ids: as many items, other columns
    permutation = np.random.default_rng(1).permutation(1000)[:60]
    renumbered.write_text("".join(f"{u},{permutation[int(i)]},{r}\n" for u, i, r in
                                  (line.split(",") for line in path.read_text().splitlines())))  # fmt: skip
    module = data(path)

    def fresh() -> MultVAE:
        return MultVAE(input_shape=module.input_shape, latent_dim=4, hidden_dims=[8])

    trainer = make_trainer(tmp_path, limit_val_batches=0)
    trainer.fit(fresh(), datamodule=module)
    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)

    def run(fn: str, datamodule: InteractionsDataModule, loaded: bool = False) -> None:
        """``fn`` of the checkpoint on ``datamodule``: through ``ckpt_path``, or ``load_from_checkpoint`` first."""
        model, ckpt_path = (MultVAE.load_from_checkpoint(checkpoint), None) if loaded else (fresh(), checkpoint)
        getattr(make_trainer(tmp_path), fn)(model, datamodule=datamodule, ckpt_path=ckpt_path)

    columns = r"MultVAE was trained on other item columns than .*renumbered.csv gives: \d+ of its \d+ columns are other"
    users = r"MultVAE was trained on other users than this split's .*: seed=42 in the checkpoint, 7 here\)"
    for fn, loaded in (("test", False), ("test", True), ("predict", False), ("validate", True)):
        with pytest.raises(ValueError, match=columns):
            run(fn, data(renumbered), loaded)
        if fn != "predict":
            with pytest.raises(ValueError, match=users):
                run(fn, data(path, seed=7), loaded)
    run("predict", data(path, seed=7))  # recommendations for other users: columns are all that matter
    newer = tmp_path / "newer.csv"  # a later export: one more item, which a training user clicked
    newer.write_text(path.read_text() + f"{module.interactions.users['train'][0]},1000,5\n")
    with pytest.raises(ValueError, match=r"other item columns than .*newer.csv gives: 60 items in the checkpoint, 61 "
                                         r"here \(item 1000 is not in the checkpoint\)"):  # fmt: skip
        run("test", data(newer), loaded=True)
    run("test", data(path, batch_size=8), loaded=True)  # the same split, other loader settings
    with pytest.raises(ValueError, match=users):  # a resume
        make_trainer(tmp_path, max_epochs=2).fit(fresh(), datamodule=data(path, seed=7), ckpt_path=checkpoint)
    stored = torch.load(checkpoint, weights_only=True)
    assert stored["ae_lightning_interactions"]["items"] == module.interactions.items.tolist()
    del stored["ae_lightning_interactions"]  # a checkpoint of an earlier release: loaded, with a warning
    torch.save(stored, checkpoint)
    with pytest.warns(UserWarning, match="records neither its item ids nor its training users"):
        run("test", data(path))


def test_mult_models_refuse_a_datamodule_of_other_batches(tmp_path: Path) -> None:
    from datamodules import ArrayDataModule

    clicks = tmp_path / "clicks.npy"
    np.save(clicks, (np.random.default_rng(0).random((60, 12)) < 0.3).astype(np.float32))
    model = MultDAE(input_shape=(12,), latent_dim=3, hidden_dims=[5])
    expected = r"MultDAE ranks .* needs the \(clicks, held_out, user\) batches of an InteractionsDataModule, got Array"
    with pytest.raises(ValueError, match=expected):
        make_trainer(tmp_path).fit(model, datamodule=ArrayDataModule(str(clicks), batch_size=16))
    with pytest.raises(ValueError, match=r"scores \(4, 12\) and held_out \(4,\): expected both \[users, items\]"):
        recall_at_k(torch.rand(4, 12), torch.ones(4), 20)


def test_bad_split_settings_name_the_setting(tmp_path: Path) -> None:
    base, test = write_interactions(tmp_path / "u1.base"), tmp_path / "u1.test"
    lines = base.read_text().splitlines()
    base.write_text("\n".join(lines[2:]) + "\n")
    test.write_text("\n".join(lines[:2]) + "\n")  # two of user u0's interactions
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, got -1"):
        data(base, seed=-1)
    for rating in (math.nan, math.inf):  # NaN would keep no rating, and be refused as too few users
        with pytest.raises(ValueError, match=rf"min_rating must be a finite number > -inf, got {rating}"):
            data(base, min_rating=rating)
    with pytest.raises(ValueError, match=r"test_users=5 and test_path=.*u1.test both name the test users"):
        InteractionsDataModule(str(base), test_users=5, test_path=str(test))
    assert len(InteractionsDataModule(str(base), test_path=str(test)).interactions.users["test"]) == 1


def test_a_user_fraction_of_no_user_and_a_min_rating_that_keeps_nothing_name_the_setting(tmp_path: Path) -> None:
    path = write_interactions(tmp_path / "ratings.csv", n_users=30)
    for name in ("val_users", "test_users"):
        with pytest.raises(ValueError, match=rf"{name}=0.01 of the \d+ users of .*ratings.csv who can be drawn is 0"):
            data(path, **{name: 0.01}).setup("fit")
    with pytest.raises(ValueError, match=r"min_rating=6.0 keeps none of the \d+ interactions of .*ratings.csv, whose "
                                         r"ratings lie in \[1, 5\]"):  # fmt: skip
        data(path, min_rating=6.0).setup("fit")


@pytest.fixture(scope="module")
def mult_vae_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path]:
    """The command's settings of a tiny Mult-VAE, its ``ratings.csv`` and its ``last.ckpt`` after one epoch."""
    folder = tmp_path_factory.mktemp("mult_vae")
    path = write_interactions(folder / "ratings.csv")
    settings = ["--config", str(ROOT / "configs" / "mult_vae.yaml"), "--data.val_users", "20",
                "--data.test_users", "20", "--data.batch_size", "32", "--model.init_args.latent_dim", "4",
                "--model.init_args.hidden_dims", "[8]", "--trainer.max_epochs", "1",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]  # fmt: skip
    run_cli("fit", *settings, "--data.path", str(path), "--trainer.default_root_dir", str(folder / "run"))
    return settings, path, next((folder / "run").rglob("last.ckpt"))


@pytest.mark.parametrize(
    "case, message",
    [("fit-renamed-users", r"MultVAE was trained on other users than this split's .*renamed.csv' here\)"),
     ("test-other-seed", r"MultVAE was trained on other users than this split's .*seed=42 in the checkpoint, 7 here\)"),
     ("predict-other-items", r"MultVAE was trained on other item columns than .*renumbered.csv gives: 60 of its 60"),
     ("test-new-item", r"item columns than .*new_item.csv gives: 60 items in the checkpoint, 61 here \(item 1000"),
     ("fit-other-datamodule", r"MultDAE ranks .* needs the \(clicks, held_out, user\) batches of an Interactions"
                              r"DataModule, got ArrayDataModule")],
    ids=["fit-renamed-users", "test-other-seed", "predict-other-items", "test-new-item", "fit-other-datamodule"],
)  # fmt: skip
def test_the_command_refuses_data_a_mult_model_cannot_take_before_it_writes_any_file(
    case: str, message: str, mult_vae_run: tuple[list[str], Path, Path], tmp_path: Path
) -> None:
    settings, path, checkpoint = mult_vae_run
    lines = [line.split(",") for line in path.read_text().splitlines()]
    root = tmp_path / "run"
    if case == "fit-renamed-users":  # the same clicks, so the training loader's position fits: other user ids
        renamed = tmp_path / "renamed.csv"
        renamed.write_text("".join(f"v{u[1:]},{i},{r}\n" for u, i, r in lines))
        args = ["fit", *settings, "--data.path", str(renamed), "--trainer.max_epochs", "2"]
    elif case == "test-other-seed":
        args = ["test", *settings, "--data.path", str(path), "--data.seed", "7"]
    elif case == "predict-other-items":
        renumbered = tmp_path / "renumbered.csv"
        renumbered.write_text("".join(f"{u},{int(i) + 100},{r}\n" for u, i, r in lines))
        args = ["predict", *settings, "--data.path", str(renumbered)]
    elif case == "test-new-item":  # a later export: a training user clicked an item the checkpoint has no column for
        new_item = tmp_path / "new_item.csv"
        new_item.write_text(path.read_text() + "".join(f"u{user},1000,5\n" for user in range(120)))
        args = ["test", *settings, "--data.path", str(new_item)]
    else:
        np.save(tmp_path / "clicks.npy", (np.random.default_rng(0).random((60, 12)) < 0.3).astype(np.float32))
        args = ["fit", "--model", "MultDAE", "--model.init_args.latent_dim", "3", "--model.init_args.hidden_dims",
                "[5]", "--data", "ArrayDataModule", "--data.path", str(tmp_path / "clicks.npy")]  # fmt: skip
    if case != "fit-other-datamodule":
        args += ["--ckpt_path", str(checkpoint)]
    with pytest.raises(ConfigError, match=message):
        run_cli(*args, "--trainer.default_root_dir", str(root))
    assert not root.exists()  # no run folder, config.yaml or logs of the refused run


def test_the_benchmark_anneals_a_mult_vae_of_any_config_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("recommender_benchmark", ROOT / "benchmarks" / "recommender.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    (tmp_path / "configs").mkdir()  # a user's copy of configs/mult_vae.yaml under another name
    (tmp_path / "configs" / "my_vae.yaml").write_text((ROOT / "configs" / "mult_vae.yaml").read_text())
    monkeypatch.setattr(benchmark, "ROOT", tmp_path)
    path = write_interactions(tmp_path / "ratings.csv")
    benchmark.main(["--path", str(path), "--configs", "my_vae", "--epochs", "1", "--val_users", "20", "--test_users",
                    "20", "--batch_size", "32", "--anneal_steps", "7", "--root", str(tmp_path / "runs")])  # fmt: skip
    config = (tmp_path / "runs" / "my_vae-42" / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert "anneal_steps: 7\n" in config


def test_the_benchmark_passes_other_arguments_to_the_command(tmp_path: Path) -> None:
    # A file of clicks without ratings: the configs' min_rating 4 refuses it, naming --data.min_rating null, which the
    # benchmark refused as an unrecognized argument
    spec = importlib.util.spec_from_file_location("recommender_benchmark", ROOT / "benchmarks" / "recommender.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    text = write_interactions(tmp_path / "ratings.csv").read_text()
    path = tmp_path / "clicks.csv"
    path.write_text("".join(line.rsplit(",", 1)[0] + "\n" for line in text.splitlines()))
    table = benchmark.main(["--path", str(path), "--configs", "mult_dae", "--epochs", "1", "--val_users", "20",
                            "--test_users", "20", "--batch_size", "32", "--root", str(tmp_path / "runs"),
                            "--data.min_rating", "null", "--model.init_args.latent_dim", "8"])  # fmt: skip
    assert set(table) == {"mult_dae", "popularity"}
    config = (tmp_path / "runs" / "mult_dae-42" / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert "min_rating: null\n" in config and "latent_dim: 8\n" in config


def test_rankings_under_bf16_autocast_are_scored_in_float32_so_a_users_top_items_do_not_tie() -> None:
    # bf16 keeps 8 bits of mantissa: among thousands of items most of a user's top 100 logits would be equal, and the
    # ranking metrics (and the best checkpoint by val/ndcg_100) would depend on how topk orders ties
    torch.manual_seed(0)
    model = MultVAE(input_shape=(4000,), latent_dim=4, hidden_dims=(8,)).eval()
    clicks = (torch.rand(8, 4000) < 0.02).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model.item_scores(clicks)
    assert scores.dtype == torch.float32
    top = scores.topk(100, dim=-1).values
    assert all(len(row.unique()) == 100 for row in top)
    torch.testing.assert_close(scores, model.item_scores(clicks))  # as without autocast
