"""Ray job entrypoint of the rlcd pipeline: `python jobs/rlcd.py [--config FILE] [KEY=VALUE ...]`."""

import sys

from pipeline import job

if __name__ == "__main__":
    sys.exit(job("rlcd"))
