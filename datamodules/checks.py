"""Argument constraints, declared once in the signatures (a number type of :func:`number_type` or a ``Literal``,
alone or in a ``Sequence``, ``Optional`` or ``TypedDict``) and enforced by :func:`check_arguments` for the command
and Python callers alike, naming the argument, the value and what was expected. Imports neither ``datamodules`` nor
``ae_lightning``."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import re
import typing
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jsonargparse.typing import register_type

# Each constrained number type and its interval, integer or not.
INTERVALS: dict[type, tuple[str, bool]] = {}


def number_type(interval: str, integer: bool = False) -> type:
    """A number type for signatures, e.g. ``number_type("[0, 1)")``: ``--help`` names its range (``float in [0, 1)``),
    :func:`check_arguments` checks it when the class is built, and parsed values are plain ``int``/``float``. One type
    per interval, this module's attribute named after it (``int_ge_0_lt_inf``), so that it pickles."""
    _parse(interval)  # a malformed interval is refused, naming it
    opening, low, high, closing = _INTERVAL.match(interval).groups()
    sides = f"{'ge' if opening == '[' else 'gt'}_{low}_{'le' if closing == ']' else 'lt'}_{high}"
    name = f"{'int' if integer else 'float'}_" + sides.replace("-", "m").replace(".", "p")
    if name in globals():
        return globals()[name]
    base = int if integer else float
    cls = type(f"{base.__name__} {_describe(interval, False).removeprefix('be ').removeprefix('lie ')}", (base,), {})
    cls.__qualname__ = name

    def parse(value: Any) -> int | float:
        value = base(value) if isinstance(value, str) else value  # from the command line
        if not _is_number(value, integer):  # NaN and infinities too: the class's check names the argument
            raise ValueError(f"the value must be {'an integer' if integer else 'a number'}, got {value!r}")
        return base(value)

    globals()[name] = cls
    # dumped (config.yaml) by parse too: int would write 0.2 of a union PositiveInt | OpenUnitInterval as 0
    register_type(cls, serializer=parse, deserializer=parse, type_check=lambda value, _: False)
    INTERVALS[cls] = (interval, integer)
    return cls


def __getattr__(name: str) -> type:
    """The number type named ``name`` (e.g. ``int_ge_10_lt_inf``), made on demand, so that unpickling finds it."""
    match = _TYPE_NAME.fullmatch(name)
    if match is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    kind, opening, low, closing, high = match.groups()
    low, high = (bound.replace("m", "-").replace("p", ".") for bound in (low, high))
    interval = f"{'[' if opening == 'ge' else '('}{low}, {high}{']' if closing == 'le' else ')'}"
    return number_type(interval, integer=kind == "int")


_INTERVAL = re.compile(r"^([\[(])\s*(-?inf|-?[\d.]+)\s*,\s*(-?inf|-?[\d.]+)\s*([\])])$")
_TYPE_NAME = re.compile(r"(int|float)_(ge|gt)_(m?inf|m?[\dp]+)_(le|lt)_(m?inf|m?[\dp]+)")


def check_number(name: str, value: object, interval: str, *, integer: bool = False) -> None:
    """Raise a ValueError naming ``name`` (as the user writes it) unless ``value`` is a number (an ``int`` if
    ``integer``; never a bool) in ``interval``, e.g. ``"[0, 1)"`` or ``"(0, inf)"``."""
    low, high, low_closed, high_closed = _parse(interval)
    ok = _is_number(value, integer) and (low <= value if low_closed else low < value)
    if not (ok and (value <= high if high_closed else value < high)):
        raise ValueError(f"{name} must {_describe(interval, integer, value)}, got {value!r}")


def _is_number(value: object, integer: bool) -> bool:
    return isinstance(value, Integral if integer else Real) and not isinstance(value, bool)  # NumPy's too


def _parse(interval: str) -> tuple[float, float, bool, bool]:
    match = _INTERVAL.match(interval)
    if match is None:
        raise ValueError(f"interval must look like '[0, 1)' or '(0, inf)', got {interval!r}")
    opening, low, high, closing = match.groups()
    return float(low), float(high), opening == "[", closing == "]"


def _describe(interval: str, integer: bool, value: object = None) -> str:
    """What ``interval`` asks of a value, e.g. ``be >= 0``; ``be a finite number >= 0`` for NaN or infinity."""
    low, high, low_closed, high_closed = _parse(interval)
    prefix = "be an integer " if integer else "be "
    if not integer and isinstance(value, Real) and not math.isfinite(value):
        holds_infinity = (low_closed and math.isinf(low)) or (high_closed and math.isinf(high))
        prefix = "be a number " if holds_infinity else "be a finite number "
    if math.isinf(high):
        return f"{prefix}{'>=' if low_closed else '>'} {low:g}"
    if math.isinf(low):
        return f"{prefix}{'<=' if high_closed else '<'} {high:g}"
    return f"{prefix}in {interval}" if prefix != "be " else f"lie in {interval}"


def check_arguments(values: Mapping[str, Any], *functions: Callable) -> None:
    """Raise a ValueError for the first of ``values`` that breaks the constraint its parameter declares in one of
    ``functions``."""
    for function in functions:
        for name, annotation in _annotations(function).items():
            if name in values and (expected := _expected(values[name], annotation)) is not None:
                subject = f"each of {name}" if expected.startswith("each ") else name
                raise ValueError(f"{subject} must {expected.removeprefix('each ')}, got {values[name]!r}")


def check_init_arguments(cls: type, values: Mapping[str, Any]) -> None:
    """:func:`check_arguments` against the ``__init__`` of ``cls`` and of each of its bases."""
    check_arguments(values, *(base.__init__ for base in cls.__mro__ if "__init__" in vars(base)))


@functools.cache
def _annotations(function: Callable) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(function)
    except (NameError, TypeError):  # an annotation this module cannot resolve constrains nothing here
        return {}
    names = inspect.signature(function).parameters
    return {name: hint for name, hint in hints.items() if name in names and _constrains(hint)}


def _constrains(annotation: Any) -> bool:
    if isinstance(annotation, type) and annotation in INTERVALS or typing.get_origin(annotation) is Literal:
        return True
    return typing.is_typeddict(annotation) or any(
        _constrains(arg) for arg in typing.get_args(annotation) if not isinstance(arg, list)
    )


def _expected(value: Any, annotation: Any) -> str | None:
    """None if ``value`` fits ``annotation``'s constraints, else what was expected, e.g. ``"be >= 0"``."""
    if isinstance(annotation, type) and annotation in INTERVALS:
        interval, integer = INTERVALS[annotation]
        with contextlib.suppress(ValueError):
            check_number("", value, interval, integer=integer)
            return None
        return _describe(interval, integer, value)
    if typing.is_typeddict(annotation):
        return _expected_entries(value, annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return None if any(_is_choice(value, choice) for choice in args) else "be one of " + ", ".join(map(repr, args))
    if origin in (Sequence, list, tuple) or (isinstance(origin, type) and issubclass(origin, Sequence)):
        if isinstance(value, Sequence) and not isinstance(value, str):
            expected = next((e for item in value if (e := _expected(item, args[0])) is not None), None)
            return None if expected is None else f"each {expected}"
        return "be a sequence (list or tuple)"
    expectations = []
    for member in args:  # a union: the value fits one of its members
        if member is type(None) or not _constrains(member):
            if value is None if member is type(None) else isinstance(member, type) and isinstance(value, member):
                return None
        elif (expected := _expected(value, member)) is None:
            return None
        else:
            expectations.append(expected)
    return " or ".join(e.removeprefix("be ") if i else e for i, e in enumerate(expectations)) or None


def _expected_entries(value: Any, annotation: Any) -> str | None:
    """None if ``value`` is a mapping of ``annotation``'s (a ``TypedDict``) keys and value types, else what was
    expected, naming the first key that differs."""
    hints = typing.get_type_hints(annotation)
    if not isinstance(value, Mapping) or not set(value) <= set(hints) or not annotation.__required_keys__ <= set(value):
        required = f" (required: {', '.join(map(repr, sorted(annotation.__required_keys__)))})"
        return f"be a mapping of the keys {', '.join(map(repr, hints))}" + required * bool(annotation.__required_keys__)
    for key, item in value.items():
        hint = hints[key]
        if _constrains(hint):
            expected = _expected(item, hint)
        elif isinstance(hint, type) and not isinstance(item, hint) or hint is not bool and isinstance(item, bool):
            expected = f"be a {hint.__name__}"
        else:
            continue
        if expected is not None:
            return f"have {key} {expected.replace('each ', 'each of which must ', 1)}"
    return None


def _is_choice(value: Any, choice: Any) -> bool:
    """``value`` is ``choice`` and of its kind: 3.0 and True are not the choice 3 or 1, as they are by ``==``."""
    if isinstance(choice, (bool, np.bool_)) != isinstance(value, (bool, np.bool_)):
        return False
    return value == choice and (isinstance(value, Integral) or not isinstance(choice, Integral))


def plain_hyperparameters(hparams: MutableMapping[str, Any]) -> None:
    """Replace in ``hparams`` each path by its string, each NumPy scalar or array by Python numbers and each tuple by a
    list (also inside lists and dicts), so that checkpoints load with ``torch.load(weights_only=True)`` and the
    loggers' ``hparams.yaml`` with ``yaml.safe_load``."""
    hparams.update({name: _plain(value) for name, value in hparams.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(map(_plain, value))
    return {key: _plain(item) for key, item in value.items()} if type(value) is dict else value


def byte_count(value: str | int | None) -> int:
    """``value`` in bytes: an integer, or a number with a unit (``64MB``, ``1.5G``: powers of 1000, as litdata's)."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgt]?)b?", str(value).strip().lower())
    count = int(float(match[1]) * 1000 ** " kmgt".index(match[2] or " ")) if match else 0
    if count < 1:
        raise ValueError(f"chunk_bytes must be a positive number of bytes, alone or with a unit (64MB), got {value!r}")
    return count


PositiveInt = number_type("[1, inf)", integer=True)
NonNegativeInt = number_type("[0, inf)", integer=True)
AtLeastTwo = number_type("[2, inf)", integer=True)
PositiveFloat = number_type("(0, inf)")
NonNegativeFloat = number_type("[0, inf)")
OpenUnitInterval = number_type("(0, 1)")
Fraction = number_type("[0, 1)")
Seed = number_type("[0, 4294967295]", integer=True)  # scikit-learn's split draws take seeds below 2**32


def check_shared(split: str, samples: int, world_size: int, fix: str = "", where: str = "") -> None:
    """Raise a ValueError naming ``split`` (``train``, ``val``, ...; empty: unnamed) and ``where`` it is stored if its
    ``samples`` are fewer than the ``world_size`` processes, each of which needs at least one; ``fix``: how to get a
    larger split (default: more data, a larger ``--data.val_fraction`` for ``val``)."""
    if samples < world_size:
        more = " (a larger --data.val_fraction)" if split == "val" else ""
        fix = fix or f"more {split + ' ' if split else ''}data{more}"
        raise ValueError(
            f"{f'the {split} split' if split else 'a split'}{f' ({where})' if where else ''} of {samples} samples "
            f"cannot be shared by {world_size} processes, each of which needs at least one: use at most {samples} "
            f"processes (--trainer.devices, --trainer.num_nodes), or {fix}"
        )


PROC_CGROUP = Path("/proc/self/cgroup")  # this process's cgroups, one line each: ``id:controllers:path``
CGROUP_ROOT = Path("/sys/fs/cgroup")  # where the kernel mounts them (version 1: a folder per controller)


def usable_memory() -> tuple[int, bool]:
    """The bytes of memory this process may use, and whether a cgroup caps them: this machine's memory, or less where
    a memory limit of its cgroup or of one above it (a SLURM job's ``--mem``, a container's limit) says so."""
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:  # not Linux
        return machine, False
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not controllers:  # version 2: one hierarchy
            root, name = CGROUP_ROOT, "memory.max"
        elif "memory" in controllers.split(","):
            root, name = CGROUP_ROOT / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = root / path.lstrip("/")
        for level in (folder, *folder.parents[: len(folder.parents) - len(root.parents)]):  # up to the root
            with contextlib.suppress(OSError, ValueError):  # not mounted here (a container's own root), or "max"
                limits.append(int((level / name).read_text()))
    return min([machine, *limits]), min(limits, default=machine) < machine


def check_fits_memory(needed: int, what: str, fix: str) -> None:
    """Raise a ValueError naming ``what``, ``needed`` bytes and ``fix`` if over half of :func:`usable_memory`."""
    available, capped = usable_memory()
    if needed > available / 2:
        whose = "the" if capped else "this machine's"
        limit = " this process may use (its cgroup's memory limit, e.g. a SLURM job's --mem)" if capped else ""
        raise ValueError(
            f"{what} need about {needed / 1e9:.1f} GB of memory, more than half of {whose} {available / 1e9:.0f} GB"
            f"{limit}: {fix}"
        )


def init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The named arguments ``cls(...)`` takes: its ``__init__``'s and, while an ``__init__`` passes ``**kwargs`` on,
    those of the next base's (a subclass that forwards ``data_dir`` through ``**kwargs`` takes ``data_dir``)."""
    found: dict[str, inspect.Parameter] = {}
    for init in (vars(base)["__init__"] for base in cls.__mro__ if "__init__" in vars(base)):
        parameters = list(inspect.signature(init).parameters.values())[1:]  # without self
        for parameter in parameters:
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                found.setdefault(parameter.name, parameter)
        if all(parameter.kind is not parameter.VAR_KEYWORD for parameter in parameters):
            break
    return found
