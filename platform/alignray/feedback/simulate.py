"""The preference-data simulation stage: prompts -> a Parquet dataset, tracked in MLflow.

The methods live in `pairs` (rlcd, rlaif, rlcd_rescore, morlaif), `ranking` (rrhf) and
`critique` (rdpo), registered in `methods`; this module validates the inputs, runs one, checks
its rows against the method's dataset format, and writes and logs them.
A dataset of pairs (every method but rrhf) is then checked by independent judges
(`diagnostics`): metrics `diag_*`, artifact `diagnostics.json`, and a `diagnostics_warning` tag
when a judge finds the labels inverted more often than not.

Every input is validated before Ray starts, and the dataset is written atomically at the end,
so a bad input or a failed run leaves no dataset behind.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa

from alignray import cluster, tracking
from alignray.config import SimulateConfig
from alignray.data.conversation import Conversation
from alignray.data.formats import Format
from alignray.data.sources import load_conversations
from alignray.feedback import diagnostics, rlcd, truncation
from alignray.feedback.methods import METHODS
from alignray.feedback.plans import Plan, RenderChat, neutral_plans
from alignray.io import write_parquet
from alignray.models.registry import resolve
from alignray.principles import PrincipleSet, load_principles
from alignray.sampling.clients import chat_renderer, is_url


@dataclass(frozen=True)
class SimulationResult:
    dataset: Path
    run_id: str
    tracking_uri: str
    experiment: str
    tally: str  # how many rows were written and how many prompts dropped, in the method's words
    metrics: dict[str, float]  # as logged to the MLflow run
    examples: list[dict]
    all_ties: list[str]  # label columns where every pair is a tie
    diagnostics: diagnostics.Diagnostics | None  # None for rrhf's candidates


TIE = 1e-6


def ties(frame: pd.DataFrame) -> list[str]:
    """The label columns in which every pair is a tie (probability 0.5)."""
    return [c for c in frame.columns if c.startswith("preference_prob") and ((frame[c] - 0.5).abs() < TIE).all()]


def _plans(cfg: SimulateConfig, convs: list[Conversation], principles: PrincipleSet, render: RenderChat | None) -> list[Plan]:
    """RLCD's contrast prompts (rlcd, rlcd_rescore), else the neutral prompt on both sides."""
    sim = cfg.simulation
    if METHODS[sim.method].contrast:
        return rlcd.plan(convs, principles, sim.seed, render, sim.affix_placement)
    return neutral_plans(convs, principles.response_prefix, render)


def _model_inputs(cfg: SimulateConfig) -> list[tuple[str, str]]:
    """(role, reference) of every model the simulation reads."""
    sim = cfg.simulation
    found = [("policy", cfg.model.name), ("simulator", sim.simulator), ("labeller", sim.labeller),
             ("teacher", sim.teacher), ("judge", cfg.judge.model)]
    found += [("ranking policy", ref) for ref in cfg.ranking.policies]
    found += [("reward model", ref) for ref in (cfg.reward.models if cfg.reward else [])]
    return [(role, ref) for role, ref in found if ref]


def write_dataset(frame: pd.DataFrame, fmt: Format, target: Path) -> Path:
    """Check `frame` against its format (DatasetError naming `target` and the column: nothing is
    written), then write it atomically, stamped with the active MLflow run."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    fmt.check(table.schema, str(target))
    return write_parquet(tracking.stamped(table, target), target)


def show_example(k: int, row: dict) -> list[str]:
    """A written row, shortened for the terminal."""
    if "candidates" in row:
        lines = ["", f"--- example {k} ---", "prompt:   " + textwrap.shorten(row["prompt"], 300)]
        return lines + [f"  {reward:+.3f} " + textwrap.shorten(text, 200)
                        for reward, text in sorted(zip(row["rewards"], row["candidates"]), reverse=True)]
    how = (f"p = {row['preference_prob']:.2f}" if "preference_prob" in row
           else f"{row['positive_affix']} / {row['negative_affix']}")
    lines = ["", f"--- example {k} ({how}) ---", "prompt:   " + textwrap.shorten(row["prompt"], 300),
             "chosen:   " + textwrap.shorten(row["chosen"], 300), "rejected: " + textwrap.shorten(row["rejected"], 300)]
    if "critique" in row:
        lines.append("critique: " + textwrap.shorten(row["critique"], 300))
    per_criterion = {c.removeprefix("preference_prob_"): v for c, v in row.items() if c.startswith("preference_prob_")}
    if per_criterion:
        lines.append("labels:   " + "  ".join(f"{name} {v:.2f}" for name, v in per_criterion.items()))
    return lines


def run(cfg: SimulateConfig) -> SimulationResult:
    sim = cfg.simulation
    method = METHODS[sim.method]
    principles = load_principles(sim.principles)
    needs = {part: f"simulation.method={sim.method}" for part in method.needs}
    if sim.method == "rdpo" and cfg.judge.kind == "model":
        needs["instructions"] = "rdpo's model judge"
    if sim.affix_placement == "demonstration" and "pairs" in needs:
        del needs["pairs"]
        needs["demonstrations"] = "simulation.affix_placement=demonstration"
    for part, why in needs.items():
        principles.require(part, why)
    convs = load_conversations(cfg.data)
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg.tracking, cfg.output_dir))  # models:/ names are in this stage's store
    model_path = resolve(cfg.model.name)
    simulator_path = resolve(sim.simulator) if sim.simulator else model_path
    for name in (sim.labeller, sim.teacher, cfg.judge.model, *cfg.ranking.policies):
        if name and not is_url(name):
            resolve(name)
    needs_chat = any(c.messages is not None for c in convs)
    render = chat_renderer(model_path) if needs_chat else None
    plans = _plans(cfg, convs, principles, render)
    # a separate simulator is prompted in its own chat template (same pairs: same seed)
    sample_plans = plans if simulator_path == model_path or not needs_chat else _plans(
        cfg, convs, principles, chat_renderer(simulator_path))

    cluster.connect(cfg.address)
    params = tracking.flatten(cfg)
    params["model.path"] = str(model_path)
    run_name = f"{sim.method}-{principles.name}"
    with tracking.start_run(cfg.tracking, cfg.output_dir, run_name, params) as active:
        for context, ref in _model_inputs(cfg):
            tracking.log_model_input(ref, context)
        tracking.log_prompts([c.transcript if c.messages is None else render(c.message_dicts()) for c in convs],
                             cfg.data.label, "prompts")
        started = time.monotonic()
        rows, dropped, metrics = method.run(cfg, plans, principles, sample_plans)
        frame = pd.DataFrame(rows)
        target = cfg.output_dir / "datasets" / f"{run_name}-{active.info.run_id[:8]}" / method.format.file
        dataset = write_dataset(frame, method.format, target)
        tracking.log_dataset(dataset, frame, name=f"{run_name}-{target.stem}", context=target.stem)
        tied = ties(frame)
        if tied:
            mlflow.set_tag("all_ties", ",".join(tied))
        seconds = time.monotonic() - started
        diag = None
        if {"chosen", "rejected"} <= set(frame.columns):
            diag = diagnostics.run(frame)
            mlflow.log_dict(diag.as_dict(), "diagnostics.json")
            metrics |= diag.metrics() | {"diagnostics_seconds": time.monotonic() - started - seconds}
            if diag.warnings():
                mlflow.set_tag("diagnostics_warning", "\n".join(diag.warnings()))
        metrics |= {"seconds": seconds,
                    **{f"{c}_mean": float(frame[c].mean()) for c in frame.columns if c.startswith("preference_prob")}}
        mlflow.log_metrics(metrics)
    return SimulationResult(
        dataset=dataset.resolve(),
        run_id=active.info.run_id,
        tracking_uri=tracking.tracking_uri(cfg.tracking, cfg.output_dir),
        experiment=cfg.tracking.experiment,
        tally=method.tally.format(kept=len(rows), dropped=dropped)
        + truncation.tally_note(metrics["dropped_truncated"], method.unit),
        metrics=metrics,
        examples=rows[:3],
        all_ties=tied,
        diagnostics=diag,
    )
