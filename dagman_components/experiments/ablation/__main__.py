"""``python -m dagman_components.experiments.ablation [--seeds 3] [--quick] ...``: the same as
``python -m dagman_components.experiments ablation ...``."""

import fire

from dagman_components.experiments.ablation.cli import ablation_main

if __name__ == "__main__":
    fire.Fire(ablation_main, serialize=lambda _: None)
