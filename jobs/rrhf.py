"""Ray job entrypoint of the rrhf pipeline: `python jobs/rrhf.py [--config FILE] [KEY=VALUE ...]`."""

import sys

from pipeline import job

if __name__ == "__main__":
    sys.exit(job("rrhf"))
