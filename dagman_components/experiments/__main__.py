"""Command line: ``python -m dagman_components.experiments ablation [--seeds 3] [--quick] [--only core] ...``."""

import fire

from dagman_components.experiments.ablation import ablation_main


def main() -> None:
    fire.Fire({"ablation": ablation_main}, serialize=lambda _: None)


if __name__ == "__main__":
    main()
