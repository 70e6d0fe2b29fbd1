"""Ray job entrypoint of PPO (RLCD, RLAIF and MORLAIF's policy-optimisation stage): `alignray train ppo`.

    ray job submit --working-dir . -- python jobs/ppo.py --config jobs/configs/ppo_smollm2.yaml ppo.iterations=50

(`jobs/ppo.py CONFIG [KEY=VALUE ...]` works too.) Inside a Ray job RAY_ADDRESS is set, so the run
joins that cluster. Submitting the same run_name again resumes from its last checkpoint.
"""

import sys

from alignray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "ppo", *sys.argv[1:]]))
