"""`alignray sweep` and `alignray report`: the sweep section (and every arm) is checked before
anything runs; a stage that concurrent trials share runs once (a real MLflow store, two
processes); the choice of a configuration; and, slow, a sweep of two arms x two seeds of the tiny
pipeline on Ray Tune whose driver is killed between trials and resumed, a sweep that chooses on
the dev split and reports on the test split (after a Ctrl-C that stops it with nothing chosen), and
the report of both."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from alignray.cli import main
from alignray.config import ConfigError, PipelineConfig, load_config
from alignray.io import one_of_locks
from alignray.pipelines.sweep import Trial, choose, peak_cpus, trial_config

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "pipelines"
SWEEP = CONFIGS / "context_distill_sweep_tiny.yaml"
ARMS = CONFIGS / "rlcd_vs_baselines_tiny.yaml"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep.grid={}"], r"give the fields to vary"),
        (["sweep.grid={seed: []}"], r"grid.seed: give at least one value"),
        (["sweep.random={seed: {choice: [1, 2]}}"], r"\[.seed.\]: a field is either in grid or in random"),
        (["sweep.grid={data.limit: [6]}", "sweep.random={seed: {choice: [1, 2]}}"], r"random.seed: give seeds as a grid"),
        (["sweep.random={stages.sft.trainer.learning_rate: {loguniform: [0, 1]}}"], r"loguniform: the bounds must be positive"),
        (["sweep.random={stages.sft.trainer.learning_rate: {uniform: [1, 2], choice: [3]}}"], r"exactly one of"),
        (["sweep.arms={a: {}, b: {}}", "sweep.baseline=c"], r"baseline: 'c' is not an arm \(arms: a, b\)"),
        (["sweep.baseline=c"], r"baseline: 'c' is not an arm \(arms: none\)"),
        (["sweep.arms={a: {}}", "sweep.select.metric=x"], r"select: a sweep with arms compares them on the test split"
                                                            r" and chooses nothing; run the variant sweep"),
        (["sweep.arms={a: {}}", "sweep.grid={seed: [0], data.limit: [5, 6]}"], r"with arms only the seed may vary"),
        (["sweep.arms={a: {seed: 3}}"], r"arms.a.seed: set by the sweep for every arm alike; remove it \(seeds go in"),
        (["sweep.arms={a b: {}}"], r"arms.a b: an arm's name is letters, digits"),
        (["sweep.grid={arm: [a]}"], r"'arm' is the sweep's own dimension"),
    ],
)
def test_bad_sweep_sections_are_named_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SWEEP, overrides, PipelineConfig)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep.grid={seed: [0, 1], stages.sft.trainer.learning_rate: [1.0e-4, 1.0e-3]}"], r"add sweep.select"),
        (["sweep.select.metric=win_rate.model.x"], r"only the seed varies, so there is nothing to choose"),
        (["sweep.grid={stages.sft.trainer.learning_rate: [1.0e-4, 1.0e-3]}", "sweep.select.metric=x"],
         r"sweep.select chooses on the dev split: set dev_data"),
        (["sweep.grid={stages.sft.trainer.max_steps: [3, 0]}", "sweep.select.metric=x", "dev_data.source=sample[10:14]"],
         r"stages.sft \(sft stage\): field 'trainer.max_steps'"),
        (["sweep.grid={stages.sft.trainer.nothing: [1, 2]}", "sweep.select.metric=x", "dev_data.source=sample[10:14]"],
         r"unknown field 'trainer.nothing'"),
        (["sweep.grid={data.limit.x: [1, 2]}", "sweep.select.metric=x", "dev_data.source=sample[10:14]"],
         r"sweep field 'data.limit.x': 'data.limit' is not a section"),
    ],
)
def test_every_trial_config_is_checked_before_tune_starts(overrides, message, tmp_path):
    from alignray.pipelines.sweep import _base_tree, _check

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = load_config(SWEEP, [*overrides, f"output_dir={tmp_path}"], PipelineConfig)
    with pytest.raises(ConfigError, match=message):
        _check(cfg, _base_tree(cfg))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep.arms.context_distill.stages.ppo.ppo.iterations=1"],
         r"sweep.arms.context_distill: stages: \['ppo'\] not in the context_distill pipeline"),
        (["sweep.arms.rlaif.stages.ppo.ppo.iterations=0"],
         r"sweep.arms.rlaif: invalid config:\n  stages.ppo \(ppo stage\): field 'ppo.iterations'"),
        (["sweep.arms.rlaif.nothing=1"], r"sweep.arms.rlaif: unknown field 'nothing'"),
        (["sweep.arms.rlaif.pipeline=ppo"], r"sweep.arms.rlaif: field 'pipeline'"),
        (["sweep.arms.rlaif.name=x", "sweep.arms.context_distill.name=x"],
         r"sweep.arms.rlaif and sweep.arms.context_distill: both name their pipeline 'x'; give each arm its own `name`"),
    ],
)
def test_every_arm_is_checked_before_tune_starts(overrides, message, tmp_path):
    from alignray.pipelines.sweep import _base_tree, _check

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = load_config(ARMS, [*overrides, f"output_dir={tmp_path}"], PipelineConfig)
    with pytest.raises(ConfigError, match=message):
        _check(cfg, _base_tree(cfg))


def test_arms_of_other_recipes_keep_the_base_stages_they_have_and_share_a_simulation(tmp_path):
    from alignray.pipelines.run import stage_configs, stage_key
    from alignray.pipelines.sweep import _base_tree, _check, arm_configs

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = load_config(ARMS, [f"output_dir={tmp_path}"], PipelineConfig)
    base = _base_tree(cfg)
    _check(cfg, base)
    arms = arm_configs(cfg, base)
    assert {a: (c.pipeline, c.label) for a, c in arms.items()} == {
        "rlcd": ("rlcd", "rlcd-vs-baselines-tiny-rlcd"), "rlaif": ("rlaif", "rlcd-vs-baselines-tiny-rlaif"),
        "context_distill": ("context_distill", "rlcd-vs-baselines-tiny-context_distill")}
    assert arms["rlaif"].stages == arms["rlcd"].stages  # the same recipe's stages: all kept
    assert sorted(arms["context_distill"].stages) == ["evaluate", "sft"]  # preference and ppo dropped, sft its own
    assert arms["context_distill"].stages["evaluate"] == cfg.stages["evaluate"]
    assert cfg.sweep.baseline_arm == "rlcd" and cfg.stages["ppo"]["ppo"]["iterations"] == 2  # the base is not changed

    def simulation(arm: str, seed: int) -> str:
        step, config = stage_configs(trial_config(base, {"arm": arm, "seed": seed}, cfg.sweep.arms))[0]
        return stage_key(step, config)

    # the arm's name is not in the stage key: context distillation reuses RLCD's simulation, seed by seed
    assert simulation("context_distill", 0) == simulation("rlcd", 0) != simulation("rlcd", 1)
    assert simulation("rlaif", 0) != simulation("rlcd", 0)  # another method of simulation


SWEEPS = CONFIGS.parent / "sweeps"


@pytest.mark.parametrize("config", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_comparison_sweeps_are_valid_and_keep_their_store_outside_the_checkout(config, tmp_path):
    from alignray.pipelines.sweep import _base_tree, _check

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = load_config(config, [], PipelineConfig)
    _check(cfg, _base_tree(cfg))  # every trial of every arm plans
    assert cfg.sweep.name is None and cfg.name == config.stem.replace("_", "-")  # the report's name
    checkout = CONFIGS.parents[2]
    assert not (checkout / cfg.output_dir).resolve().is_relative_to(checkout)
    assert cfg.sweep.record == Path("results")  # its trials are kept in the checkout, apart from the store


def test_the_comparison_sweeps_share_the_stages_their_headers_say(tmp_path):
    """In one store, a stage two sweeps configure alike runs once: RRHF vs PPO reuses the RLCD
    table's RLCD simulation and preference model (so its PPO arm is the table's RLCD run), and
    MORLAIF vs RLAIF the table's RLAIF simulation."""
    from alignray.pipelines.run import stage_configs, stage_key
    from alignray.pipelines.sweep import _base_tree

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")

    def first_key(sweep: str, arm: str, seed: int) -> str:
        cfg = load_config(SWEEPS / f"{sweep}.yaml", [], PipelineConfig)
        step, config = stage_configs(trial_config(_base_tree(cfg), {"arm": arm, "seed": seed}, cfg.sweep.arms))[0]
        return stage_key(step, config)

    table = {arm: first_key("rlcd_table_smollm2", arm, 1) for arm in ("rlcd", "rlaif", "context_distill")}
    assert first_key("rrhf_vs_ppo_smollm2", "ppo", 1) == first_key("rrhf_vs_ppo_smollm2", "rrhf", 1) == table["rlcd"]
    assert table["context_distill"] == table["rlcd"] != table["rlaif"]
    assert first_key("morlaif_vs_rlaif_smollm2", "rlaif", 1) == table["rlaif"]
    assert first_key("rdpo_vs_dpo_smollm2", "dpo", 0) == first_key("rdpo_vs_dpo_smollm2", "rdpo", 0)

    def keys(sweep: str, arm: str) -> list[str]:
        cfg = load_config(SWEEPS / f"{sweep}.yaml", [], PipelineConfig)
        return [stage_key(*sc) for sc in stage_configs(trial_config(_base_tree(cfg), {"arm": arm, "seed": 0}, cfg.sweep.arms))]

    # the table's rlcd_best arm is the variant sweep's choice: the same simulation, preference model and PPO
    variants = load_config(SWEEPS / "rlcd_variants_smollm2.yaml", [], PipelineConfig)
    chosen = {"principles": "harmlessness_demonstrations", "affix_placement": "demonstration"}
    variant = [stage_key(*sc) for sc in stage_configs(trial_config(
        _base_tree(variants), {"stages.simulate.simulation": chosen, "seed": 0}))]
    assert variant[:3] == keys("rlcd_table_smollm2", "rlcd_best")[:3]

    # RLOO vs PPO: its PPO arm trains RRHF vs PPO's (simulation, preference model, PPO; each sweep evaluates
    # under its own name); RLOO shares the data and the reward, not the PPO stage
    ppo, rloo = keys("rloo_vs_ppo_smollm2", "ppo"), keys("rloo_vs_ppo_smollm2", "rloo")
    assert ppo[:3] == keys("rrhf_vs_ppo_smollm2", "ppo")[:3] and rloo[:2] == ppo[:2] and rloo[2] != ppo[2]


def test_a_trial_config_is_the_base_with_its_overrides(tmp_path):
    from alignray.pipelines.sweep import _base_tree

    cfg = load_config(SWEEP, [f"output_dir={tmp_path}"], PipelineConfig)
    base = _base_tree(cfg)
    assert "sweep" not in base and Path(base["output_dir"]).is_absolute() and base["tracking"]["uri"].startswith("sqlite:///")
    trial = trial_config(base, {"seed": 2, "stages.sft.trainer.learning_rate": 3e-4}, evaluate_on="test")
    assert trial.seed == 2 and trial.stages["sft"]["trainer"]["learning_rate"] == 3e-4 and trial.sweep is None
    assert cfg.stages["sft"]["trainer"]["learning_rate"] == 1e-4  # the base is not changed
    assert peak_cpus(cfg) == 1  # one sampler, or one trainer worker, at a time


def test_a_trial_record_is_named_by_its_configuration_and_keyed_by_what_changes_its_results(tmp_path):
    from alignray.pipelines import records
    from alignray.pipelines.sweep import _base_tree

    def trial(where, **extra):
        base = _base_tree(load_config(SWEEP, [f"output_dir={where}"], PipelineConfig))
        return trial_config(base, {"arm": "a", "seed": 1}, {"a": {}}, **{"evaluate_on": "test", **extra})

    here = trial(tmp_path / "one")
    # another machine's store, parent run and tags: the same trial
    moved = trial(tmp_path / "two", **{"tracking.parent_run": "abc", "tracking.tags": {"x": "y"}})
    assert records.fingerprint(here) == records.fingerprint(moved)
    # another sweep's arm of the same config, named after its own sweep: the same trial too
    assert records.fingerprint(here) == records.fingerprint(trial(tmp_path / "one", name="other-sweep-a"))
    assert records.fingerprint(here) != records.fingerprint(trial(tmp_path / "one", **{"stages.sft.trainer.max_steps": 9}))
    assert records.fingerprint(here) != records.fingerprint(
        trial(tmp_path / "one", evaluate_on="dev", dev_data={"source": "sample", "skip": 10, "limit": 4}))
    target = records.path(tmp_path / "rec", "s", {"arm": "a", "seed": 1, "stages.sft.trainer.max_steps": 2}, "test")
    assert target == tmp_path / "rec" / "s" / "a_stages.sft.trainer.max_steps=2.seed-1.test.json"
    target.parent.mkdir(parents=True)
    for text, problem in (("{", "not JSON"), ('{"fingerprint": "f", "runs": {}}', "it lacks fingerprint, runs or runs.evaluate")):
        target.write_text(text)
        with pytest.raises(ConfigError, match=rf"{re.escape(str(target))}: not a sweep trial's record: {problem}.*delete it"):
            records.load(target)
    assert records.load(target.with_name("none.json")) is None


def test_a_restored_run_of_the_trials_own_gets_the_records_cpu_where_it_named_none(tmp_path):
    from alignray.pipelines import records
    from alignray.tracking import HOST_TAG

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config(SWEEP, [f"output_dir={tmp_path}"], PipelineConfig)

    def entry(run_id, own, tags):
        return {"run_id": run_id, "experiment": "old", "run_name": run_id, "own": own, "status": "FINISHED",
                "start_time": 1_800_000_000_000, "end_time": 1_800_000_060_000, "tags": tags, "params": {}, "metrics": {}}

    record = {"host": "Old CPU", "runs": {"simulate": entry("a", True, {}), "preference": entry("b", False, {}),
                                          "evaluate": entry("c", True, {HOST_TAG: "Newer CPU"})}}
    restored = records.restore(record, "r.json", cfg, parent="p", trial_id="t")
    hosts = {stage: mlflow.get_run(run_id).data.tags.get(HOST_TAG) for stage, run_id in restored.items()}
    # the trial's own ran where the record was written; a reused run may have run anywhere
    assert hosts == {"simulate": "Old CPU", "preference": None, "evaluate": "Newer CPU"}


def test_a_trial_without_a_record_of_its_own_takes_another_sweeps_of_the_same_config_as_reused(tmp_path):
    from alignray import tracking
    from alignray.evaluate.summary import TRIAL_TAG
    from alignray.pipelines import records
    from alignray.pipelines.sweep import _base_tree

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = _base_tree(load_config(SWEEP, [f"output_dir={tmp_path}"], PipelineConfig))
    ours, theirs = (trial_config(base, {"arm": "a", "seed": 1}, {"a": {}}, name=name, evaluate_on="test")
                    for name in ("ours-a", "theirs-a"))
    entry = {"experiment": "old", "own": True, "status": "FINISHED", "start_time": 1_800_000_000_000,
             "end_time": 1_800_000_060_000, "tags": {}, "params": {}, "metrics": {"m": 1.0}}
    record = {"fingerprint": records.fingerprint(theirs), "host": "Their CPU",
              "runs": {s: {**entry, "run_id": s, "run_name": s} for s in ("simulate", "evaluate")}}
    folder = tmp_path / "results"
    (folder / "theirs").mkdir(parents=True)
    (folder / "theirs" / "a.seed-1.test.json").write_text(json.dumps(record))
    (folder / "unrelated").mkdir()
    (folder / "unrelated" / "a.seed-1.test.json").write_text(json.dumps({**record, "fingerprint": "another"}))
    assert records.elsewhere(folder, "ours", records.fingerprint(ours)) == (folder / "theirs" / "a.seed-1.test.json", record)
    assert records.elsewhere(folder, "theirs", records.fingerprint(theirs)) is None  # a sweep's own folder is not "elsewhere"
    other = trial_config(base, {"arm": "a", "seed": 2}, {"a": {}}, name="ours-a", evaluate_on="test")
    assert records.elsewhere(folder, "ours", records.fingerprint(other)) is None  # another seed: another config
    restored = records.restore(record, "a.seed-1.test.json", ours, parent="p", trial_id="t", reused=True)
    runs = {stage: mlflow.get_run(run_id) for stage, run_id in restored.items()}
    # they ran in the other sweep: standalone here, not nested under this sweep's parent, still naming their CPU
    assert not any(tracking.PARENT_TAG in r.data.tags or TRIAL_TAG in r.data.tags for r in runs.values())
    assert {r.data.tags[tracking.HOST_TAG] for r in runs.values()} == {"Their CPU"}
    assert runs["evaluate"].data.metrics == {"m": 1.0}


def test_the_configuration_with_the_best_mean_over_its_seeds_is_chosen():
    def trial(lr, seed, value, status="TERMINATED"):
        return Trial(f"t{lr}{seed}", {"seed": seed, "lr": lr}, status, metrics={"m": value})

    trials = [trial(1, 0, 0.9), trial(1, 1, 0.1), trial(2, 0, 0.6), trial(2, 1, 0.5), trial(3, 0, 1.0, "ERROR")]
    best, means, ties = choose(trials, "m", "max")
    assert best == "lr=2" and means == {"lr=1": pytest.approx(0.5), "lr=2": pytest.approx(0.55)} and ties == []
    assert choose(trials, "m", "min")[0] == "lr=1"
    # equal dev means: the configuration listed first wins, and the tie is named
    even = [trial(1, 0, 0.25), trial(2, 0, 0.5), trial(3, 0, 0.5), trial(4, 0, 0.5)]
    assert choose(even, "m", "max")[::2] == ("lr=2", ["lr=3", "lr=4"])
    assert choose(even[::-1], "m", "max")[0] == "lr=2"  # by trial id (grid order), whatever order results come in
    with pytest.raises(ConfigError, match=r"sweep.select.metric 'nope': no finished trial has it \(their metrics: m\)"):
        choose(trials, "nope", "max")


def _claim(args):
    """Run a stage of key `key` through the pipeline's stage cache (in a thread of its own: the
    lock is a flock of a file opened anew, which two threads contend for as two processes do)."""
    uri, key, locks, marker = args
    from alignray.pipelines.run import once

    def produce():
        with open(marker, "a") as f:
            f.write(f"{threading.get_ident()}\n")
        time.sleep(1.5)  # long enough for the other process to ask meanwhile
        with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("claims").experiment_id) as run:
            pass
        output = Path(locks).parent / "out" / run.info.run_id  # a stage's output is a file that exists
        output.write_text("done")
        return str(output), run.info.run_id

    output, run_id, reused = once(key, "claims", Path(locks), produce, {"alignray.stage": "s"})
    return output, run_id, reused


def test_trials_take_turns_in_the_sweeps_slots(tmp_path):
    # Tune restarts every unfinished trial at once when a sweep resumes; the slot locks keep them to the limit
    slots = [tmp_path / "locks" / f"slot{k}.lock" for k in range(2)]
    inside, most, held = [0], [0], []
    guard = threading.Lock()

    def trial(_):
        with one_of_locks(slots, poll_s=0.05) as slot:
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                held.append(slot.name)
            time.sleep(0.3)
            with guard:
                inside[0] -= 1

    with ThreadPoolExecutor(5) as pool:
        list(pool.map(trial, range(5)))
    assert most[0] == 2 and len(held) == 5 and set(held) == {"slot0.lock", "slot1.lock"}


def test_a_stage_that_concurrent_trials_share_runs_once(tmp_path):
    import mlflow.tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("claims", artifact_location=(tmp_path / "art").as_uri())
    (tmp_path / "out").mkdir()
    marker = tmp_path / "produced.txt"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_claim, [(uri, "k" * 64, str(tmp_path / "locks"), str(marker))] * 2))
    assert len(marker.read_text().split()) == 1  # produced once
    assert sorted(r[2] for r in results) == [False, True]  # one ran it, the other reused it
    assert results[0][:2] == results[1][:2]
    client = mlflow.tracking.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("claims").experiment_id])
    assert run.data.tags["alignray.stage_key"] == "k" * 64


def _sweep_command(*items):
    alignray = Path(sys.executable).with_name("alignray")
    return [str(alignray), "sweep", str(SWEEP), *items]


def _runs(store: Path, experiment: str = "alignray-sweep-tiny"):
    client = mlflow.tracking.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    return tmp_path_factory.mktemp("sweeps")


@pytest.mark.slow
def test_an_arms_sweep_survives_its_driver_being_killed_and_compares_its_arms(sweep_store, tmp_path, capsys):
    store, record = sweep_store, tmp_path / "record"
    # SFT on every CPU of the machine (2): a trial that held a CPU share itself would leave it waiting
    command = _sweep_command(f"output_dir={store}", f"sweep.record={record}", "sweep.max_concurrent_trials=1",
                             "stages.sft.trainer.cpus_per_worker=2",
                             "sweep.grid={seed: [0, 1]}", "sweep.baseline=steps3",
                             "sweep.arms={steps3: {}, steps2: {stages: {sft: {trainer: {max_steps: 2}}}}}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded cluster
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, env=env)
    printed, finished = [], None
    for line in first.stdout:
        printed.append(line)
        if (m := re.match(r"trial (\S+) finished \(1 of 4", line)):
            finished = m.group(1)
            time.sleep(2)
            os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
            killed_at = time.time() * 1000
            break
    first.wait(timeout=60)
    assert finished, "".join(printed)

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming" in second.stdout
    started = re.findall(r"trial (\S+) started", second.stdout)
    assert finished not in started and len(started) == 3  # the finished trial is kept, the other three run

    client, runs = _runs(store)
    [parent] = [r for r in runs if r.data.tags.get("alignray.sweep") == "context_distill-sweep-tiny"]
    assert parent.info.status == "FINISHED"
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    by_stage = {s: [r for r in nested if r.data.tags.get("alignray.stage") == s] for s in ("simulate", "sft", "evaluate")}
    # pinned simulation seed: the four trials of both arms share it (an arm's name is not in its key)
    assert len(by_stage["simulate"]) == 1
    sfts = sorted((r.data.params["trainer.max_steps"], r.data.params["trainer.seed"]) for r in by_stage["sft"])
    assert sfts == [("2", "0"), ("2", "1"), ("3", "0"), ("3", "1")]
    registered = {r.data.tags["alignray.stage_output"].split("/")[1] for r in by_stage["sft"]}
    assert registered == {"context_distill-sweep-tiny-steps2-sft", "context_distill-sweep-tiny-steps3-sft"}
    overrides = sorted((o["arm"], o["seed"]) for o in (json.loads(r.data.tags["alignray.overrides"]) for r in by_stage["evaluate"]))
    assert overrides == [("steps2", 0), ("steps2", 1), ("steps3", 0), ("steps3", 1)]
    assert all(r.data.params["split"] == "test" for r in by_stage["evaluate"])
    assert all(r.info.start_time < killed_at for r in nested if r.data.tags["alignray.trial"] == finished)
    # one trial at a time after the resume too, however many Tune restarted at once: their stage runs never overlap
    spans: dict[str, tuple[int, int]] = {}
    for r in (r for r in nested if r.info.start_time > killed_at and r.info.end_time):
        start, end = spans.get(r.data.tags["alignray.trial"], (r.info.start_time, r.info.end_time))
        spans[r.data.tags["alignray.trial"]] = (min(start, r.info.start_time), max(end, r.info.end_time))
    ordered = sorted(spans.values())
    assert len(ordered) == 3 and all(end <= start for (_, end), (start, _) in zip(ordered, ordered[1:])), spans

    assert main(["report", "context_distill-sweep-tiny", "--output-dir", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "4 trials in 2 configurations" in shown and shown.count("| metric | seed 0 | seed 1 |") == 2
    assert "## Test split: steps3" in shown and "## Test split: steps2" in shown
    assert re.search(r"\| AI-judge win rate vs tiny-random-llama( \| \d\.\d{3}){2} \| .* \| (better|worse|inconclusive) \|",
                     shown)
    # each arm's wall time per trial (the trial that ran the shared simulation counts it), and the comparison
    assert re.search(r"\| steps3 \(baseline\) \| context_distill \| 2 \| \d+(\.\d)? (s|min) \(\d+(\.\d)? to \d+(\.\d)? (s|min)\) \|",
                     shown), shown
    assert re.search(r"\| steps2 \| AI-judge win rate vs tiny-random-llama( \| \d\.\d{3}){2} \| [+-]\d\.\d{3}"
                     r" (\[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]|no interval) \| (better|worse|inconclusive) \|", shown), shown
    # every trial's stages, the shared simulation included: its pairs in both arms' rows
    [pairs] = {r.data.metrics["pairs"] for r in by_stage["simulate"]}
    for arm in ("steps3", "steps2"):
        assert re.search(rf"\| {arm} \| \d+\.\d \(.*\) \| \d+\.\d \(.*\) \| {pairs:.0f} \({pairs:.0f} to {pairs:.0f}\) \|",
                         shown), shown
    folder = store / "reports" / "context_distill-sweep-tiny"
    assert (folder / "report.md").read_text() in shown and (folder / "seeds.png").stat().st_size > 0

    # its record, on a new store (another machine): every trial is restored, none runs, and the report is the same
    assert sorted(p.name for p in (record / "context_distill-sweep-tiny").iterdir()) == [
        f"{arm}.seed-{seed}.test.json" for arm in ("steps2", "steps3") for seed in (0, 1)]
    fresh = tmp_path / "fresh"
    restored = subprocess.run([f"output_dir={fresh}" if c.startswith("output_dir=") else c for c in command],
                              capture_output=True, text=True, env=env, timeout=600)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    client, runs = _runs(fresh)
    stage_runs = [r for r in runs if "alignray.sweep" not in r.data.tags]
    # the simulation the four trials share is restored once, and counts in the wall time of the trial that ran it
    assert len(stage_runs) == 1 + 4 * 2 and all(r.data.tags["alignray.restored_from"] for r in stage_runs)
    assert not [r for r in stage_runs if "alignray.stage_key" in r.data.tags]  # never reused as a stage's output
    assert main(["report", "context_distill-sweep-tiny", "--output-dir", str(fresh)]) == 0
    again = capsys.readouterr().out
    def same(text):  # but the parent run and the report's folder
        return re.sub(r"parent run `\w+`|\S+/reports/", "", text)

    assert same(again) == same(shown)

    # another sweep of the same trials under other names (as comparisons share an arm), on another new
    # store: each trial takes the first sweep's record, its runs restored as reused ones; none runs
    other = tmp_path / "other"
    command = [f"output_dir={other}" if c.startswith("output_dir=") else c for c in command]
    shared = subprocess.run([*command, "sweep.name=again", "name=again-tiny"], capture_output=True, text=True, env=env,
                            timeout=600)
    assert shared.returncode == 0, shared.stdout + shared.stderr
    _, runs = _runs(other)
    stage_runs = [r for r in runs if "alignray.sweep" not in r.data.tags]
    assert len(stage_runs) == 1 + 4 * 2 and all(r.data.tags["alignray.restored_from"] for r in stage_runs)
    assert not [r for r in stage_runs if "mlflow.parentRunId" in r.data.tags]  # they ran in the first sweep
    kept = sorted((record / "again").iterdir())
    assert [p.name for p in kept] == sorted(p.name for p in (record / "context_distill-sweep-tiny").iterdir())
    assert not any(run["own"] for p in kept for run in json.loads(p.read_text())["runs"].values())
    assert main(["report", "again", "--output-dir", str(other)]) == 0
    def per_seed(text):  # the rows of the per-arm tables over seeds
        return sorted(line for line in text.splitlines() if line.startswith(("| net", "| refusal", "| AI-judge")))

    assert per_seed(shown) and per_seed(capsys.readouterr().out) == per_seed(shown)


@pytest.mark.slow
def test_a_sweep_chooses_on_dev_and_reports_the_choice_on_test(sweep_store):
    store = sweep_store
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = _sweep_command(
        f"output_dir={store}", "sweep.name=choose", "sweep.grid={seed: [0], stages.sft.trainer.max_steps: [3, 2]}",
        "stages.sft.trainer.cpus_per_worker=2",  # as in the arms sweep: its seed-0 SFTs are reused
        "sweep.select.metric=win_rate.length.tiny-random-llama", "sweep.select.mode=max",
        "dev_data={source: sample, skip: 10, limit: 4}")
    # Ctrl-C after the first trial: the sweep stops, and neither chooses nor touches the test split
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    printed = []
    for line in first.stdout:
        printed.append(line)
        if re.match(r"trial \S+ finished \(1 of 2", line):
            time.sleep(2)
            first.send_signal(signal.SIGINT)  # the driver alone, as a terminal's Ctrl-C reaches it
            break
    out = "".join(printed) + first.communicate(timeout=300)[0]
    assert first.returncode == 130, out
    assert "sweep choose stopped with 1 of 2 trials unfinished; nothing was chosen" in out
    assert "evaluating it on the test split" not in out
    client, runs = _runs(store)
    [parent] = [r for r in runs if r.data.tags.get("alignray.sweep") == "choose"]
    assert not [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                and r.data.params.get("split") == "test"]
    assert parent.info.status == "KILLED"

    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming" in done.stdout
    chosen = re.search(r"chose (stages.sft.trainer.max_steps=\d) \(win_rate.length.tiny-random-llama = ([\d.]+) on dev[;)]",
                       done.stdout)
    assert chosen, done.stdout
    assert "## Dev split: every configuration" in done.stdout and f"| {chosen.group(1)} (chosen) | 1 |" in done.stdout
    assert f"## Test split: {chosen.group(1)}" in done.stdout and "chosen among 2 configurations" in done.stdout

    client, runs = _runs(store)
    [parent] = [r for r in runs if r.data.tags.get("alignray.sweep") == "choose"]
    evaluations = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                   and r.data.tags.get("alignray.stage") == "evaluate" and r.info.status == "FINISHED"]
    splits = sorted((r.data.params["split"], r.data.params["data.skip"]) for r in evaluations)
    assert splits == [("dev", "10"), ("dev", "10"), ("test", "6")]  # two configurations on dev, the choice on test
    [test] = [r for r in evaluations if r.data.params["split"] == "test"]
    assert "the best of 2 configurations of sweep choose" in test.data.params["selection"]
    sfts = [r for r in runs if r.data.tags.get("alignray.stage") == "sft"]
    assert len(sfts) == 4  # the arms sweep's (max_steps 3 and 2, seeds 0 and 1); both of seed 0 reused here


def test_the_sweep_job_entrypoint_names_a_bad_sweep_before_anything_runs(tmp_path):
    job = Path(__file__).resolve().parents[1] / "jobs" / "sweep.py"
    done = subprocess.run([sys.executable, str(job), "--config", str(SWEEP), "sweep.grid={}", f"output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "give the fields to vary" in done.stderr
