"""Which encoder the probe reads: built from a self-describing encoder file, a pretrain config's ``encoder_def``, or defaults."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dagman_components.analysis.probe.blocks import DEFAULT_PREPROCESSING
from dagman_components.networks.sa_swin import (
    BUNDLE_ENCODER_ARGS,
    RUNTIME_OPTIONS,
    SASwinEncoder,
    encoder_args_with_defaults,
    make_encoder,
)

__all__ = ["encoder_kwargs_from_config", "preprocessing_from_config", "encoder_kwargs_from_encoder", "resolve_encoder_kwargs", "build_encoder", "DEFAULT_ENCODER_KWARGS"]

logger = logging.getLogger(__name__)

#: every architecture argument of the pretrain bundle's default encoder (``configs/train.yaml``'s ``encoder_def``:
#: :data:`~dagman_components.networks.BUNDLE_ENCODER_ARGS` over ``SASwinEncoder``'s defaults): the random-init
#: references' architecture, and that of a bare state dict when nothing else is given
DEFAULT_ENCODER_KWARGS: dict[str, Any] = encoder_args_with_defaults(**BUNDLE_ENCODER_ARGS)


#: encoder arguments that leave the architecture and the weights alone: training regularisation and how the stages run
_NOT_ARCHITECTURE = RUNTIME_OPTIONS


def _encoder_parameter_names() -> set[str]:
    return set(inspect.signature(SASwinEncoder.__init__).parameters) - {"self"}


def encoder_kwargs_from_config(config_file: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The ``encoder_def`` arguments of pretrain bundle config(s), resolved by ``monai.bundle.ConfigParser``.

    ``config_file`` is one path or a list layered in order (e.g. ``train.yaml`` then ``paper.yaml``).
    ``_target_`` and the arguments that do not change the architecture (``drop_path_rate``, ``use_checkpoint``,
    ``swin_forward``, ``compile_stages``, ``channels_last``) are dropped.

    Raises:
        ValueError: no ``encoder_def`` section, or arguments ``SASwinEncoder`` does not take.
    """
    from monai.bundle import ConfigParser

    files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(f) for f in config_file]
    parser = ConfigParser()
    parser.read_config(files)
    section = parser.get("encoder_def")
    if not isinstance(section, Mapping):
        raise ValueError(f"{files} have no 'encoder_def' section (the pretrain bundle's encoder).")
    kwargs = {}
    for key in section:
        if key.startswith("_") or key in _NOT_ARCHITECTURE:
            continue
        value = parser.get_parsed_content(f"encoder_def::{key}")
        kwargs[key] = list(value) if isinstance(value, tuple) else value
    unknown = sorted(set(kwargs) - _encoder_parameter_names())
    if unknown:
        raise ValueError(f"'encoder_def' of {files} has arguments SASwinEncoder does not take: {unknown}.")
    return kwargs


def preprocessing_from_config(config_file: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, list[float]]:
    """``{"spacing", "hu_range"}`` of pretrain bundle config(s): the probe must window and resample as pretraining did.

    An encoder pretrained on a soft-tissue window (e.g. ``hu_range: [-175, 250]``) sees other inputs than
    one pretrained on -1000..1000 HU; probing it on the other window measures the mismatch, not the encoder.
    Keys the configs do not set keep train.yaml's defaults ((2, 2, 2) mm, (-1000, 1000) HU).
    """
    from monai.bundle import ConfigParser

    files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(f) for f in config_file]
    parser = ConfigParser()
    parser.read_config(files)
    result = {k: list(v) for k, v in DEFAULT_PREPROCESSING.items()}
    for key in result:
        if key in parser:
            value = parser.get_parsed_content(key)
            if len(value) != len(result[key]):
                raise ValueError(f"'{key}' of {files} must have {len(result[key])} values, got {value!r}.")
            result[key] = [float(v) for v in value]
    return result


def encoder_kwargs_from_encoder(encoder: SASwinEncoder) -> dict[str, Any]:
    """The architecture arguments a built ``encoder`` was constructed with (``SASwinEncoder.encoder_args``), for random-init references."""
    return dict(encoder.encoder_args)


def resolve_encoder_kwargs(
    encoder_kwargs: Mapping[str, Any] | None, config_file: str | os.PathLike | Sequence[str] | None
) -> dict[str, Any]:
    """The ``SASwinEncoder`` architecture arguments: :py:data:`DEFAULT_ENCODER_KWARGS`, then ``config_file``'s
    ``encoder_def``, then ``encoder_kwargs`` (None values ignored); runtime options dropped, tuples as lists.

    Raises:
        ValueError: an argument ``SASwinEncoder`` does not take.
    """
    kwargs = dict(DEFAULT_ENCODER_KWARGS)
    if config_file is not None:
        kwargs.update(encoder_kwargs_from_config(config_file))
    kwargs.update({k: v for k, v in (encoder_kwargs or {}).items() if v is not None})
    for key in _NOT_ARCHITECTURE:
        kwargs.pop(key, None)
    unknown = sorted(set(kwargs) - _encoder_parameter_names())
    if unknown:
        raise ValueError(
            f"unknown encoder arguments {unknown}; SASwinEncoder takes {sorted(_encoder_parameter_names())}."
        )
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}


def build_encoder(
    encoder_path: str | os.PathLike | None = None,
    encoder_kwargs: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike | Sequence[str] | None = None,
) -> tuple[SASwinEncoder, dict[str, Any]]:
    """An ``SASwinEncoder`` (eval mode, CPU) and its architecture arguments, optionally loaded from ``encoder_path``.

    An encoder file the pretrain bundle writes carries its architecture: it is built from the file, and any
    ``encoder_kwargs`` must agree with it. A bare state dict (older files) and a random initialisation
    (no ``encoder_path``) take :py:data:`DEFAULT_ENCODER_KWARGS` (train.yaml's), updated by the ``encoder_def``
    of ``config_file`` (:py:func:`encoder_kwargs_from_config`), updated by ``encoder_kwargs`` (None values ignored).

    Raises:
        FileNotFoundError: ``encoder_path`` does not exist.
        ValueError: ``encoder_path`` holds another architecture (the message names the file and the keys).
    """
    kwargs = resolve_encoder_kwargs(encoder_kwargs, config_file)
    if encoder_path is None:
        encoder = SASwinEncoder(**kwargs)
    else:
        explicit = {k: v for k, v in (encoder_kwargs or {}).items() if v is not None and k not in _NOT_ARCHITECTURE}
        encoder = make_encoder(encoder_path, kwargs, **explicit)
        logger.info(f"probe: loaded encoder '{encoder_path}'")
    return encoder.eval(), dict(encoder.encoder_args)


