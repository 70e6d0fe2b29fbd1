"""Ray job entrypoint of PPO (RLCD, RLAIF and MORLAIF's policy-optimisation stage).

    ray job submit --working-dir . -- python jobs/ppo.py --config jobs/configs/ppo_smollm2.yaml ppo.iterations=50

Inside a Ray job RAY_ADDRESS is set, so the run joins that cluster. Submitting the same
run_name again resumes from its last checkpoint.
"""

import argparse
import sys

from alignray.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file (see jobs/configs/ppo_*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    sys.exit(main(["train", "ppo", args.config, *args.overrides]))
