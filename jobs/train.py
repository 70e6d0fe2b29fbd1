"""Ray job entrypoint of a training stage.

    ray job submit --working-dir . -- python jobs/train.py preference --config jobs/configs/preference_smollm2.yaml dataset=/abs/prefs.parquet

Inside a Ray job RAY_ADDRESS is set, so the stage joins that cluster.
"""

import argparse
import sys

from alignray.cli import main
from alignray.stages import TRAIN_KINDS

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=TRAIN_KINDS)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    sys.exit(main(["train", args.kind, args.config, *args.overrides]))
