"""The training kinds, by name."""

from alignray.train.batch import Method
from alignray.train.dpo import DPOMethod
from alignray.train.preference import PreferenceMethod
from alignray.train.rrhf import RRHFMethod
from alignray.train.sft import SFTMethod

METHODS: dict[str, type[Method]] = {m.kind: m for m in (PreferenceMethod, SFTMethod, DPOMethod, RRHFMethod)}
