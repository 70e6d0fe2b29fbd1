"""Ray job entrypoint of a whole pipeline (the shared body of jobs/<pipeline>.py).

    ray job submit --working-dir . -- python jobs/rlcd.py [--config jobs/configs/pipelines/rlcd_smollm2.yaml] [KEY=VALUE ...]

Inside a Ray job RAY_ADDRESS is set, so every stage joins that cluster.
"""

import argparse
import sys
from pathlib import Path

from alignray.cli import main


def job(pipeline: str) -> int:
    default = Path(__file__).parent / "configs" / "pipelines" / f"{pipeline}_smollm2.yaml"
    parser = argparse.ArgumentParser(description=f"The {pipeline} pipeline as a Ray job.")
    parser.add_argument("--config", default=str(default), help=f"pipeline config (default: {default})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    return main(["run", args.config, f"pipeline={pipeline}", *args.overrides])


if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
