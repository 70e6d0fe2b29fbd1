"""`alignray report`: the across-seed tables and plot, read from a real MLflow store that holds a
sweep's parent run (with its trials.json) and evaluate runs, as `alignray sweep` leaves them."""

from __future__ import annotations

import re

import mlflow
import pytest
from alignray.cli import main
from alignray.evaluate.summary import ReportError, report
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


def test_unknown_names_and_empty_stores_say_what_to_do(store, capsys):
    uri, folder = store
    with pytest.raises(ReportError, match="'nope' is neither a sweep nor an MLflow experiment"):
        report("nope", uri, folder)
    assert main(["report", "nope", "--output-dir", str(folder)]) == 2
    assert "is neither a sweep nor an MLflow experiment" in capsys.readouterr().err
    assert main(["report", "kl", "--output-dir", str(folder / "elsewhere")]) == 2
    assert "no MLflow store at sqlite:///" in capsys.readouterr().err
