"""``python -m dagman_components.analysis.probe``: see :py:func:`dagman_components.analysis.probe.report.main`."""

import logging
import sys

import fire

from dagman_components.analysis.probe.report import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    fire.Fire(main)
