"""Ray job entrypoint of a training stage: `alignray train KIND`, with its arguments.

    ray job submit --working-dir . -- python jobs/train.py preference --config jobs/configs/preference_smollm2.yaml dataset=/abs/prefs.parquet

(`jobs/train.py KIND CONFIG [KEY=VALUE ...]` works too.) Inside a Ray job RAY_ADDRESS is set, so the
stage joins that cluster.
"""

import sys

from alignray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
