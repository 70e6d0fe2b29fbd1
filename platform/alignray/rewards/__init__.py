"""Rewards: turning per-principle (MORLAIF) rewards into one training reward per sample."""

from alignray.rewards.scalarize import SCALARIZERS, fit_principle_weights, scalarize

__all__ = ["SCALARIZERS", "fit_principle_weights", "scalarize"]
