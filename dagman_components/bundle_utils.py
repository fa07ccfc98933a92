"""Helpers that the bundle configs call: where the bundle lives, and which data to train on.

The top layer of the package (see ``docs/design.md``, "Layers"): it may import every other module, and no module
below imports it. ``as_bool`` / ``positive_int`` live in :py:mod:`dagman_components.options` and
``prepare_dataset`` in :py:mod:`dagman_components.data.datalist`; they are re-exported here because the bundle
configs call them as ``dagman_components.bundle_utils.*``.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dagman_components.data.datalist import prepare_dataset
from dagman_components.errors import install_excepthook
from dagman_components.options import as_bool, positive_int

__all__ = ["METADATA_SCHEMA", "as_bool", "locate_bundle_root", "positive_int", "prepare_dataset"]

# every bundle config imports this module: a failed `python -m monai.bundle run` then ends with the project's
# message (file, key or value at fault), not with MONAI's "Failed to evaluate ConfigExpression" wrapper
install_excepthook()

#: JSON schema for the bundles' ``metadata.json`` that works offline: ``monai.bundle verify_metadata``
#: skips its download when ``--filepath`` names an existing file, so pass this path there.
METADATA_SCHEMA = str(Path(__file__).resolve().parent / "resources" / "bundle_metadata_schema.json")


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
