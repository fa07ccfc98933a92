"""Collect what the runs of a session logged and what their snapshots probed into one JSON (study.md, sixth session).

For each run folder: the epoch means of the collapse monitors (``long_run.epoch_monitors`` on its
``console.log``, every ``--every`` epochs) and the tokens probe of its snapshots (``RUN/probe_snaps.json``,
written by ``watch_probe.py``).

    python docs/results/study/collect_runs.py /work/runs/decor1 /work/runs/appear --every 5 --output session6.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_run import epoch_monitors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    result = {}
    for run in args.runs:
        probes = run / "probe_snaps.json"
        result[run.name] = {
            # console_0.log, console_1.log, ...: the logs of earlier, interrupted parts of a resumed run
            "monitors": epoch_monitors(sorted(run.glob("console_*.log")) + [run / "console.log"], args.every),
            "probe_tokens": json.loads(probes.read_text()) if probes.exists() else {},
        }
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {args.output} ({', '.join(result)})")


if __name__ == "__main__":
    main()
