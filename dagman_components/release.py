"""Self-contained release zips of the bundles: ``python -m dagman_components.release --output_dir dist``.

Each ``<output_dir>/<zoo_name>_v<version>.zip`` holds one top folder ``<zoo_name>/`` (the layout of
``monai.bundle download`` and of a MONAI Label app's ``model/`` folder) that works without installing
this project:

- ``dagman_components/`` is vendored into the bundle root (python files and ``resources/``). MONAI
  resolves a config's ``$import`` lines on the first reference it resolves (``initialize``), before
  ``ConfigWorkflow.run`` appends the bundle root to ``sys.path``; so the vendored package is found when
  the bundle root is on ``sys.path`` from the start: launched from the bundle folder as the model zoo
  documents (``cd <bundle> && python -m monai.bundle run --config_file configs/inference.yaml``: ``-m``
  puts the launch directory first), in MONAI Label (``BundleInferTask`` inserts the bundle folder at
  ``sys.path[0]`` before it parses the config), or with ``PYTHONPATH=<bundle>`` from anywhere else.
- ``models/model.pt``: the bundle's trained weights; a downstream bundle also carries the encoder it
  was trained from as ``models/encoder/encoder.pt``, and its configs point ``pretrained_path`` (train,
  evaluate) and ``encoder_checkpoint`` (inference) there instead of ``../pretrain/models/model.pt``. The
  encoder sits in a subfolder because MONAI Label offers every ``models/*.pt`` as a ``model_filename``
  choice for inference and training, and loads the one picked with ``strict=False``: an encoder file
  there would run the network with random decoder weights after a mere warning.
- ``large_files.yml``: URL and md5 of each weight file, for hosting the weights outside the zip.
- ``configs/metadata.json`` without this project's package in ``required_packages_version`` (it is
  vendored, and not on PyPI; the model zoo's CI pip-installs that list).

Weights: ``--weights_from DIR`` (default: the repository's ``bundles/``) is read as
``DIR/<bundle>/models/model.pt``; a downstream bundle's encoder is ``DIR/pretrain/models/model.pt``
(``--encoder`` to name another file). Train the bundles first (each bundle's default training on the
embedded phantom data writes them), or point ``--weights_from`` at a folder of trained weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_BUNDLES = PACKAGE_DIR.parent / "bundles"

# zoo folder names: distinct, and MONAI Label infers the task type from the words in the folder name
# ("segmentation", "classification").
ZOO_NAMES = {
    "pretrain": "dagman_ct_ssl_pretrain",
    "nodule_classification": "dagman_lung_nodule_ct_classification",
    "response_prediction": "dagman_immunotherapy_response_ct_classification",
    "segmentation": "dagman_tumor_ct_segmentation",
    "organ_clustering": "dagman_organ_ct_clustering",
}
DOWNSTREAM = ("nodule_classification", "response_prediction", "segmentation", "organ_clustering")
PROJECT_PACKAGES = ("dagman-components", "dagman_components", "dagman-bundles")
BUNDLE_PARTS = ("configs", "docs", "LICENSE")
DEFAULT_URL = "https://github.com/dagman-bundles/dagman-bundles/releases/download/{name}_v{version}/{file}"
# a downstream bundle's encoder, relative to the bundle root: not models/*.pt, which MONAI Label lists as models
ENCODER_PATH = ("models", "encoder", "encoder.pt")

def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_package(target: Path) -> None:
    shutil.copytree(
        PACKAGE_DIR,
        target / "dagman_components",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"),
    )


def _rewrite_config(text: str, bundle: str, zoo_name: str) -> str:
    text = text.replace(f"locate_bundle_root('{bundle}')", f"locate_bundle_root('{zoo_name}')")
    if bundle in DOWNSTREAM:
        encoder = "\"$os.path.join(@bundle_root, " + ", ".join(f"'{part}'" for part in ENCODER_PATH) + ")\""
        text = re.sub(r"(?m)^pretrained_path: .*$", f"pretrained_path: {encoder}", text)
        text = re.sub(r"(?m)^encoder_checkpoint: null.*$", f"encoder_checkpoint: {encoder}", text)
    return text


def release_bundle(
    bundle: str,
    output_dir: str | Path,
    weights_from: str | Path | None = None,
    encoder: str | Path | None = None,
    base_url: str = DEFAULT_URL,
    bundles_dir: str | Path = REPO_BUNDLES,
) -> Path:
    """Write ``<output_dir>/<zoo_name>_v<version>.zip`` for ``bundle``; returns the zip's path."""
    if bundle not in ZOO_NAMES:
        raise ValueError(f"unknown bundle {bundle!r}: one of {', '.join(ZOO_NAMES)}")
    source = Path(bundles_dir) / bundle
    weights_root = Path(weights_from) if weights_from is not None else Path(bundles_dir)
    model = weights_root / bundle / "models" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(
            f"{model} not found: train the bundle first (python -m monai.bundle run --config_file "
            f"bundles/{bundle}/configs/train.yaml) or pass --weights_from a folder holding <bundle>/models/model.pt"
        )
    encoder_file = None
    if bundle in DOWNSTREAM:
        encoder_file = Path(encoder) if encoder is not None else weights_root / "pretrain" / "models" / "model.pt"
        if not encoder_file.is_file():
            raise FileNotFoundError(f"encoder {encoder_file} not found (the pretrain bundle's models/model.pt; --encoder)")
    metadata = json.loads((source / "configs" / "metadata.json").read_text())
    version, zoo_name = metadata["version"], ZOO_NAMES[bundle]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / zoo_name
        target.mkdir()
        for part in BUNDLE_PARTS:
            src = source / part
            if src.is_dir():
                shutil.copytree(src, target / part, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.is_file():
                shutil.copy2(src, target / part)
        for config in (target / "configs").glob("*.yaml"):
            config.write_text(_rewrite_config(config.read_text(), bundle, zoo_name))
        _copy_package(target)
        requirements = metadata.get("required_packages_version", {})
        for name in PROJECT_PACKAGES:
            requirements.pop(name, None)
        (target / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4) + "\n")
        models = target / "models"
        models.mkdir()
        shutil.copy2(model, models / "model.pt")
        if encoder_file is not None:
            (target / Path(*ENCODER_PATH)).parent.mkdir(parents=True)
            shutil.copy2(encoder_file, target / Path(*ENCODER_PATH))
        entries = []
        for weight in sorted(models.rglob("*.pt")):
            path = weight.relative_to(target).as_posix()
            url = base_url.format(name=zoo_name, version=version, file=weight.name)
            entries.append(f'  - path: "{path}"\n    url: "{url}"\n    hash_val: "{_md5(weight)}"\n    hash_type: "md5"\n')
        (target / "large_files.yml").write_text("large_files:\n" + "".join(entries))
        archive = output_dir / f"{zoo_name}_v{version}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(target.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(tmp).as_posix())
    return archive


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default="dist")
    parser.add_argument("--bundles", default=",".join(ZOO_NAMES), help="comma-separated bundle names")
    parser.add_argument("--weights_from", default=None, help="folder holding <bundle>/models/model.pt (default: bundles/)")
    parser.add_argument("--encoder", default=None, help="encoder file of downstream bundles (default: <weights_from>/pretrain/models/model.pt)")
    parser.add_argument("--base_url", default=DEFAULT_URL, help="URL pattern of hosted weights in large_files.yml")
    args = parser.parse_args(argv)
    archives = []
    for bundle in [b.strip() for b in args.bundles.split(",") if b.strip()]:
        archives.append(release_bundle(bundle, args.output_dir, args.weights_from, args.encoder, args.base_url))
        print(archives[-1])
    return archives


if __name__ == "__main__":
    main()
