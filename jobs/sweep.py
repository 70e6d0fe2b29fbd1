"""Ray job entrypoint of a sweep (a pipeline over seeds and settings, on Ray Tune).

    ray job submit --working-dir . -- python jobs/sweep.py --config jobs/configs/pipelines/context_distill_sweep_tiny.yaml [KEY=VALUE ...]

Inside a Ray job RAY_ADDRESS is set, so the trials run on that cluster. Give an absolute
output_dir (or a tracking server) on storage every node sees: the Tune experiment, the stage
locks and the outputs live there, and submitting the same command again resumes the sweep.
"""

import argparse
import sys

from alignray.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pipeline config with a sweep section")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    sys.exit(main(["sweep", args.config, *args.overrides]))
