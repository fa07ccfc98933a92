"""Drive a released bundle through real MONAI Label (``BundleInferTask``, ``LocalDatastore``, ``BundleTrainTask``).

Run by ``tests/test_monai_label_real.py`` with the python of a separate MONAI Label venv (``.ci/monailabel-venv``),
where this project is NOT installed: the bundle must import its vendored ``dagman_components``. By hand:

    /tmp/dagman-monailabel-venv/bin/python tests/monai_label_driver.py --bundle <released folder> \\
        --infer_image ct.nii.gz --studies <folder of images> --labels <folder of {0,1} masks, same names> \\
        --max_epochs 2 --out result.json

Steps: infer ``--infer_image`` with the released weights; put the studies in a MONAI Label ``LocalDatastore`` and
save each mask as its *final* label (what a user's submit does); train ``--max_epochs`` epochs with
``BundleTrainTask`` (MONAI Label's default 80/20 split; the training's own log lines go to stderr through the bundle's logging.conf,
where the test reads them); infer again with the same infer task, which must pick the
new ``models/model.pt`` up. Writes what it saw to ``--out`` (JSON) and exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--infer_image", required=True)
    parser.add_argument("--studies", required=True, help="a new folder for the MONAI Label datastore")
    parser.add_argument("--images", required=True, help="folder of the training CTs (*.nii.gz)")
    parser.add_argument("--labels", required=True, help="folder of their {0, 1} masks, same file names")
    parser.add_argument("--max_epochs", type=int, default=2)
    parser.add_argument("--small_round", type=int, default=0,
                        help="then train once more (1 epoch) on a datastore of only this many labelled images")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    result: dict = {"dagman_components_installed": importlib.util.find_spec("dagman_components") is not None}
    if result["dagman_components_installed"]:
        raise SystemExit("dagman_components is importable before MONAI Label loads the bundle: not an isolated run")

    import nibabel as nib
    import numpy as np
    import torch
    from monailabel.datastore.local import LocalDatastore
    from monailabel.interfaces.datastore import DefaultLabelTag
    from monailabel.tasks.infer.bundle import BundleInferTask
    from monailabel.tasks.train.bundle import BundleTrainTask

    records = _Records()
    logging.getLogger().addHandler(records)
    logging.getLogger().setLevel(logging.INFO)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import monai
    import monailabel

    result["versions"] = {"monailabel": monailabel.__version__, "monai": monai.__version__, "torch": torch.__version__}
    bundle = os.path.abspath(args.bundle)
    model = os.path.join(bundle, "models", "model.pt")

    # ---- inference with the released weights
    t0 = time.time()
    infer = BundleInferTask(bundle, conf={})
    result["infer_valid"] = infer.is_valid()
    if not infer.is_valid():
        raise SystemExit("BundleInferTask: bundle not valid")
    result["infer_type"] = str(infer.type)
    result["labels"] = infer.labels
    result["infer_options"] = infer.config()  # the option panel: model_filename lists models/*.pt
    result["infer_info_version"] = infer.info().get("version")
    label_file, info = infer({"image": args.infer_image, "device": "cpu"})
    before = np.asarray(nib.load(label_file).dataobj)
    result["dagman_components_file"] = sys.modules["dagman_components"].__file__
    result["image_shape"] = list(nib.load(args.infer_image).shape)
    result["label_shape_before"] = list(before.shape)
    result["label_values_before"] = sorted(int(v) for v in np.unique(before))
    result["label_names"] = info.get("label_names")
    result["infer_seconds_before"] = round(time.time() - t0, 1)
    before = before.copy()
    os.unlink(label_file)

    # ---- the user's labels in MONAI Label's local datastore, then BundleTrainTask
    os.makedirs(args.studies, exist_ok=True)
    for name in sorted(os.listdir(args.images)):
        shutil.copy(os.path.join(args.images, name), os.path.join(args.studies, name))
    datastore = LocalDatastore(args.studies, auto_reload=False)
    for name in sorted(os.listdir(args.labels)):
        image_id = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else os.path.splitext(name)[0]
        datastore.save_label(image_id, os.path.join(args.labels, name), DefaultLabelTag.FINAL.value, {})
    result["datalist"] = datastore.datalist()
    mtime, md5 = os.stat(model).st_mtime, _md5(model)

    t0 = time.time()
    train = BundleTrainTask(bundle, conf={})
    result["train_valid"] = train.is_valid()
    result["train_model_filenames"] = train.config()["model_filename"]
    request = {"model": os.path.basename(bundle), "max_epochs": args.max_epochs, "device": "cpu", "multi_gpu": False}
    train(request, datastore)
    # monai.bundle.run configured logging from the bundle's logging.conf, replacing the root handlers
    logging.getLogger().addHandler(records)
    logging.getLogger().setLevel(logging.INFO)
    result["train_seconds"] = round(time.time() - t0, 1)
    result["model_changed"] = os.stat(model).st_mtime != mtime and _md5(model) != md5
    result["model_keys_cpu"] = all(t.device.type == "cpu" for t in torch.load(model, map_location="cpu").values())

    # ---- the same infer task after training: MONAI Label reloads models/model.pt when its mtime changes
    t0 = time.time()
    label_file, _ = infer({"image": args.infer_image, "device": "cpu"})
    after = np.asarray(nib.load(label_file).dataobj)
    result["label_shape_after"] = list(after.shape)
    result["label_values_after"] = sorted(int(v) for v in np.unique(after))
    result["labels_changed"] = bool(after.shape != before.shape or (after != before).any())
    result["infer_seconds_after"] = round(time.time() - t0, 1)
    os.unlink(label_file)

    reloads = sum("Reload model from cache" in m for m in records.messages)

    # ---- a datastore with one or two labels: MONAI Label's 80/20 split leaves no validation item
    if args.small_round:
        studies = args.studies.rstrip("/") + "_small"
        os.makedirs(studies)
        names = sorted(os.listdir(args.labels))[: args.small_round]
        for name in names:
            shutil.copy(os.path.join(args.images, name), os.path.join(studies, name))
        small = LocalDatastore(studies, auto_reload=False)
        for name in names:
            small.save_label(name[: -len(".nii.gz")], os.path.join(args.labels, name), DefaultLabelTag.FINAL.value, {})
        mtime, md5 = os.stat(model).st_mtime, _md5(model)
        train(dict(request, max_epochs=1), small)
        logging.getLogger().addHandler(records)
        logging.getLogger().setLevel(logging.INFO)
        label_file, _ = infer({"image": args.infer_image, "device": "cpu"})
        os.unlink(label_file)
        result["small_round"] = {
            "labelled": len(small.datalist()),
            "model_changed": os.stat(model).st_mtime != mtime and _md5(model) != md5,
            "reloaded": sum("Reload model from cache" in m for m in records.messages) > reloads,
        }

    text = "\n".join(records.messages)
    result["reloaded"] = reloads > 0
    result["key_mismatch"] = "Checkpoint keys don't match" in text
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, default=str)
    with open(args.out + ".log", "w") as f:
        f.write(text)
    return result


if __name__ == "__main__":
    main()
