"""Ray job entrypoint of the preference-data simulation.

    ray job submit --working-dir . -- python jobs/simulate.py --config jobs/configs/rlcd_smollm2.yaml [KEY=VALUE ...]

Inside a Ray job RAY_ADDRESS is set, so the stage joins that cluster instead of starting one.
"""

import argparse
import sys

from alignray.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    sys.exit(main(["simulate", args.config, *args.overrides]))
