"""`alignray report`: the across-seed tables and plot, read from a real MLflow store that holds a
sweep's parent run (with its trials.json) and evaluate runs, as `alignray sweep` leaves them."""

from __future__ import annotations

import re

import mlflow
import pytest
from alignray.cli import main
from alignray.evaluate.summary import ReportError, report
from alignray.tracking import HOST_TAG
from mlflow.tracking import MlflowClient


def _evaluate_run(client, experiment, seed, split, metrics, pipeline="rlcd-x", degenerate=False):
    run = client.create_run(experiment, tags={"alignray.stage": "evaluate", "alignray.pipeline": pipeline,
                                              "alignray.seed": str(seed), "alignray.degenerate": str(degenerate).lower()})
    client.log_param(run.info.run_id, "split", split)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _metrics(gain, half=0.04, win=0.55):
    return {"refusal_gain.start": gain, "refusal_gain_low.start": gain - half, "refusal_gain_high.start": gain + half,
            "win_rate.model.start": win, "prompts": 40.0}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    gains = {"kl=0.05": (0.02, 0.01, 0.03), "kl=0.2": (0.08, 0.10, 0.12)}
    trials = []
    for config, values in gains.items():
        for seed, gain in enumerate(values):
            trial = {"trial_id": f"{config}-{seed}", "overrides": {"seed": seed, "kl": float(config[3:])},
                     "status": "TERMINATED", "dev_run": _evaluate_run(client, experiment, seed, "dev", _metrics(gain))}
            if config == "kl=0.2":
                trial["test_run"] = _evaluate_run(client, experiment, seed, "test", _metrics(gain - 0.01, win=0.5),
                                                  degenerate=seed == 2)
            trials.append(trial)
    parent = client.create_run(experiment, tags={"alignray.sweep": "kl"})
    client.log_dict(parent.info.run_id, {"selection": "the best of 2 configurations of sweep kl by ...", "chosen": "kl=0.2",
                                         "configurations": 2, "select": {"metric": "refusal_gain.start", "mode": "max"},
                                         "trials": trials}, "trials.json")
    return uri, tmp_path


def test_a_sweeps_report_has_every_configuration_on_dev_and_the_choice_on_test(store):
    uri, folder = store
    done = report("kl", uri, folder)
    text = done.markdown
    assert "6 trials in 2 configurations" in text
    assert re.search(r"\| kl=0.05 \| 3 \| 0 of 3 \| \+0\.020 \[", text) and "| kl=0.2 (chosen) | 3 | 0 of 3 | +0.100 [" in text
    assert "the policy's answers look degenerate in 1 of 3 seeds" in text
    assert "## Test split: kl=0.2" in text and "chosen among 2 configurations on the dev split" in text
    [row] = [line for line in text.splitlines() if line.startswith("| refusal gain on harmful prompts vs start |")]
    # seeds +0.07, +0.09, +0.11: t half-width 0.0497, widened by the prompts' 0.04 -> 0.0638
    assert row.startswith("| refusal gain on harmful prompts vs start | +0.070 | +0.090 | +0.110 | +0.090 [+0.026, +0.154],"
                          " +0.070 to +0.110 | better |")
    [win] = [line for line in text.splitlines() if line.startswith("| AI-judge win rate vs start |")]
    assert win.endswith("| inconclusive |")  # 0.5 every seed, no interval of its own: zero spread, no change
    assert "| 0.500 | 0.500 | 0.500 | 0.500 " in win  # a rate prints unsigned; a gain with its sign
    assert "widened by the seeds' mean prompt interval" in text
    assert (folder / "reports" / "kl" / "report.md").read_text() == text
    assert (folder / "reports" / "kl" / "seeds.png").stat().st_size > 1000


def test_an_experiments_report_groups_evaluate_runs_by_pipeline_and_split(store):
    uri, folder = store
    text = report("e", uri, folder).markdown
    assert "## rlcd-x, dev split" in text and "## rlcd-x, test split" in text
    assert "| metric | seed 0 | seed 1 | seed 2 |" in text  # the later run of a seed replaces an earlier one


def test_one_seed_is_never_a_verdict(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("one", artifact_location=(tmp_path / "art").as_uri())
    _evaluate_run(client, experiment, 0, "test", _metrics(0.3, half=0.05))
    text = report("one", uri, tmp_path).markdown
    assert "+0.300 [+0.250, +0.350], +0.300 to +0.300 | inconclusive |" in text
    assert "one seed: its prompts' interval only" in text


def test_intervals_stay_within_what_a_rate_or_a_change_can_be(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("edge", artifact_location=(tmp_path / "art").as_uri())
    for seed in range(3):  # every seed refuses everything: gain +1, win rate 1, each with a wide interval
        _evaluate_run(client, experiment, seed, "test", _metrics(1.0, half=0.2, win=1.0))
    text = report("edge", uri, tmp_path).markdown
    assert "+1.000 [+0.800, +1.000]" in text and "| +1.000 | +1.000 | +1.000 | +1.000 [" in text
    assert "| AI-judge win rate vs start | 1.000 | 1.000 | 1.000 | 1.000 " in text  # a rate, unsigned


def test_unknown_names_and_empty_stores_say_what_to_do(store, capsys):
    uri, folder = store
    with pytest.raises(ReportError, match="'nope' is neither a sweep nor an MLflow experiment"):
        report("nope", uri, folder)
    assert main(["report", "nope", "--output-dir", str(folder)]) == 2
    assert "is neither a sweep nor an MLflow experiment" in capsys.readouterr().err
    assert main(["report", "kl", "--output-dir", str(folder / "elsewhere")]) == 2
    assert "no MLflow store at sqlite:///" in capsys.readouterr().err


def _stage_run(client, experiment, parent, trial, start_s, seconds, finished=True):
    """A stage run of a sweep's trial, nested under the sweep's parent run, `seconds` long."""
    start = (1_800_000_000 + start_s) * 1000  # ms; MLflow takes a start time of 0 for "now"
    run = client.create_run(experiment, start_time=start, tags={"mlflow.parentRunId": parent, "alignray.trial": trial})
    if finished:
        client.set_terminated(run.info.run_id, end_time=start + seconds * 1000)


@pytest.fixture
def arms_store(tmp_path):
    """An arms sweep as `alignray sweep` leaves it: rdpo (3 seeds) against the baseline dpo (2
    seeds), each trial's stage runs nested under the parent; dpo's seed-1 trial reused its
    simulation (no run of its own), and one stage run of rdpo's seed 0 never finished."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("arms", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, tags={"alignray.sweep": "dpo-vs-rdpo"}).info.run_id
    gains = {"dpo": (0.02, 0.04), "rdpo": (0.10, 0.12, 0.14)}
    stages = {("dpo", 0): (100, 50, 10), ("dpo", 1): (60, 10), ("rdpo", 0): (60, 50, 10), ("rdpo", 1): (100, 50, 30),
              ("rdpo", 2): (200, 30, 10)}
    trials = []
    for arm, values in gains.items():
        for seed, gain in enumerate(values):
            trial = f"{arm}-{seed}"
            for k, seconds in enumerate(stages[(arm, seed)]):
                _stage_run(client, experiment, parent, trial, 1000 * k, seconds)
            trials.append({"trial_id": trial, "overrides": {"arm": arm, "seed": seed}, "status": "TERMINATED",
                           "test_run": _evaluate_run(client, experiment, seed, "test", _metrics(gain, win=0.5),
                                                     pipeline=f"x-{arm}")})
    _stage_run(client, experiment, parent, "rdpo-0", 5000, 999, finished=False)
    client.log_dict(parent, {"selection": "no choice: 2 arms compared on the test split (baseline dpo), 5 trials",
                             "chosen": None, "configurations": 2, "select": None, "baseline": "dpo",
                             "arms": {"dpo": {"pipeline": "rdpo", "name": "x-dpo"},
                                      "rdpo": {"pipeline": "rdpo", "name": "x-rdpo"}},
                             "trials": trials}, "trials.json")
    return uri, tmp_path


def test_an_arms_sweeps_report_compares_every_arm_with_the_baseline(arms_store):
    uri, folder = arms_store
    text = report("dpo-vs-rdpo", uri, folder).markdown
    assert "## Test split: dpo" in text and "## Test split: rdpo" in text and "one of 2 arms compared (no choice)" in text
    assert "## Arms against the baseline arm dpo (test split)" in text
    # wall time: each trial's own finished stage runs; dpo's seed 1 reused its simulation (0 s)
    assert "| dpo (baseline) | rdpo | 2 | 1.9 min (1.2 to 2.7 min) |" in text  # 160 s and 70 s
    assert "| rdpo | rdpo | 3 | 3.0 min (2.0 to 4.0 min) |" in text  # 120, 180 and 240 s
    [gain] = [line for line in text.splitlines() if line.startswith("| rdpo | refusal gain on harmful prompts vs start |")]
    # +0.12 - +0.03: Welch over seeds (0.10, 0.12, 0.14) and (0.02, 0.04): df 2.88, half 0.0498; widened
    # by both arms' prompt half-widths 0.04: sqrt(0.0498² + 0.04² + 0.04²) = 0.0753
    assert gain == "| rdpo | refusal gain on harmful prompts vs start | +0.120 | +0.030 | +0.090 [+0.015, +0.165] | better |"
    [win] = [line for line in text.splitlines() if line.startswith("| rdpo | AI-judge win rate vs start |")]
    assert win == "| rdpo | AI-judge win rate vs start | 0.500 | 0.500 | +0.000 no interval | inconclusive |"
    assert "Welch t 95% over the two arms' seeds, widened by both arms' mean prompt intervals" in text
    assert "no interval: the seeds do not vary" in text and "counts 0 here" in text
    assert (folder / "reports" / "dpo-vs-rdpo" / "seeds.png").stat().st_size > 1000


def test_a_reward_gain_is_not_clipped_like_a_rate_and_a_net_gain_spans_two(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("reward", artifact_location=(tmp_path / "art").as_uri())
    for seed, gain in enumerate((2.5, 3.0, 3.5)):  # rewards are unbounded: +3 is a possible gain
        _evaluate_run(client, experiment, seed, "test", {
            "reward_gain.start": gain, "reward_gain_low.start": gain - 0.5, "reward_gain_high.start": gain + 0.5,
            "net_refusal_gain.start": 1.5, "net_refusal_gain_low.start": 1.2, "net_refusal_gain_high.start": 1.8})
    text = report("reward", uri, tmp_path).markdown
    reward = next(line for line in text.splitlines() if line.startswith("| mean reward gain under the preference model"))
    assert "+3.000 [+" in reward and "+1.000]" not in reward and reward.endswith("| better |")
    net = next(line for line in text.splitlines() if line.startswith("| net refusal gain"))
    assert "+1.500 [+" in net and net.endswith("| better |")


def test_stage_tables_time_every_stage_and_show_pairs_losses_and_head_accuracies(tmp_path):
    from alignray.evaluate.summary import stage_tables

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("stages", artifact_location=(tmp_path / "art").as_uri())

    def run(seconds, **metrics):
        start = 1_800_000_000_000
        r = client.create_run(experiment, start_time=start)
        for key, value in metrics.items():
            client.log_metric(r.info.run_id, key, value)
        client.set_terminated(r.info.run_id, end_time=start + seconds * 1000)
        return r.info.run_id

    shared = run(120, pairs=300, dropped_truncated=84)  # one simulation both morlaif seeds reused
    client.set_tag(shared, HOST_TAG, "CPU A | CPU B")  # begun on one machine, resumed on another
    trials = [{"trial_id": f"t{seed}", "overrides": {"arm": "morlaif", "seed": seed},
               "stage_runs": {"simulate": shared,
                              "preference": run(240 + 60 * seed, eval_accuracy=0.6 + 0.1 * seed,
                                                eval_accuracy_toxicity=0.7, eval_accuracy_empathy=0.5 + 0.2 * seed),
                              "ppo": run(600 + 3600 * seed, active_seconds=600), "evaluate": run(30)}} for seed in (0, 1)]
    trials.append({"trial_id": "old", "overrides": {"arm": "rlaif", "seed": 0}})  # recorded before stage_runs
    text = "\n".join(stage_tables(client, {"trials": trials}))
    assert "| configuration | simulate (min) | preference (min) | ppo (min) | preference pairs |" in text
    row = next(line for line in text.splitlines() if line.startswith("| morlaif |"))
    assert row == ("| morlaif | 2.0 (2.0 to 2.0) | 4.5 (4.0 to 5.0) | 10.0 (10.0 to 10.0) | 300 (300 to 300) |"
                   " 84 (84 to 84) | – | 0.650 (0.600 to 0.700) |")
    assert "toxicity 0.700 (0.700 to 0.700); empathy 0.600 (0.500 to 0.700)" in text
    # a run two trials share counts once; runs from before runs noted their CPU are said to be so
    assert "CPUs the stage runs of morlaif ran on (`auto` is bfloat16 where it is native, else float32): CPU A (1 of 7 runs);" \
           " CPU B (1 of 7 runs); not recorded (6 of 7 runs)." in text
    assert "| rlaif |" not in text  # nothing recorded: no row rather than a made-up one
    assert stage_tables(client, {"trials": trials[2:]}) == []
