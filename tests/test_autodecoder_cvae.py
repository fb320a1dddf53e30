"""The auto-decoder's per-sample codes and the conditional VAE's labels, beyond the shared variant suite."""

from __future__ import annotations

import pytest
import torch

from ae_lightning import AutoDecoder

TINY = {"latent_dim": 4, "hidden_dims": [16]}


@pytest.mark.parametrize(
    "indices, named",
    [
        (
            torch.tensor([-1, 2]),
            r"sample index -1 \(torch.int64\)",
        ),  # the negative index, not the largest
        (torch.tensor([1, 4]), r"sample index 4 \(torch.int64\)"),
        (torch.tensor([0.0, 2.0]), r"sample index 2.0 \(torch.float32\)"),  # not an integer: no code to look up
    ],
)
def test_autodecoder_training_indices_outside_its_codes_are_an_error_naming_the_bad_one(indices, named) -> None:
    model = AutoDecoder(**TINY, num_codes=4).train()
    with pytest.raises(ValueError, match=rf"{named}, but AutoDecoder has num_codes=4 codes, for the integers 0..3"):
        model.loss_terms(torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), indices)
