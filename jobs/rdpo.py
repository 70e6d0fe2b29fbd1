"""Ray job entrypoint of the rdpo pipeline: `python jobs/rdpo.py [--config FILE] [KEY=VALUE ...]`."""

import sys

from pipeline import job

if __name__ == "__main__":
    sys.exit(job("rdpo"))
