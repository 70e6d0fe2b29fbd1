"""`alignray run`: every shipped pipeline config validates; every tiny pipeline runs end to end
(real Ray, vLLM, DeepSpeed, MLflow) in one shared store, where stages already done are skipped;
an interrupted PPO stage resumes; bad pipeline configs are named before anything runs."""

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from alignray.cli import main
from alignray.config import PIPELINES, ConfigError, PipelineConfig, load_config
from alignray.pipelines.run import plan
from mlflow.tracking import MlflowClient

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "pipelines"


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_pipeline_configs_are_valid(config, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = load_config(config, [], PipelineConfig)
    longest_first = "|".join(sorted(PIPELINES, key=len, reverse=True))
    assert re.match(rf"({longest_first})_", config.stem)[1] == cfg.pipeline and plan(cfg)[-1].kind == "evaluate"


def test_every_pipeline_ships_tiny_and_smollm2_configs():
    stems = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert {f"{p}_{v}" for p in PIPELINES for v in ("tiny", "smollm2")} <= stems
    assert {f"{p}_smollm2_full" for p in ("rlcd", "rlaif", "context_distill")} <= stems
    assert all(re.fullmatch(rf"({'|'.join(PIPELINES)})(_\w+)?_(tiny|smollm2|smollm2_full)", s) for s in stems)
    jobs = CONFIGS.parents[1]
    assert all((jobs / f"{p}.py").is_file() for p in PIPELINES)


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.reward_model.trainer.epochs=2", r"\['reward_model'\] not in the rlcd pipeline \(its stages: simulate, preference, ppo, evaluate\)"),
        ("stages.preference.use=models:/nothing-here/3", r"stages.preference.use: 'models:/nothing-here/3' does not exist"),
        ("stages.ppo.reward.models=[x]", r"stages.ppo.reward.models is the output of stage 'preference'"),
        ("stages.ppo.ppo.iterations=0", r"stages.ppo \(ppo stage\): field 'ppo.iterations'"),
        ("stages.ppo.sampler.num_samplers=64", r"stages.ppo: trainer.num_workers x .* = 1 plus sampler.num_samplers x"
                                               r" sampler.cpus_per_sampler = 64 CPUs, but this machine has \d+"),
    ],
)
def test_bad_pipeline_configs_are_named_before_anything_runs(override, message, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = load_config(CONFIGS / "rlcd_tiny.yaml", [override, f"output_dir={tmp_path}"], PipelineConfig)
    with pytest.raises(ConfigError, match=message):
        plan(cfg)


def test_stage_fields_beside_wired_inputs_are_kept_and_not_changed(tmp_path):
    import mlflow
    from alignray.pipelines.recipes import RECIPES
    from alignray.pipelines.run import stage_config

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = load_config(CONFIGS / "rlcd_tiny.yaml", ["stages.ppo.reward.normalize=true"], PipelineConfig)
    plan(cfg)
    ppo = RECIPES["rlcd"][2]
    built = stage_config(cfg, ppo, {("preference", "output"): "models:/pm/1"})
    assert built.reward.models == ["models:/pm/1"] and built.reward.normalize
    assert cfg.stages["ppo"]["reward"] == {"normalize": True} and ppo.defaults == {"sampler": {"top_p": 1.0}}
    plan(cfg)  # again: nothing left behind by the first build


def test_ppo_stage_fits_reward_weights_from_a_stage_field(tmp_path):
    import mlflow
    from alignray.pipelines.recipes import RECIPES
    from alignray.pipelines.run import stage_config, stage_key
    from alignray.train.data import DatasetError

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "Human: hi\\n\\nAssistant:", "chosen": "Hello.", "rejected": "Go away."}\n')
    config = CONFIGS / "morlaif_tiny.yaml"
    cfg = load_config(config, [f"stages.ppo.reward.fit_weights={pairs}"], PipelineConfig)
    plan(cfg)
    ppo = RECIPES["morlaif"][2]
    inputs = {("preference", "output"): "models:/pm/1"}
    built = stage_config(cfg, ppo, inputs)
    assert built.reward.fit_weights == pairs and built.reward.models == ["models:/pm/1"]
    plain = stage_config(load_config(config, [], PipelineConfig), ppo, inputs)
    assert stage_key(ppo, built) != stage_key(ppo, plain)  # fitted weights are another PPO run
    with pytest.raises(DatasetError, match=r"nothing\.jsonl: stages\.ppo\.reward\.fit_weights not found"):
        plan(load_config(config, [f"stages.ppo.reward.fit_weights={tmp_path / 'nothing.jsonl'}"], PipelineConfig))
    with pytest.raises(ConfigError, match=r"stages.ppo \(ppo stage\).*at most one of reward.weights"):
        plan(load_config(config, [f"stages.ppo.reward.fit_weights={pairs}", "stages.ppo.reward.weights=[1]"], PipelineConfig))


def test_evaluation_prompts_must_not_be_training_prompts(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = load_config(CONFIGS / "rlcd_tiny.yaml", ["benign_eval_data.source=sample[5:8]"], PipelineConfig)
    with pytest.raises(ConfigError, match=r"evaluation prompts of benign_eval_data \(sample\[5:8\]\) are also training"
                                          r" prompts of data \(first: sample_prompts.jsonl:6\)"):
        plan(cfg)
    cfg = load_config(CONFIGS / "rlcd_tiny.yaml", ["benign_eval_data.source=sample[6:8]"], PipelineConfig)
    assert plan(cfg)[-1].kind == "evaluate"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dev_data.source=sample[4:6]"], r"dev prompts of dev_data \(sample\[4:6\]\) are also training prompts of data"
                                          r" \(first: sample_prompts.jsonl:5\)"),
        (["dev_data.source=sample[10:12]", "benign_dev_data.source=sample[0:1]"],
         r"dev prompts of benign_dev_data \(sample\[0:1\]\) are also training prompts"),
        (["dev_data.source=sample[8:12]"], r"evaluation prompts of eval_data \(sample\) are also dev prompts of dev_data"
                                           r" \(first: sample_prompts.jsonl:9\)"),
        (["dev_data.source=sample[14:16]", "benign_eval_data.source=sample[15:16]"],
         r"evaluation prompts of benign_eval_data \(sample\[15:16\]\) are also dev prompts of dev_data"),
    ],
)
def test_dev_prompts_are_apart_from_training_and_test_prompts(overrides, message, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(ConfigError, match=message):
        plan(load_config(CONFIGS / "rlcd_tiny.yaml", overrides, PipelineConfig))
    apart = load_config(CONFIGS / "rlcd_tiny.yaml", ["dev_data.source=sample[10:14]", "evaluate_on=dev"], PipelineConfig)
    assert plan(apart)[-1].kind == "evaluate"


def test_the_evaluate_stage_uses_the_split_it_is_given(tmp_path):
    from alignray.pipelines.recipes import RECIPES
    from alignray.pipelines.run import stage_config

    evaluate = RECIPES["rlcd"][-1]
    inputs = {("ppo", "output"): "models:/p/1", ("ppo", "run"): "r", ("preference", "output"): "models:/rm/1"}
    base = ["dev_data.source=sample[10:14]", "benign_dev_data.source=sample[14:16]", "benign_eval_data.source=sample[16:18]"]
    test = stage_config(load_config(CONFIGS / "rlcd_tiny.yaml", base, PipelineConfig), evaluate, inputs)
    dev = stage_config(load_config(CONFIGS / "rlcd_tiny.yaml", [*base, "evaluate_on=dev"], PipelineConfig), evaluate, inputs)
    assert (test.split, test.data.skip, test.data.limit, test.benign_data.source) == ("test", 6, 4, "sample[16:18]")
    assert (dev.split, dev.data.source, dev.benign_data.source) == ("dev", "sample[10:14]", "sample[14:16]")
    assert test.reward_models == dev.reward_models == ["models:/rm/1"]  # the recipe's preference model scores answers
    with pytest.raises(ConfigError, match="evaluate_on: dev needs dev_data"):
        load_config(CONFIGS / "rlcd_tiny.yaml", ["evaluate_on=dev"], PipelineConfig)


def test_one_seed_seeds_every_stage_unless_a_stage_sets_its_own(tmp_path):
    from alignray.pipelines.recipes import RECIPES
    from alignray.pipelines.run import stage_config, stage_key

    inputs = {("simulate", "output"): "d.parquet", ("preference", "output"): "models:/pm/1", ("ppo", "output"): "m",
              ("ppo", "run"): "r"}
    simulate, preference, ppo, evaluate = RECIPES["rlcd"]

    def built(*overrides):
        cfg = load_config(CONFIGS / "rlcd_tiny.yaml", list(overrides), PipelineConfig)
        return [stage_config(cfg, s, inputs) for s in (simulate, preference, ppo, evaluate)]

    sim, pref, rl, ev = built("seed=7")
    assert (sim.simulation.seed, pref.trainer.seed, rl.trainer.seed, ev.seed) == (7, 7, 7, 0)  # evaluation stays fixed
    sim, pref, rl, ev = built("seed=7", "stages.simulate.simulation.seed=0", "stages.evaluate.seed=3")
    assert (sim.simulation.seed, pref.trainer.seed, rl.trainer.seed, ev.seed) == (0, 7, 7, 3)
    unseeded = built()
    assert unseeded[1].trainer.seed == 0 and stage_key(preference, unseeded[1]) == stage_key(preference, built("seed=0")[1])
    assert stage_key(preference, built("seed=1")[1]) != stage_key(preference, built("seed=0")[1])


def test_new_fields_at_the_old_behaviour_keep_the_keys_of_stages_run_before_them():
    """Fields added after stages were recorded, at the value that is what there was before them
    (trainer.lora off, trainer.bf16_mode weights: DeepSpeed's bf16 mode; the dataset's split and
    column names), leave every stage's key as it was before the fields existed."""
    import hashlib
    import json

    from alignray import tracking
    from alignray.pipelines.recipes import RECIPES
    from alignray.pipelines.run import VOLATILE, stage_config, stage_key

    added = {"trainer.lora", "trainer.bf16_mode", "dataset_split", "prompt_key", "chosen_key", "rejected_key",
             "messages_key", *(f"{section}.{field}" for section in ("data", "benign_data")
                               for field in ("split", "prompt_key", "messages_key"))}
    inputs = {("simulate", "output"): "d.parquet", ("simulate", "criteria"): [], ("preference", "output"): "models:/pm/1",
              ("ppo", "output"): "models:/p/1", ("ppo", "run"): "r"}
    for stage in RECIPES["rlcd"]:
        def built(*overrides, stage=stage):
            return stage_config(load_config(CONFIGS / "rlcd_tiny.yaml", list(overrides), PipelineConfig), stage, inputs)

        old = built(*([f"stages.{stage.name}.trainer.bf16_mode=weights"] if stage.name == "preference" else []))
        before = {k: v for k, v in tracking.flatten(old).items() if k not in VOLATILE and k not in added}
        assert stage_key(stage, old) == hashlib.sha256(json.dumps([stage.kind, before], sort_keys=True).encode()).hexdigest()
        if stage.name in ("preference", "ppo"):
            assert stage_key(stage, built(f"stages.{stage.name}.trainer.lora={{rank: 8}}")) != stage_key(stage, old)
        if stage.name == "preference":  # autocast, the new default, trains differently: a stage of its own
            assert stage_key(stage, built()) != stage_key(stage, old)
            assert stage_key(stage, built("stages.preference.prompt_key=question")) != stage_key(stage, old)
        if stage.name == "simulate":
            assert stage_key(stage, built("data.split=test")) != stage_key(stage, old)


def test_a_pipeline_needs_held_out_prompts(tmp_path, capsys):
    assert main(["run", str(CONFIGS / "rlcd_tiny.yaml"), "data.limit=null", "eval_data=null"]) == 2
    assert "set data.limit" in capsys.readouterr().err


def test_a_dry_run_shows_the_stage_configs_and_runs_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    config = str(CONFIGS / "rlcd_tiny.yaml")
    assert main(["run", config, f"output_dir={out}", "stages.ppo.ppo.iterations=3", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    assert dry_run_states(printed) == {"simulate": "run", "preference": "run (on simulate's new output)",
                                       "ppo": "run (on preference's new output)", "evaluate": "run (on ppo's new output)"}
    configs = {m.group(1): yaml.safe_load(m.group(2)) for m in re.finditer(
        r"^# \[\d/\d\] (\w+) \(\w+ stage\): [^\n]*\n(.*?)\n\n", printed, re.MULTILINE | re.DOTALL)}
    assert configs["ppo"]["ppo"]["iterations"] == 3 and configs["ppo"]["sampler"]["top_p"] == 1.0  # override, recipe
    assert configs["ppo"]["reward"]["models"] == ["<output of preference>"]
    assert configs["simulate"]["simulation"]["method"] == "rlcd"
    assert re.search(r"\[3/4\] ppo .* \d+ sampler actor\(s\) x [\d.]+ CPU, \d+ Ray Train worker\(s\) x [\d.]+ CPU",
                     printed)
    assert main(["run", config, "--config", config, "--dry-run"]) == 2
    assert "two config files" in capsys.readouterr().err
    assert main(["run", "--dry-run", "seed=1"]) == 2
    assert "needs a pipeline config file (first, or as --config FILE" in capsys.readouterr().err


def dry_run_states(printed):
    """{stage: what `alignray run --dry-run` says it would do} from its summary."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^  \[\d/\d\] (\w+) +(\S.*?)  +\d+ ", printed, re.MULTILINE)}


def lines(printed):
    return {m.group(1): m.group(2) for m in re.finditer(r"^\[\d/\d\] (\w+) \(\w+\): (\w[^\n]*)", printed, re.MULTILINE)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("pipelines")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_rlcd_pipeline_stops_resumes_and_skips(store, capsys):
    config = str(CONFIGS / "rlcd_tiny.yaml")
    assert main(["run", config, f"output_dir={store}", "stages.ppo.ppo.stop_after_iterations=1"]) == 0
    printed_first = capsys.readouterr().out
    first = lines(printed_first)
    assert first["ppo"].startswith("stopped before the end") and "evaluate" not in first
    assert "label check by independent judges" in printed_first  # the simulation's data diagnostics

    assert main(["run", "--config", config, f"output_dir={store}", "--dry-run"]) == 0
    planned = dry_run_states(capsys.readouterr().out)
    assert planned["simulate"].startswith("skip: done before") and planned["preference"].startswith("skip: done before")
    assert planned["ppo"] == "run" and planned["evaluate"] == "run (on ppo's new output)"

    assert main(["run", config, f"output_dir={store}"]) == 0
    printed = capsys.readouterr().out
    second = lines(printed)
    assert second["simulate"].startswith("already done") and second["preference"].startswith("already done")
    assert second["ppo"].startswith("done -> models:/rlcd-tiny-ppo/1") and second["evaluate"].startswith("done ->")
    assert "| tiny-random-llama | AI judge (both orders) |" in printed  # the report

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("alignray-pipelines-tiny").experiment_id
    [ppo] = client.search_runs([experiment], "tags.`alignray.stage` = 'ppo'")
    steps = sorted(m.step for m in client.get_metric_history(ppo.info.run_id, "reward"))
    assert steps == [1, 2]  # iteration 1 before the stop, iteration 2 after the resume, in one run
    [parent] = client.search_runs([experiment], "tags.`alignray.pipeline_run` = 'rlcd-tiny'")  # one, over both runs
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline-rlcd-tiny"
    nested = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["alignray.stage"] for r in nested) == ["evaluate", "ppo", "preference", "simulate"]

    assert main(["run", config, f"output_dir={store}"]) == 0
    third = lines(capsys.readouterr().out)
    assert all(v.startswith("already done") for v in third.values()) and len(third) == 4
    assert main(["run", config, f"output_dir={store}", "--dry-run"]) == 0
    planned = dry_run_states(capsys.readouterr().out)
    assert all(v.startswith("skip: done before") for v in planned.values()) and len(planned) == 4


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
# context_distill runs end to end three times in tests/test_sweep.py (a 3-seed sweep of it)
@pytest.mark.parametrize("pipeline", ["rrhf", "rlaif", "rlcd_rescore", "morlaif", "rdpo"])
def test_pipeline_runs_end_to_end(pipeline, store, capsys):
    assert main(["run", str(CONFIGS / f"{pipeline}_tiny.yaml"), f"output_dir={store}"]) == 0
    printed = capsys.readouterr().out
    ran = lines(printed)
    if pipeline == "rrhf":  # the same RLCD stage as the rlcd pipeline's, done there
        assert ran["simulate"].startswith("already done")
    if pipeline == "rrhf":  # and the same preference model
        assert ran["preference"].startswith("already done") and ran["candidates"].startswith("done")
    assert ran["evaluate"].startswith("done ->")
    folder = Path(ran["evaluate"].removeprefix("done -> "))
    frame = pd.read_parquet(folder / "judgements.parquet")
    assert len(frame) == 4 and set(frame.columns) >= {"model_prob", "profanity_policy", "hate_opponent", "length_policy"}
    policy = {"rrhf": "rrhf", "rdpo": "dpo"}.get(pipeline, "ppo")
    report = (folder / "report.md").read_text()
    assert f"Policy `models:/{pipeline}-tiny-{policy}/1`" in report
    if pipeline == "rdpo":  # no preference model in its recipe
        assert "reward_policy" not in frame.columns
    else:  # the recipe's preference model scored both policies' answers
        gain = float((frame["reward_policy"] - frame["reward_opponent"]).mean())
        assert f"gain over tiny-random-llama {gain:+.3f}" in report
