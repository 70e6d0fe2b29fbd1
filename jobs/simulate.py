"""Ray job entrypoint of the preference-data simulation: `alignray simulate`, with its arguments.

    ray job submit --working-dir . -- python jobs/simulate.py --config jobs/configs/rlcd_smollm2.yaml [KEY=VALUE ...]

(`jobs/simulate.py CONFIG [KEY=VALUE ...]` works too.) Inside a Ray job RAY_ADDRESS is set, so the
stage joins that cluster instead of starting one.
"""

import sys

from alignray.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate", *sys.argv[1:]]))
