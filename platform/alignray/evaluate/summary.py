"""`alignray report NAME`: tables and a plot across seeds, read from MLflow.

NAME is a sweep (the parent run tagged `alignray.sweep`, whose `trials.json` lists each trial's
overrides and evaluate runs) or an MLflow experiment (its evaluate runs, grouped by pipeline and
split, one value per seed: the `alignray.seed` tag of a pipeline run with a top-level `seed`).

For each group and headline metric: the value of every seed, their mean, min–max and a 95%
interval over seeds (`alignray.stats.across_seeds`: Student t over the seeds, widened by the
seeds' own intervals over prompts where the runs logged them), and a verdict against no change
(0 for a gain, 0.5 for a win rate): "better" or "worse" only when the interval excludes it and
there are two seeds or more, else "inconclusive". Every table names its split and, for a sweep,
how many configurations were tried before the pick.

A sweep with arms (methods compared, `sweep.arms`) also gets a comparison with its baseline arm:
per other arm and headline metric, the difference of the means over seeds with a 95% interval
(`alignray.stats.difference_across_seeds`) and a verdict; and each arm's wall time per trial
(the trial's own stage runs, start to end, summed).
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow

from alignray.io import atomic_dir
from alignray.stats import SeedDifference, SeedSummary, across_seeds, difference_across_seeds
from alignray.tracking import HOST_SEPARATOR, HOST_TAG, run_seconds

SWEEP_TAG = "alignray.sweep"  # the parent run of a sweep (alignray.pipelines.sweep), and only it
TRIAL_TAG = "alignray.trial"  # on every stage run of a sweep's trial: its Tune trial id
TRIALS_ARTIFACT = "trials.json"
SEED_TAG = "alignray.seed"
# headline metrics, by prefix: (what it is, the value of "no change", whether higher is better,
# the range its values lie in: None when unbounded)
HEADLINE = {
    "refusal_gain.": ("refusal gain on harmful prompts", 0.0, True, (-1.0, 1.0)),
    "over_refusal_gain.": ("over-refusal change on benign prompts", 0.0, False, (-1.0, 1.0)),
    "net_refusal_gain.": ("net refusal gain (harmful gain minus benign change)", 0.0, True, (-2.0, 2.0)),
    "win_rate.model.": ("AI-judge win rate", 0.5, True, (0.0, 1.0)),
    "win_rate.profanity.": ("profanity win rate", 0.5, True, (0.0, 1.0)),
    "win_rate.hate.": ("HateSonar win rate", 0.5, True, (0.0, 1.0)),
    "reward_gain.": ("mean reward gain under the preference model", 0.0, True, None),
}
DEGENERATE_TAG = "alignray.degenerate"  # set by evaluate's diversity check against the start


class ReportError(ValueError):
    """No sweep or experiment of that name, or nothing evaluated in it."""


def configuration_label(overrides: dict[str, Any]) -> str:
    """A sweep trial's configuration: its arm, then its other overrides but the seed (trials with
    the same label differ by seed only)."""
    shown = [str(overrides["arm"])] if "arm" in overrides else []
    shown += [f"{k}={v}" for k, v in sorted(overrides.items()) if k not in ("seed", "arm")]
    return ", ".join(shown) or "(the config as given)"


@dataclass
class Group:
    """Evaluate runs of one configuration on one split, one per seed."""

    label: str
    split: str
    runs: dict[str, str] = field(default_factory=dict)  # seed -> evaluate run id
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # seed -> metrics
    degenerate: dict[str, bool] = field(default_factory=dict)  # seed -> flagged by the diversity check

    def add(self, seed: str, run) -> None:
        self.runs[seed] = run.info.run_id
        self.metrics[seed] = run.data.metrics
        if DEGENERATE_TAG in run.data.tags:
            self.degenerate[seed] = run.data.tags[DEGENERATE_TAG] == "true"

    def collapsed(self) -> str:
        """E.g. "3 of 3" seeds whose policy the diversity check flagged; "–" when none was checked."""
        return f"{sum(self.degenerate.values())} of {len(self.degenerate)}" if self.degenerate else "–"


def headline(metric: str) -> tuple[str, float, bool] | None:
    for prefix, spec in HEADLINE.items():
        if metric.startswith(prefix):
            return f"{spec[0]} vs {metric.removeprefix(prefix)}", spec[1], spec[2]
    return None


def value_range(metric: str) -> tuple[float, float] | None:
    """The range a headline metric's values lie in (intervals are clipped to it); None when unbounded."""
    return next((spec[3] for prefix, spec in HEADLINE.items() if metric.startswith(prefix)), None)


def bounds_of(metric: str) -> tuple[str, str]:
    """The names of a metric's own interval bounds in an evaluate run: refusal_gain.x ->
    (refusal_gain_low.x, refusal_gain_high.x)."""
    head, _, rest = metric.partition(".")
    return f"{head}_low.{rest}", f"{head}_high.{rest}"


def _within(runs: list[dict[str, float]], metric: str) -> list[float] | None:
    """Each run's own interval half-width of `metric` (over prompts), when every run logged it."""
    low, high = bounds_of(metric)
    return [(m[high] - m[low]) / 2 for m in runs] if all(low in m and high in m for m in runs) else None


def summarize(group: Group, metrics: list[str]) -> dict[str, tuple[SeedSummary, str]]:
    """Per metric of the group: its summary over seeds and the verdict against no change. Where
    every seed's run has the metric's own interval (over prompts), the interval over seeds is
    widened by it (`stats.across_seeds(within=...)`)."""
    out = {}
    for metric in metrics:
        runs = [m for m in group.metrics.values() if metric in m]
        if not runs:
            continue
        summary = across_seeds([m[metric] for m in runs], within=_within(runs, metric))
        spec, span = headline(metric), value_range(metric)
        reference, higher = (spec[1], spec[2]) if spec else (0.0, True)
        if span and summary.low is not None:  # e.g. a rate lies in [0, 1], a change of rates in [-1, 1]
            summary = replace(summary, low=max(span[0], summary.low), high=min(span[1], summary.high))
        out[metric] = (summary, summary.verdict(higher, reference))
    return out


def compare(arm: Group, baseline: Group, metrics: list[str]) -> dict[str, tuple[SeedDifference, str]]:
    """Per headline metric both groups have: the arm minus the baseline over their seeds
    (`stats.difference_across_seeds`, widened by the runs' own intervals where both arms logged
    them) and the verdict ("better": the arm is better than the baseline)."""
    out = {}
    for metric in (m for m in metrics if headline(m)):
        a = [m for m in arm.metrics.values() if metric in m]
        b = [m for m in baseline.metrics.values() if metric in m]
        if not a or not b:
            continue
        wa, wb = _within(a, metric), _within(b, metric)
        both = wa is not None and wb is not None
        d = difference_across_seeds([m[metric] for m in a], [m[metric] for m in b],
                                    within_a=wa if both else None, within_b=wb if both else None)
        _, _, higher = headline(metric)
        span = value_range(metric)
        if span and d.low is not None:  # two values in [lo, hi] differ by at most hi - lo
            d = replace(d, low=max(span[0] - span[1], d.low), high=min(span[1] - span[0], d.high))
        out[metric] = (d, d.verdict(higher))
    return out


def wall_times(parent: str) -> dict[str, float]:
    """Seconds per trial of a sweep: its own finished stage runs (nested under the sweep's parent
    run, tagged with the trial), each `tracking.run_seconds` (pauses of a resumed run left out),
    summed. A stage the trial reused ran in another trial's run, so it counts 0 here."""
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                              output_format="list")
    out: dict[str, float] = {}
    for r in runs:
        trial = r.data.tags.get(TRIAL_TAG)
        seconds = run_seconds(r)
        if trial and seconds is not None:
            out[trial] = out.get(trial, 0.0) + seconds
    return out


def _durations(seconds: list[float]) -> str:
    """"mean (min to max)" in one unit: minutes when the longest is 2 min or more, else seconds."""
    scale, unit, fmt = (60, "min", ".1f") if max(seconds) >= 120 else (1, "s", ".0f")
    low, mean, high = (v / scale for v in (min(seconds), sum(seconds) / len(seconds), max(seconds)))
    return f"{mean:{fmt}} {unit} ({low:{fmt}} to {high:{fmt}} {unit})"


def _arms(table: dict, parent: str, groups: list[Group], summaries: dict, metrics: list[str]) -> list[str]:
    """The arms' wall times, and each arm against the baseline arm on the test split."""
    tests = {g.label: g for g in groups if g.split == "test"}
    baseline = table["baseline"]
    walls = wall_times(parent)
    seconds: dict[str, list[float]] = {}
    for t in table["trials"]:
        if t["trial_id"] in walls:
            seconds.setdefault(configuration_label(t["overrides"]), []).append(walls[t["trial_id"]])
    lines = [f"## Arms against the baseline arm {baseline} (test split)", "",
             "| arm | pipeline | seeds | wall time per trial: mean (min to max) |", "|---|---|---|---|"]
    for arm, spec in table["arms"].items():
        wall = _durations(seconds[arm]) if arm in seconds else "–"
        seeds = len(tests[arm].metrics) if arm in tests else 0
        lines.append(f"| {arm}{' (baseline)' if arm == baseline else ''} | {spec['pipeline']} | {seeds} | {wall} |")
    lines += ["", "Wall time per trial: the sum of its own stage runs, each from start to end of every attempt (the"
              " pauses of a stopped and resumed stage left out). A stage it reused from"
              " another trial (another arm's or another seed's: the same config and inputs) ran there and counts"
              " 0 here.", ""]
    if baseline not in tests:
        return [*lines, f"The baseline arm {baseline} has no finished trial: nothing to compare with.", ""]
    lines += [f"| arm − {baseline} | metric | arm: mean | {baseline}: mean | difference [95% interval] | verdict |",
              "|---|---|---|---|---|---|"]
    methods = []
    for arm in (a for a in table["arms"] if a != baseline and a in tests):
        for metric, (d, verdict) in compare(tests[arm], tests[baseline], metrics).items():
            interval = "no interval" if d.low is None else f"[{d.low:+.3f}, {d.high:+.3f}]"
            means = (summaries[(arm, "test")][metric][0].mean, summaries[(baseline, "test")][metric][0].mean)
            f = _spec(metric)
            lines.append(f"| {arm} | {headline(metric)[0]} | {means[0]:{f}} | {means[1]:{f}} | {d.diff:+.3f}"
                         f" {interval} | {verdict} |")
            methods.append(d.method)
    return [*lines, "", "Differences: " + "; ".join(dict.fromkeys(methods) or ["none"]) + ". A verdict is \"better\""
            " (the arm is better than the baseline) or \"worse\" only when the interval excludes 0 and both arms have"
            " at least two seeds; otherwise \"inconclusive\".", ""]


# figures of the stages behind each trial's evaluation: (stage, metric of its MLflow run, what it is)
STAGE_FIGURES = (
    ("simulate", "pairs", "preference pairs"),
    ("simulate", "dropped_truncated", "pairs lost to truncation (drop)"),
    ("simulate", "relabelled_truncated", "pairs relabelled for truncation (penalise)"),
    ("preference", "eval_accuracy", "preference model held-out accuracy"),
)


def _per_seed(values: list[float], fmt: str) -> str:
    return f"{sum(values) / len(values):{fmt}} ({min(values):{fmt}} to {max(values):{fmt}})"


def stage_tables(client, table: dict) -> list[str]:
    """Per configuration, over its seeds: each stage's wall time (every stage of the trial's
    pipeline, also one reused from another trial or sweep: where it ran, it took that long), the
    simulation's pairs and truncation losses, and the preference model's held-out accuracy (also
    per principle head, as eval_accuracy_<head>). Needs the trials' stage_runs (sweeps run since
    they were recorded); [] otherwise."""
    runs: dict[str, list[dict]] = {}  # configuration -> per trial: stage -> its run
    for t in table["trials"]:
        if t.get("stage_runs"):
            runs.setdefault(configuration_label(t["overrides"]), []).append(
                {stage: client.get_run(run_id) for stage, run_id in t["stage_runs"].items()})
    if not runs:
        return []
    stages = list(dict.fromkeys(s for trials in runs.values() for per in trials for s in per if s != "evaluate"))
    lines = ["## Stages behind each configuration", "",
             "Mean over seeds (min to max). Wall time of every stage of the pipeline, start to end of every attempt"
             " (pauses of a resumed stage left out), also of a"
             " stage reused from another trial or sweep (the time it took where it ran).", "",
             "| configuration | " + " | ".join(f"{s} (min)" for s in stages) + " | "
             + " | ".join(what for _, _, what in STAGE_FIGURES) + " |",
             "|---|" + "---|" * (len(stages) + len(STAGE_FIGURES))]
    heads: dict[str, dict[str, list[float]]] = {}
    for label, trials in runs.items():
        cells = []
        for s in stages:
            took = [run_seconds(per[s]) / 60 for per in trials if s in per and run_seconds(per[s]) is not None]
            cells.append(_per_seed(took, ".1f") if took else "–")
        for stage, metric, _ in STAGE_FIGURES:
            found = [per[stage].data.metrics[metric] for per in trials if stage in per and metric in per[stage].data.metrics]
            cells.append(_per_seed(found, ".3f" if "accuracy" in metric else ".0f") if found else "–")
        for per in (per for per in trials if "preference" in per):
            for key, value in per["preference"].data.metrics.items():
                if key.startswith("eval_accuracy_"):
                    heads.setdefault(label, {}).setdefault(key.removeprefix("eval_accuracy_"), []).append(value)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, per_head in heads.items():
        lines += ["", f"Held-out accuracy of each principle head, {label} (mean over seeds, min to max): "
                  + "; ".join(f"{h} {_per_seed(v, '.3f')}" for h, v in per_head.items()) + "."]
    for label, trials in runs.items():
        lines += ["", f"CPUs the stage runs of {label} ran on (`auto` is bfloat16 where it is native, else float32): "
                  + _hosts([run for per in trials for run in per.values()]) + "."]
    return [*lines, ""]


def _hosts(runs: list) -> str:
    """Each CPU the runs started an attempt on, with how many of the runs did (a run reused by several
    trials counts once); runs from before runs noted their CPU count as not recorded."""
    unique = {run.info.run_id: run for run in runs}.values()
    count = Counter(host for run in unique for host in run.data.tags.get(HOST_TAG, "not recorded").split(HOST_SEPARATOR))
    return "; ".join(f"{host} ({n} of {len(unique)} runs)" for host, n in count.items())


def _spec(metric: str) -> str:
    """How a metric's values print: a rate (no change at 0.5) as it is, a gain or change with its sign."""
    found = headline(metric)
    return ".3f" if found and found[1] == 0.5 else "+.3f"


def _fmt(s: SeedSummary, metric: str) -> str:
    f = _spec(metric)
    interval = "no interval" if s.low is None else f"[{s.low:{f}}, {s.high:{f}}]"
    return f"{s.mean:{f}} {interval}, {s.min:{f}} to {s.max:{f}}"


def _metric_names(groups: list[Group], extra: tuple[str, ...] = ()) -> list[str]:
    seen = {k for g in groups for m in g.metrics.values() for k in m}
    return [k for k in sorted(seen) if headline(k)] + [k for k in extra if k in seen and not headline(k)]


def _table(group: Group, found: dict[str, tuple[SeedSummary, str]]) -> list[str]:
    """The group's seeds table: `found` is its `summarize`."""
    seeds = sorted(group.metrics, key=lambda s: (len(s), s))
    lines = [f"| metric | {' | '.join(f'seed {s}' for s in seeds)} | mean [95% CI over seeds], min to max | verdict |",
             "|---|" + "---|" * len(seeds) + "---|---|"]
    for metric, (s, verdict) in found.items():
        cells = [f"{group.metrics[seed][metric]:{_spec(metric)}}" if metric in group.metrics[seed] else "–"
                 for seed in seeds]
        name = headline(metric)[0] if headline(metric) else metric
        lines.append(f"| {name} | {' | '.join(cells)} | {_fmt(s, metric)} | {verdict} |")
    if group.degenerate:
        lines += ["", f"Diversity check (`{DEGENERATE_TAG}`, evaluate's collapse flags against the start): the policy's"
                      f" answers look degenerate in {group.collapsed()} seeds."]
    return lines


def _sweep(client, name: str) -> tuple[dict, list[Group], str] | None:
    parents = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{SWEEP_TAG}` = '{name}'",
                                 output_format="list")
    if not parents:
        return None
    parent = max(parents, key=lambda r: r.info.start_time)
    try:
        table = json.loads(Path(client.download_artifacts(parent.info.run_id, TRIALS_ARTIFACT)).read_text())
    except Exception as exc:  # noqa: BLE001  MLflow raises its own types for a missing artifact
        raise ReportError(f"sweep {name!r} has no {TRIALS_ARTIFACT} yet (MLflow run {parent.info.run_id}):"
                          f" run `alignray sweep` to its end first ({exc})") from None
    groups: dict[tuple[str, str], Group] = {}
    for t in table["trials"]:
        label = configuration_label(t["overrides"])
        seed = str(t["overrides"].get("seed", t["trial_id"]))
        for split, run_id in (("dev", t.get("dev_run")), ("test", t.get("test_run"))):
            if run_id:
                g = groups.setdefault((label, split), Group(label, split))
                g.add(seed, client.get_run(run_id))
    return table, list(groups.values()), parent.info.run_id


def _experiment(client, name: str) -> list[Group]:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ReportError(f"{name!r} is neither a sweep nor an MLflow experiment in this store")
    runs = client.search_runs([experiment.experiment_id], "tags.`alignray.stage` = 'evaluate'"
                              " and attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"])
    groups: dict[tuple[str, str], Group] = {}
    for r in runs:  # oldest first: a later run of the same seed replaces an earlier one
        label = r.data.tags.get("alignray.pipeline", "?")
        split = "dev" if r.data.params.get("split") == "dev" else "test"  # a stand-alone evaluation counts as test
        seed = r.data.tags.get(SEED_TAG, r.info.run_id[:8])
        g = groups.setdefault((label, split), Group(label, split))
        g.add(seed, r)
    return list(groups.values())


@dataclass(frozen=True)
class Report:
    name: str
    markdown: str
    folder: Path


def report(name: str, tracking_uri: str, output_dir: Path) -> Report:
    """Write `<output_dir>/reports/<name>/` (report.md, seeds.png) from the store and return it."""
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    found = _sweep(client, name)
    if found:
        table, groups, parent = found
        select = (table.get("select") or {}).get("metric")
        lines = [f"# Sweep `{name}`", "",
                 f"MLflow parent run `{parent}`. {len(table['trials'])} trials in {table['configurations']}"
                 f" configurations. Reported configuration: {table['selection']}.", ""]
        metrics = _metric_names(groups, (select,) if select else ())
        summaries = {(g.label, g.split): summarize(g, metrics) for g in groups}
        dev = [g for g in groups if g.split == "dev"]
        if dev:
            lines += ["## Dev split: every configuration (the split the choice was made on)", "",
                      f"Each cell: the mean over seeds [95% interval over seeds], min to max. Chosen by"
                      f" {select} ({(table.get('select') or {}).get('mode')}); degenerate seeds: flagged by"
                      " evaluate's diversity check.", "",
                      "| configuration | seeds | degenerate seeds | "
                      + " | ".join(headline(m)[0] if headline(m) else m for m in metrics) + " |",
                      "|---|---|---|" + "---|" * len(metrics)]
            for g in dev:
                found_metrics = summaries[(g.label, g.split)]
                cells = [_fmt(found_metrics[m][0], m) if m in found_metrics else "–" for m in metrics]
                mark = " (chosen)" if g.label == table.get("chosen") else ""
                lines.append(f"| {g.label}{mark} | {len(g.metrics)} | {g.collapsed()} | " + " | ".join(cells) + " |")
            lines.append("")
        arms = table.get("arms") or {}
        for g in (g for g in groups if g.split == "test"):
            tried = (f"chosen among {table['configurations']} configurations on the dev split" if dev else
                     f"one of {len(arms)} arms compared (no choice)" if arms else "the only configuration (no choice)")
            lines += [f"## Test split: {g.label}", "", f"Reported once, {tried}; one evaluation per seed.", "",
                      *_table(g, summaries[(g.label, g.split)]), ""]
        if arms:
            lines += _arms(table, parent, groups, summaries, metrics)
        lines += stage_tables(client, table)
    else:
        groups = _experiment(client, name)
        if not groups:
            raise ReportError(f"experiment {name!r} has no finished evaluate runs")
        metrics = _metric_names(groups)
        summaries = {(g.label, g.split): summarize(g, metrics) for g in groups}
        lines = [f"# Experiment `{name}`", "",
                 "Evaluate runs grouped by pipeline and split; a seed is the pipeline's `seed` (else one run).", ""]
        for g in groups:
            lines += [f"## {g.label}, {g.split} split", "", *_table(g, summaries[(g.label, g.split)]), ""]
    lines += ["Intervals over seeds: " + "; ".join(_methods(summaries)) + ". A verdict is \"better\" or"
              " \"worse\" only when the interval excludes no change (0 for a gain, 0.5 for a win rate) and there are at"
              " least two seeds; otherwise \"inconclusive\".", ""]
    text = "\n".join(lines)
    target = output_dir / "reports" / name.replace("/", "-")
    with atomic_dir(target) as tmp:
        (tmp / "report.md").write_text(text)
        plot(groups, summaries, metrics, tmp / "seeds.png")
    return Report(name, text, target.resolve())


def _methods(summaries: dict) -> list[str]:
    """The interval methods the tables use, each once."""
    found = [s.method for per_metric in summaries.values() for s, _ in per_metric.values()]
    return list(dict.fromkeys(found)) or ["none"]


def plot(groups: list[Group], summaries: dict, metrics: list[str], path: Path) -> None:
    """One panel per headline metric: each group's seeds (dots) and their mean with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if headline(m)][:4] or metrics[:1]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(3 + 3.2 * max(1, len(shown)), 1.2 + 0.5 * len(groups)),
                             squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], shown):
        for y, g in enumerate(groups):
            values = [m[metric] for m in g.metrics.values() if metric in m]
            if not values:
                continue
            s = summaries[(g.label, g.split)][metric][0]
            ax.scatter(values, [y] * len(values), s=12, color="grey", zorder=2)
            err = [[s.mean - s.low], [s.high - s.mean]] if s.low is not None else None
            ax.errorbar([s.mean], [y], xerr=err, fmt="o", capsize=4, zorder=3)
        spec = headline(metric)
        if spec:
            ax.axvline(spec[1], color="grey", linestyle="--", linewidth=1)
        ax.set_title(textwrap.fill(spec[0] if spec else metric, 30), fontsize="small")
    axes[0][0].set_yticks(range(len(groups)), [f"{g.label[:40]} ({g.split})" for g in groups])  # shared by every panel
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
