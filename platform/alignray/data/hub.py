"""Datasets read through `datasets.load_dataset`: local .json / .jsonl / .csv / .parquet files and
Hugging Face dataset ids (`org/name`, `org/name:config`), whose repository files are downloaded
once into the Hub's cache (and read from it alone when the Hub is off), then loaded locally.
"""

from __future__ import annotations

import re
from pathlib import Path

DATASET_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(:(?P<config>[\w.-]+))?")  # org/name[:config]
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def is_dataset_id(source: str) -> bool:
    """`org/name[:config]` that is no existing path."""
    return DATASET_ID.fullmatch(source) is not None and not Path(source).exists()


def load(source: str, split: str, field: str, error: type[Exception]):
    """The `datasets.Dataset` of a local file (its one split, `train`) or of a dataset id's `split`;
    raises `error`, naming the config `field` and the source, for what cannot be read."""
    import datasets

    datasets.disable_progress_bars()
    match = DATASET_ID.fullmatch(source)
    if is_dataset_id(source):
        folder = snapshot(match["repo"], "dataset", f"{field} {source!r} (a Hugging Face dataset)", error,
                          f"hf download {match['repo']} --repo-type dataset")
        name, config, files = str(folder), match["config"], None
    else:
        name, config, files, split = BUILDERS[Path(source).suffix], None, source, "train"
    try:
        return datasets.load_dataset(name, config, data_files=files, split=split)
    except Exception as exc:  # datasets raises many types: no such config or split, an unreadable file
        raise error(f"{field} {source!r} (split {split!r}): {str(exc).strip().splitlines()[0]}") from None


def snapshot(repo_id: str, repo_type: str, what: str, error: type[Exception], fetch: str, revision: str | None = None,
             cache_dir: Path | None = None, allow_patterns: list[str] | None = None) -> Path:
    """The local folder of a Hub repository (a model or a dataset): downloaded into `cache_dir`
    (default: Hugging Face's cache) on first use, read from there afterwards and when the Hub is off.
    Raises `error` naming `what` and the cache; `fetch` is the command that downloads it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache_dir,
                                      allow_patterns=allow_patterns))
    except LocalEntryNotFoundError:
        why = "the Hub is off (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise error(f"{what}: not in the Hugging Face cache {cache_dir or constants.HF_HUB_CACHE} and {why}; download"
                    f" it where the Hub is reachable (`{fetch}`) into that cache, or point HF_HOME (or"
                    " ALIGNRAY_DOWNLOADS) at a cache that holds it") from None
    except HfHubHTTPError as exc:  # unknown repository or revision, gated, private
        raise error(f"{what}: the Hugging Face Hub refuses it: {str(exc).splitlines()[0]}") from None
