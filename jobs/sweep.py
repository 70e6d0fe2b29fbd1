"""Ray job entrypoint of a sweep (a pipeline over seeds and settings, on Ray Tune): `alignray sweep`.

    ray job submit --working-dir . -- python jobs/sweep.py --config jobs/configs/pipelines/context_distill_sweep_tiny.yaml [KEY=VALUE ...]

(`jobs/sweep.py CONFIG [KEY=VALUE ...]` works too.) Inside a Ray job RAY_ADDRESS is set, so the
trials run on that cluster. Give an absolute output_dir (or a tracking server) on storage every node
sees: the Tune experiment, the stage locks and the outputs live there, and submitting the same
command again resumes the sweep.
"""

import sys

from alignray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
