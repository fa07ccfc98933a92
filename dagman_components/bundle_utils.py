"""Helpers that the bundle configs call: where the bundle lives, and which data to train on."""

from __future__ import annotations

import ast
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from dagman_components.errors import install_excepthook

__all__ = ["METADATA_SCHEMA", "as_bool", "locate_bundle_root", "positive_int", "prepare_dataset"]

logger = logging.getLogger(__name__)

# every bundle config imports this module: a failed `python -m monai.bundle run` then ends with the project's
# message (file, key or value at fault), not with MONAI's "Failed to evaluate ConfigExpression" wrapper
install_excepthook()

#: JSON schema for the bundles' ``metadata.json`` that works offline: ``monai.bundle verify_metadata``
#: skips its download when ``--filepath`` names an existing file, so pass this path there.
METADATA_SCHEMA = str(Path(__file__).resolve().parent / "resources" / "bundle_metadata_schema.json")


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


def _config_files_from_argv(argv: Sequence[str]) -> list[str]:
    """The ``--config_file`` value(s) of a ``python -m monai.bundle run`` command line."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        if value.strip().startswith("["):
            try:
                return [str(v) for v in ast.literal_eval(value)]
            except (ValueError, SyntaxError):
                return [v.strip(" '\"") for v in value.strip("[]").split(",")]
        return [value]
    return []


def locate_bundle_root(bundle_name: str, argv: Sequence[str] | None = None, cwd: str | None = None) -> str:
    """The folder of bundle ``bundle_name``, wherever ``monai.bundle run`` was launched from.

    MONAI does not set ``bundle_root``; ``"."`` would be the launch directory, so launching from
    the repository root would write into it. Looked up in order: the folder above ``configs/`` of
    the first ``--config_file`` on the command line; the launch directory if it is the bundle
    (has ``configs/``); ``bundles/<bundle_name>`` under it; else the launch directory.
    ``--bundle_root`` on the command line (and MONAI Label) overrides this entirely.
    """
    argv = sys.argv if argv is None else argv
    cwd = os.getcwd() if cwd is None else cwd
    for config_file in _config_files_from_argv(argv):
        config_dir = Path(cwd, config_file).resolve().parent
        if config_dir.name == "configs":
            return str(config_dir.parent)
    here = Path(cwd)
    if (here / "configs").is_dir() and here.name == bundle_name:
        return str(here)
    candidate = here / "bundles" / bundle_name
    if candidate.is_dir():
        return str(candidate.resolve())
    return str(here)


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def prepare_dataset(
    dataset_dir: str,
    datalist: str | None = None,
    phantom_dir: str | None = None,
    phantom_volumes: int = 8,
    phantom_shape: Sequence[int] = (112, 112, 96),
    seed: int = 0,
    data_list_key: str = "training",
    on_error: str = "raise",
) -> list[dict]:
    """The training items of a bundle: the embedded phantom set, or the user's data.

    When ``dataset_dir`` is the bundle's default ``phantom_dir`` and no ``datalist`` is given, the
    synthetic phantom dataset is generated there once (rank 0 under DDP, the others wait) and its
    datalist is used. Otherwise ``dataset_dir`` is a folder of NIfTI files or, with ``datalist``,
    the base folder of a Decathlon-style JSON; a missing/empty folder or a corrupt/2D image is
    an error naming it (``on_error="skip"`` logs a warning and drops bad images instead).
    """
    from dagman_components.data import generate_phantom_dataset, load_datalist, validate_images

    is_default = phantom_dir is not None and datalist is None and Path(dataset_dir).resolve() == Path(phantom_dir).resolve()
    if is_default:
        if _is_rank_zero():
            datalist = str(
                generate_phantom_dataset(phantom_dir, num_volumes=phantom_volumes, shape=tuple(phantom_shape), seed=seed)
            )
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        datalist = str(Path(phantom_dir) / "dataset.json")
        logger.info(f"training on the embedded phantom dataset {datalist}")
    items = load_datalist(dataset_dir=dataset_dir, datalist=datalist, data_list_key=data_list_key)
    items = validate_images(items, on_error=on_error)
    logger.info(f"{len(items)} training volumes from {datalist or dataset_dir}")
    return items
