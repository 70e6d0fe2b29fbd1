"""Ray job entrypoint of the context_distill pipeline: `python jobs/context_distill.py [--config FILE] [KEY=VALUE ...]`."""

import sys

from pipeline import job

if __name__ == "__main__":
    sys.exit(job("context_distill"))
