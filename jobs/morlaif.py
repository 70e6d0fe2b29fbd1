"""Ray job entrypoint of the morlaif pipeline: `python jobs/morlaif.py [--config FILE] [KEY=VALUE ...]`."""

import sys

from pipeline import job

if __name__ == "__main__":
    sys.exit(job("morlaif"))
