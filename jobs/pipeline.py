"""Ray job entrypoint of a whole pipeline (the shared body of jobs/<pipeline>.py): `alignray run`.

    ray job submit --working-dir . -- python jobs/rlcd.py [--config jobs/configs/pipelines/rlcd_smollm2.yaml] [KEY=VALUE ...]

The config may also be named first (`jobs/rlcd.py CONFIG [KEY=VALUE ...]`); without one, the
pipeline's SmolLM2 config is run. `--dry-run` shows what would run. Inside a Ray job RAY_ADDRESS
is set, so every stage joins that cluster.
"""

import sys
from pathlib import Path

from alignray.cli import build_parser, main


def job(pipeline: str) -> int:
    argv = sys.argv[1:]
    args, _ = build_parser().parse_known_args(["run", *argv])
    if args.config is None and (not args.items or "=" in args.items[0]):  # no config named: the SmolLM2 one
        argv = ["--config", str(Path(__file__).parent / "configs" / "pipelines" / f"{pipeline}_smollm2.yaml"), *argv]
    return main(["run", *argv, f"pipeline={pipeline}"])


if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
