"""Ray job entrypoint of the rlcd_rescore pipeline: `python jobs/rlcd_rescore.py [--config FILE] [KEY=VALUE ...]`."""

import sys

from pipeline import job

if __name__ == "__main__":
    sys.exit(job("rlcd_rescore"))
