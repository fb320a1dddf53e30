"""The few Lightning internals ae-lightning relies on, where Lightning offers no public route.

Each use has a test in ``tests/test_lightning_internals.py`` that fails with a clear message when a Lightning release
changes it; ``pyproject.toml`` bounds Lightning to the releases the suite ran on. The uses:

* :func:`every_n_train_steps` reads ``ModelCheckpoint._every_n_train_steps`` (the fast path checks it);
* :func:`stored_loader_states` reads where a checkpoint keeps the training loader's state (the command refuses a
  resume on other data before it creates anything);
* ``AutoencoderCLI._parse_ckpt_path`` (:mod:`ae_lightning.cli`) overrides LightningCLI's private step that would
  overwrite the user's model settings with a checkpoint's hyperparameters.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint


def every_n_train_steps(checkpoint: ModelCheckpoint) -> int:
    """The ``every_n_train_steps`` a ``ModelCheckpoint`` was built with (0 when it saves by epoch or time).

    ModelCheckpoint keeps its constructor argument only as the private ``_every_n_train_steps``.
    """
    try:
        return int(checkpoint._every_n_train_steps or 0)
    except AttributeError:
        raise RuntimeError(_changed("ModelCheckpoint no longer keeps `_every_n_train_steps`")) from None


def stored_loader_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The training loaders' ``state_dict``s in a checkpoint of ``fit`` (empty if it holds none).

    Lightning keeps them under ``loops/fit_loop/state_dict/combined_loader``, a layout it does not document.
    """
    loops = checkpoint.get("loops")
    if loops is None:
        return []
    try:
        states = loops["fit_loop"]["state_dict"].get("combined_loader", [])
    except (KeyError, TypeError, AttributeError):
        raise RuntimeError(_changed("checkpoints no longer keep loops/fit_loop/state_dict")) from None
    return [state for state in states if isinstance(state, dict)]


def _changed(what: str) -> str:
    import lightning

    return (
        f"Lightning {lightning.__version__} changed an internal that ae-lightning uses: {what}. Install a Lightning "
        "release within the bounds of ae-lightning's pyproject.toml, or report this with the Lightning version"
    )


__all__ = ["every_n_train_steps", "stored_loader_states"]
