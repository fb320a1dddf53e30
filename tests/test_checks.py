import math
import pickle
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pytest
from tiny_runs import ROOT, run_cli

import ae_lightning
from ae_lightning.blocks.spatial import SpatialEncoder
from ae_lightning.training.disentanglement import DisentanglementMetrics
from datamodules.checks import Fraction, PositiveInt, check_arguments, check_number, number_type
from datamodules.interactions import InteractionsDataModule


@pytest.mark.parametrize(
    "value, interval, integer",
    [(0.0, "[0, 1)", False), (0.999, "[0, 1)", False), (1e-9, "(0, inf)", False), (1, "[1, inf)", True),
     (1.0, "(0, 1]", False), (-5, "(-inf, 0]", True)],
)  # fmt: skip
def test_a_value_inside_the_interval_passes(value, interval: str, integer: bool) -> None:
    check_number("x", value, interval, integer=integer)


@pytest.mark.parametrize(
    "value, interval, integer, message",
    [
        (1.0, "[0, 1)", False, r"x must lie in \[0, 1\), got 1.0"),
        (0.0, "(0, inf)", False, "x must be > 0, got 0.0"),
        (-0.5, "[0, inf)", False, "x must be >= 0, got -0.5"),
        (0, "[1, inf)", True, "x must be an integer >= 1, got 0"),
        (2.0, "[1, inf)", True, "x must be an integer >= 1, got 2.0"),  # a float where an int is expected
        (True, "[0, inf)", True, "x must be an integer >= 0, got True"),  # a bool is not a number here
        (math.nan, "[0, inf)", False, "x must be a finite number >= 0, got nan"),
        (math.inf, "(0, inf)", False, "x must be a finite number > 0, got inf"),
        (-math.inf, "(-inf, 1]", False, "x must be a finite number <= 1, got -inf"),
        (math.nan, "[0, 1)", False, r"x must be a finite number in \[0, 1\), got nan"),
        (math.nan, "[0, inf]", False, "x must be a number >= 0, got nan"),  # an interval that holds infinity
        ("3", "[0, inf)", False, "x must be >= 0, got '3'"),
        (1, "(-inf, 0]", True, "x must be an integer <= 0, got 1"),
    ],
)
def test_a_value_outside_the_interval_is_an_error_naming_it(value, interval: str, integer: bool, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_number("x", value, interval, integer=integer)


def test_a_malformed_interval_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"interval must look like '\[0, 1\)' or '\(0, inf\)', got '0..1'"):
        check_number("x", 0.5, "0..1")


def constrained(rate: Fraction = 0.1, sizes: Sequence[PositiveInt] = (1,), mode: Literal["a", "b"] | None = None):
    """A function whose signature declares its constraints."""


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rate": 1.0}, r"rate must lie in \[0, 1\), got 1.0"),
        ({"sizes": [3, 0]}, r"each of sizes must be an integer >= 1, got \[3, 0\]"),
        ({"mode": "c"}, "mode must be one of 'a', 'b', got 'c'"),
    ],
)
def test_a_signature_constraint_is_an_error_naming_the_argument(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_arguments(values, constrained)
    check_arguments({"rate": 0.0, "sizes": [2], "mode": None}, constrained)  # the bounds and None are allowed


def channels_of(channels: Literal[1, 3] = 3):
    """A function with integer choices."""


@pytest.mark.parametrize("value", [3.0, True, 2, "3"])
def test_an_integer_choice_refuses_a_float_or_a_bool_equal_to_it(value) -> None:
    # 3.0 == 3 and True == 1: from Python, channels=3.0 passed and then broke the network, True read as gray
    with pytest.raises(ValueError, match=re.escape(f"channels must be one of 1, 3, got {value!r}")):
        check_arguments({"channels": value}, channels_of)
    check_arguments({"channels": np.int64(3)}, channels_of)  # an integer of another type is that choice


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ae_lightning.InfoVAE(input_shape=[1, 8, 8], alpha=2.0), r"alpha must be <= 1, got 2.0"),
        (lambda: ae_lightning.BetaTCVAE(input_shape=[1, 8, 8], dataset_size=0),
         r"dataset_size must be an integer >= 1, got 0"),
        (lambda: ae_lightning.IAFVAE(input_shape=[1, 8, 8], flow_hidden_dims=[8, 0]),
         r"each of flow_hidden_dims must be an integer >= 1, got \[8, 0\]"),
        (lambda: SpatialEncoder(3, [8], dropout=1.0), r"dropout must lie in \[0, 1\), got 1.0"),
        (lambda: InteractionsDataModule("ratings.csv", val_users=0),
         r"val_users must be an integer >= 1 or lie in \(0, 1\), got 0"),
        (lambda: DisentanglementMetrics(num_points=5), r"num_points must be an integer >= 10, got 5"),
        # a TypedDict of settings: a misspelt key was a bare TypeError, a word for a bool taken as true
        (lambda: ae_lightning.Autoencoder(input_shape=[3, 8, 8], network="spatial", hidden_dims=[8],
                                          spatial={"num_res_block": 1}),
         r"spatial must be a mapping of the keys 'num_res_blocks', 'attention', got \{'num_res_block': 1\}"),
        (lambda: ae_lightning.Autoencoder(input_shape=[3, 8, 8], network="spatial", hidden_dims=[8],
                                          spatial={"attention": "yes"}),
         r"spatial must have attention be a bool, got \{'attention': 'yes'\}"),
        (lambda: ae_lightning.Autoencoder(input_shape=[3, 8, 8], network="spatial", hidden_dims=[8],
                                          spatial={"num_res_blocks": 0}),
         r"spatial must have num_res_blocks be an integer >= 1, got \{'num_res_blocks': 0\}"),
    ],
)  # fmt: skip
def test_the_variants_and_their_parts_refuse_what_their_signatures_exclude(build, message: str) -> None:
    """From Python as from the command (whose --help shows the same ranges): the signature is the one check."""
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "argument, value, message",
    [("beta", "nan", "beta must be a finite number >= 0, got nan"),
     ("gaussian_std", "inf", "gaussian_std must be a finite number > 0 or one of 'learned', 'learned_per_pixel', got "
                             "inf")],
)  # fmt: skip
def test_the_command_refuses_nan_and_infinity_naming_the_argument_and_a_finite_number(
    argument: str, value: str, message: str, tmp_path
) -> None:
    with pytest.raises(ValueError, match=re.escape(f"--model ae_lightning.VAE: {message}")):
        run_cli("fit", "--config", "configs/vae.yaml", f"--model.init_args.{argument}", value,
                "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_number_types_pickle_by_name_even_where_the_module_declaring_them_is_not_imported() -> None:
    # ddp_spawn pickles the command's parser, whose signatures hold these types, for processes that start afresh.
    from ae_lightning.training.disentanglement import AtLeastTen

    types = [PositiveInt, Fraction, AtLeastTen, number_type("(-0.5, 2]")]
    assert [pickle.loads(pickle.dumps(t)) for t in types] == types
    assert number_type("(-0.5, 2]") is types[-1]  # one type per interval
    code = (
        "import pickle, sys; types = pickle.loads(sys.stdin.buffer.read()); "
        "print('|'.join(t.__name__ for t in types), any(m.startswith('ae_lightning') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(types), capture_output=True, cwd=ROOT,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().strip() == "int >= 1|float in [0, 1)|int >= 10|float in (-0.5, 2] False"
