"""The recipes: which stages each pipeline runs, their settings, and how outputs feed inputs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # a stage of alignray.stages.STAGES: simulate, preference, sft, dpo, rrhf, ppo or evaluate
    defaults: dict = field(default_factory=dict)  # the recipe's settings; `stages.<name>` overrides them
    # dotted field -> (earlier stage, what): "output" (dataset path or model URI), "run" (its
    # MLflow run id) or "criteria" (the criterion names of its principle set)
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)


LIST_FIELDS = {"reward.models", "reward_models", "preference.principles"}


def _simulate(method: str, **simulation) -> Stage:
    return Stage("simulate", "simulate", {"simulation": {"method": method, **simulation}})


def _preference(**preference) -> Stage:
    return Stage("preference", "preference", {"preference": preference} if preference else {},
                 {"dataset": ("simulate", "output")})


def _evaluate(policy: str, curves: bool = False, rewarded: bool = True) -> Stage:
    """The evaluation of `policy`'s output; its answers are also scored by the recipe's preference
    model, when it has one (`rewarded`)."""
    inputs = {"policy": (policy, "output")} | ({"curves_run": (policy, "run")} if curves else {})
    inputs |= {"reward_models": ("preference", "output")} if rewarded else {}
    return Stage("evaluate", "evaluate", {}, inputs)


# PPO rolls out at top_p = 1 (its log-probs are of the whole distribution), whatever the
# other stages sample with.
PPO = Stage("ppo", "ppo", {"sampler": {"top_p": 1.0}}, {"reward.models": ("preference", "output")})

RECIPES: dict[str, list[Stage]] = {
    "rlcd": [_simulate("rlcd"), _preference(), PPO, _evaluate("ppo", curves=True)],
    "rlcd_rescore": [_simulate("rlcd_rescore"), _preference(), PPO, _evaluate("ppo", curves=True)],
    "rlaif": [_simulate("rlaif"), _preference(), PPO, _evaluate("ppo", curves=True)],
    "context_distill": [
        _simulate("rlcd"),
        Stage("sft", "sft", {}, {"dataset": ("simulate", "output")}),
        _evaluate("sft", rewarded=False),
    ],
    "morlaif": [
        _simulate("morlaif", principles="morlaif"),
        Stage("preference", "preference", {"preference": {"soft_labels": True}},
              {"dataset": ("simulate", "output"), "preference.principles": ("simulate", "criteria")}),
        PPO,
        _evaluate("ppo", curves=True),
    ],
    "rrhf": [
        _simulate("rlcd"),
        _preference(),
        Stage("candidates", "simulate", {"simulation": {"method": "rrhf"}}, {"reward.models": ("preference", "output")}),
        Stage("rrhf", "rrhf", {}, {"dataset": ("candidates", "output")}),
        _evaluate("rrhf"),
    ],
    "rdpo": [
        _simulate("rdpo", principles="safety"),
        Stage("dpo", "dpo", {"dpo": {"soft_labels": True}}, {"dataset": ("simulate", "output")}),
        _evaluate("dpo", rewarded=False),
    ],
}
