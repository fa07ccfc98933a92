"""Config values that arrive as strings from the command line: flags, whole numbers and nulls, checked with the key's name.

This module is at the bottom of the package (it imports nothing of it), so networks, engines, data and the
bundle glue all use the same two functions; :py:mod:`dagman_components.bundle_utils` re-exports them for the
bundle configs (``$dagman_components.bundle_utils.positive_int(@num_epochs, 'num_epochs')``).

``monai.utils.str2bool`` is not used for flags: it accepts neither ``None``/``"none"`` nor ``"on"``/``"off"``,
and its error does not name the config key.
"""

from __future__ import annotations

import math

__all__ = ["as_bool", "positive_int", "optional"]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "none", "null", "")


def as_bool(value: object, name: str = "value") -> bool:
    """A config flag as a bool, whether it came from YAML (``false``) or the command line.

    ``python -m monai.bundle run ... --resume false`` hands the *string* ``"false"`` to the config (the
    command-line parser only turns ``False``/``True`` into bools), and a non-empty string is truthy; so
    every flag a user may set on the command line goes through here. Raises ValueError naming ``name``
    for anything that is not a recognisable boolean.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")


def positive_int(value: object, name: str = "value") -> int:
    """A config value that must be a whole number >= 1 (e.g. ``num_epochs``), as an int.

    Raises ValueError naming ``name`` and the value otherwise (Ignite's own message, "Argument max_epochs is
    invalid", names neither the config key nor the value, and comes only after the data is cached).
    """
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    valid = not isinstance(number, bool) and isinstance(number, (int, float)) and math.isfinite(number)
    if not valid or number != int(number) or number < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}.")
    return int(number)


_NULL = ("none", "null", "")


def optional(value: object) -> object:
    """None for a config value that means "not set" (``null`` in YAML, or ``null``/``none`` on the command line), else the value.

    ``--view_region_size null`` reaches the config as the *string* ``"null"``, and ``--view_region_size None``
    is dropped by the command line altogether (the key keeps the config's value: measured, docs/results/study.md,
    ninth session), so keys whose null switches a feature off go through here.
    """
    if isinstance(value, str) and value.strip().lower() in _NULL:
        return None
    return value
