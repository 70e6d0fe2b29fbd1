"""Ray job entrypoint of the rlaif pipeline: `python jobs/rlaif.py [--config FILE] [KEY=VALUE ...]`."""

import sys

from pipeline import job

if __name__ == "__main__":
    sys.exit(job("rlaif"))
