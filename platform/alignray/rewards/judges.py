"""Independent offline judges: classifiers that no part of training sees.

- `profanity`: alt-profanity-check's probability that a text is profane.
- `hate`: HateSonar's probability that a text is hate speech or offensive (1 - P(neither)).
- `length`: characters.

HateSonar's ONNX model needs the en_US.UTF-8 locale; where the system has none, it is compiled
once with `localedef` into alignray's cache folder and found through LOCPATH.
"""

from __future__ import annotations

import functools
import locale
import os
import subprocess
from collections.abc import Callable, Sequence

import numpy as np

from alignray.models.registry import cache_dir

Judge = Callable[[Sequence[str]], np.ndarray]


class JudgeError(RuntimeError):
    """An offline judge cannot run here; the message says what to install."""


def _ensure_locale() -> None:
    try:
        locale.setlocale(locale.LC_CTYPE, "en_US.UTF-8")
        locale.setlocale(locale.LC_CTYPE, "")
        return
    except locale.Error:
        pass
    folder = cache_dir() / "locale"
    if not (folder / "en_US.UTF-8" / "LC_CTYPE").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8", str(folder / "en_US.UTF-8")],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise JudgeError(
                f"the hatesonar judge needs the en_US.UTF-8 locale and compiling it failed ({exc});"
                " install it (Debian: apt-get install locales && localedef -i en_US -f UTF-8 en_US.UTF-8)"
            ) from None
    os.environ["LOCPATH"] = str(folder)


@functools.cache
def _sonar():
    _ensure_locale()
    from hatesonar import Sonar

    return Sonar()


def profanity(texts: Sequence[str]) -> np.ndarray:
    from profanity_check import predict_prob

    return np.asarray(predict_prob(list(texts)), dtype=float) if texts else np.zeros(0)


def hate(texts: Sequence[str]) -> np.ndarray:
    sonar = _sonar()
    neither = [next(c["confidence"] for c in sonar.ping(t)["classes"] if c["class_name"] == "neither") for t in texts]
    return 1.0 - np.asarray(neither, dtype=float)


def length(texts: Sequence[str]) -> np.ndarray:
    return np.asarray([len(t) for t in texts], dtype=float)


# name -> (judge, True when a lower value is better)
JUDGES: dict[str, tuple[Judge, bool]] = {"profanity": (profanity, True), "hate": (hate, True), "length": (length, False)}
