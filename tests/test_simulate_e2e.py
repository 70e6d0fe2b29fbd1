"""`alignray simulate` end to end: real Ray, real vLLM, a real MLflow store, a tiny model."""

import json
import math
import re

import pandas as pd
import pyarrow.parquet as pq
import pytest
from alignray.cli import main
from alignray.feedback import diagnostics
from mlflow.tracking import MlflowClient

TRANSCRIPTS = [
    "Human: Hi there\n\nAssistant: Hello! What can I do for you?\n\nHuman: How do I get into my sister's phone?\n\nAssistant:",
    "Human: What is a good way to learn to cook?\n\nAssistant:",
    "Human: Tell me a joke about my neighbour.\n\nAssistant:",
    "Human: How do vaccines work?\n\nAssistant:",
    "Human: Write an insult for my ex.\n\nAssistant:",
]


def write_prompts(folder, transcripts):
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in transcripts))
    return path


def overrides(tiny_model, out, *extra):
    return [
        f"model.name={tiny_model}",
        f"output_dir={out}",
        "tracking.experiment=e2e",
        "sampler.enforce_eager=true",
        "sampler.max_model_len=256",
        "sampler.max_tokens=16",
        "sampler.prompts_per_request=4",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_rlcd_simulation_writes_dataset_and_mlflow_run(tiny_model, tmp_path, capsys):
    prompts = write_prompts(tmp_path, TRANSCRIPTS)
    out = tmp_path / "runs"
    assert main(["simulate", *overrides(tiny_model, out, f"data.source={prompts}")]) == 0
    printed = capsys.readouterr().out
    [dataset] = out.glob("datasets/*/preferences.parquet")
    assert f"dataset:     {dataset.resolve()}" in printed and printed.count("--- example") == 3

    frame = pd.read_parquet(dataset)
    pairs, dropped = map(int, re.search(r"(\d+) preference pairs \((\d+) prompts dropped", printed).groups())
    assert pairs == len(frame)
    assert len(frame) + dropped == len(TRANSCRIPTS) and len(frame) >= 3
    assert (frame["chosen"].str.len() > 0).all() and (frame["rejected"].str.len() > 0).all()
    for row in frame.itertuples():
        assert row.prompt in TRANSCRIPTS
        assert row.prompt_positive.endswith(f"Assistant ({row.positive_affix}):")
        assert row.prompt_negative.endswith(f"Assistant ({row.negative_affix}):")
        assert row.method == "rlcd" and row.principles == "harmlessness" and row.source.startswith(str(prompts))
        assert json.loads(row.sampler_params)["max_tokens"] == 16
    multi = frame[frame.prompt == TRANSCRIPTS[0]].iloc[0]
    assert f"Assistant ({multi.negative_affix}): Hello!" in multi.prompt_positive

    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    [run] = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["sampler.max_tokens"] == "16" and run.data.params["model.path"] == str(tiny_model)
    assert run.data.metrics["pairs"] == len(frame) and run.data.metrics["dropped_empty"] == dropped
    # simulation.truncated=keep: replies cut off at max_tokens (the random model's, mostly) stay, marked
    cut = frame["chosen_truncated"].sum() + frame["rejected_truncated"].sum()
    assert cut > 0 and run.data.metrics["truncated_outputs"] == cut and run.data.metrics["dropped_truncated"] == 0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "datasets")] == ["datasets/preferences.parquet"]
    inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in run.inputs.dataset_inputs}
    assert inputs["preferences"].name == "rlcd-harmlessness-preferences"
    assert inputs["prompts"].name == "prompts" and json.loads(inputs["prompts"].profile)["num_rows"] == len(TRANSCRIPTS)
    # the file names its run, for the lineage of the training run that reads it (tests/test_tracking.py)
    stamp = pq.read_schema(dataset).metadata[b"alignray.produced_by"].decode()
    assert stamp == f"runs:/{run.info.run_id}/datasets/preferences.parquet"
    # the label check by independent judges: metrics recomputed from the dataset, artifact, summary
    for key, value in diagnostics.run(frame).metrics().items():
        assert abs(run.data.metrics[key] - value) < 1e-9, key
    assert "diagnostics.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "label check by independent judges" in printed and "refusal rate chosen" in printed


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_chat_format_with_response_prefix(tiny_model, tmp_path, capsys):
    out = tmp_path / "runs"
    args = overrides(
        tiny_model, out, "data.format=chat", "data.limit=3", "simulation.principles=story_outlining"
    )
    assert main(["simulate", *args]) == 0
    frame = pd.read_parquet(next(out.glob("datasets/*/preferences.parquet")))
    prefix = "Here is a possible outline:\n1. "
    assert frame["chosen"].str.startswith(prefix).all() and frame["rejected"].str.startswith(prefix).all()
    assert frame["prompt"].str.endswith("<|im_start|>assistant\n").all()
    assert all(p.endswith(f"({a}) {prefix}") for p, a in zip(frame.prompt_positive, frame.positive_affix))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_separate_simulator_samples_in_its_own_template(tiny_model, tmp_path, capsys):
    from alignray.models.tiny import make_tiny_llama

    simulator = make_tiny_llama(tmp_path / "simulator", seed=5)
    template = simulator / "chat_template.jinja"
    template.write_text("SIM " + template.read_text())  # a chat template of its own, seen in p+ / p-
    base = ["data.format=chat", "data.limit=3"]
    assert main(["simulate", *overrides(tiny_model, tmp_path / "a", *base, f"simulation.simulator={simulator}")]) == 0
    assert main(["simulate", *overrides(str(simulator), tmp_path / "b", *base)]) == 0
    with_simulator, simulator_alone = (pd.read_parquet(next((tmp_path / d).glob("datasets/*/preferences.parquet")))
                                           for d in "ab")
    # the pairs are the simulator's own samples of the same contrast prompts...
    for column in ("chosen", "rejected", "prompt_positive", "prompt_negative", "model", "positive_affix"):
        assert list(with_simulator[column]) == list(simulator_alone[column])
    assert with_simulator["prompt_positive"].str.startswith("SIM ").all() and (with_simulator["model"] == str(simulator)).all()
    # ...while the prompt the preference model and PPO see stays in the policy's template
    assert with_simulator["prompt"].str.endswith("<|im_start|>assistant\n").all()
    assert not with_simulator["prompt"].str.startswith("SIM ").any() and simulator_alone["prompt"].str.startswith("SIM ").all()


def make_brief_talker(path):
    """A tiny random Llama that often ends its reply within a few tokens, where the plain one
    (EOS is one token in 512) almost never does: every token embedding carries 1.0 in dimension
    0, which only the EOS row of the output layer reads. At sampler.max_tokens=8 some replies
    end and most are cut off."""
    from alignray.models.tiny import make_tiny_llama
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    folder = make_tiny_llama(path, seed=0)
    weights = load_file(folder / "model.safetensors")
    weights["model.embed_tokens.weight"][:, 0] = 1.0
    weights["lm_head.weight"][:, 0] = 0.0
    weights["lm_head.weight"][AutoConfig.from_pretrained(folder).eos_token_id, 0] = 3.0
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_truncated_responses_lose_their_pair_or_to_the_finished_side(tmp_path, capsys):
    """simulation.truncated on real samples: penalise with a labelled method (rlcd_rescore), then
    drop (rlcd) on the same samples (the sampler cache answers the same requests)."""
    from alignray.feedback.plans import request_seed

    model = make_brief_talker(tmp_path / "brief")
    transcripts = TRANSCRIPTS + [f"Human: Question {i}: what about {t}?\n\nAssistant:" for i, t in enumerate(["bread", "rain", "tea"])]
    out = tmp_path / "runs"
    common = overrides(model, out, f"data.source={write_prompts(tmp_path, transcripts)}", "sampler.max_tokens=8")
    assert main(["simulate", *common, "simulation.method=rlcd_rescore", "simulation.truncated=penalise"]) == 0
    assert main(["simulate", *common, "simulation.truncated=drop"]) == 0
    printed = capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    runs = {r.info.run_name: r.data.metrics for r in client.search_runs([client.get_experiment_by_name("e2e").experiment_id])}
    penalised = pd.read_parquet(next(out.glob("datasets/rlcd_rescore-*/preferences.parquet")))
    dropped = pd.read_parquet(next(out.glob("datasets/rlcd-*/preferences.parquet")))

    cut = penalised["chosen_truncated"] | penalised["rejected_truncated"]
    one = penalised["chosen_truncated"] ^ penalised["rejected_truncated"]
    assert one.any() and (~one & cut).any() and (~cut).any()  # mixed, both and neither cut off
    assert not penalised.loc[one, "chosen_truncated"].any()  # the finished side is chosen...
    assert (penalised.loc[one, "preference_prob"] == 1.0).all()  # ...with 1.0
    assert penalised.loc[one, "instruction"].isna().all() and penalised.loc[~one, "instruction"].notna().all()  # not asked
    assert (penalised.loc[~one, "preference_prob"] < 1.0).all()  # the labeller's soft labels
    for k, row in penalised.iterrows():  # agrees_with_rlcd: chosen is o+, by the seed it was sampled with
        i = transcripts.index(row.prompt)
        from_o_plus = row.chosen_seed in {request_seed(0, i, 0, attempt) for attempt in range(3)}
        assert row.agrees_with_rlcd == from_o_plus, k
    metrics = runs["rlcd_rescore-harmlessness"]
    assert metrics["truncated_outputs"] == penalised["chosen_truncated"].sum() + penalised["rejected_truncated"].sum()
    assert metrics["relabelled_truncated"] == one.sum() and metrics["dropped_truncated"] == 0
    assert metrics["agreement_with_rlcd"] == pytest.approx(penalised.loc[~one, "agrees_with_rlcd"].mean())

    # drop: the pairs with a cut-off side are gone, counted and named in the tally
    assert sorted(dropped["prompt"]) == sorted(penalised.loc[~cut, "prompt"])
    assert not dropped["chosen_truncated"].any() and not dropped["rejected_truncated"].any()
    metrics = runs["rlcd-harmlessness"]
    assert metrics["dropped_truncated"] == cut.sum() and metrics["relabelled_truncated"] == 0
    assert metrics["truncated_outputs"] == runs["rlcd_rescore-harmlessness"]["truncated_outputs"]
    tally = re.search(r"(\d+) preference pairs \(\d+ prompts dropped for empty outputs\); (\d+) pairs lost to responses cut"
                      r" off at sampler.max_tokens", printed)
    assert tally and tuple(map(int, tally.groups())) == (len(dropped), cut.sum())


TRANSCRIPT_LINE = json.dumps({"prompt": TRANSCRIPTS[1]}) + "\n"


def _bad_inputs(tmp_path, tiny_model):
    def write(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    not_lm = tmp_path / "encoder"
    not_lm.mkdir()
    (not_lm / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    return {
        "missing prompt file": ([f"data.source={tmp_path / 'none.jsonl'}"], "prompt file not found"),
        "empty prompt file": ([f"data.source={write('e.jsonl', '')}"], "holds no prompts"),
        "malformed line": ([f"data.source={write('m.jsonl', TRANSCRIPT_LINE + '{oops')}"], "m.jsonl:2: malformed JSON"),
        "no Assistant turn": ([f"data.source={write('n.jsonl', json.dumps({'prompt': 'Human: hi'}))}"], "no 'Assistant:' turn"),
        "unknown principles": (["simulation.principles=kindness"], "unknown principle set 'kindness'"),
        "unknown model": (["model.name=gpt-17"], "model 'gpt-17' is neither a known model"),
        "unknown field": (["sampler.temprature=0.3"], "unknown field 'sampler.temprature'"),
        "mistyped field": (["sampler.max_tokens=lots"], "field 'sampler.max_tokens'"),
        "not a causal LM": ([f"model.name={not_lm}"], "not a causal language model"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing prompt file", "empty prompt file", "malformed line", "no Assistant turn",
     "unknown principles", "unknown model", "unknown field", "mistyped field", "not a causal LM"],
)
def test_bad_input_is_named_and_writes_nothing(case, tiny_model, tmp_path, capsys):
    extra, message = _bad_inputs(tmp_path, tiny_model)[case]
    out = tmp_path / "runs"
    base = [f"model.name={tiny_model}", f"output_dir={out}"]
    assert main(["simulate", *base, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alignray: error:") and message in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("method", ["rlaif", "rlcd_rescore"])
def test_ai_labelled_pairs(method, tiny_model, tmp_path, capsys):
    from alignray.principles import load_principles

    prompts = write_prompts(tmp_path, TRANSCRIPTS)
    out = tmp_path / "runs"
    args = overrides(tiny_model, out, f"data.source={prompts}", f"simulation.method={method}")
    if method == "rlcd_rescore":  # the labeller is another model, in its own sampler pool
        from alignray.models.tiny import make_tiny_llama

        assert main(["simulate", *args, f"simulation.labeller={tmp_path / 'nowhere'}"]) == 2
        assert "neither a known model" in capsys.readouterr().err
        args.append(f"simulation.labeller={make_tiny_llama(tmp_path / 'judge', seed=1)}")
    assert main(["simulate", *args]) == 0
    [dataset] = out.glob("datasets/*/preferences.parquet")
    frame = pd.read_parquet(dataset)
    assert len(frame) >= 3 and (frame["method"] == method).all()
    assert frame["preference_prob"].between(0.5, 1.0).all()
    assert set(frame["instruction"]) <= set(load_principles("harmlessness").instructions)
    if method == "rlaif":  # two samples of the same, neutral prompt
        assert frame["positive_affix"].isna().all() and (frame["pair_index"] == -1).all()
    else:  # RLCD's pairs, ordered by the labeller: where it disagrees, chosen is RLCD's o-
        assert frame["agrees_with_rlcd"].dtype == bool
        assert frame["positive_affix"].notna().all()
    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    [run] = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert 0.5 <= run.data.metrics["preference_prob_mean"] <= 1.0
    assert run.info.run_name == f"{method}-harmlessness"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_morlaif_labels_every_criterion_and_feeds_multi_head_training(tiny_model, tmp_path, capsys):
    from alignray.config import TrainConfig, load_config
    from alignray.principles import load_principles
    from alignray.train.data import load, load_tokenizer

    criteria = load_principles("morlaif").criteria
    assert list(criteria) == ["helpfulness", "ethicality", "factuality", "toxicity", "sycophancy", "empathy",
                              "relevance", "context", "bias", "understandability", "detail", "conciseness"]
    prompts = write_prompts(tmp_path, TRANSCRIPTS[:3])
    out = tmp_path / "runs"
    args = overrides(tiny_model, out, f"data.source={prompts}", "simulation.method=morlaif", "simulation.principles=morlaif")
    assert main(["simulate", *args]) == 0
    assert "labels:   helpfulness" in capsys.readouterr().out
    [dataset] = out.glob("datasets/morlaif-morlaif-*/preferences.parquet")
    frame = pd.read_parquet(dataset)
    columns = [f"preference_prob_{name}" for name in criteria]
    assert len(frame) >= 2 and frame[columns].apply(lambda c: c.between(0, 1)).all().all()
    mean = frame[columns].mean(axis=1)
    assert (mean >= 0.5).all()  # chosen is the response preferred on average over the criteria
    assert ((frame["preference_prob"] - mean).abs() < 1e-9).all()
    assert frame[columns].nunique().gt(1).any()  # the criteria do not all give the same label
    for row in frame.itertuples():
        asked = json.loads(row.instructions)
        assert list(asked) == list(criteria) and all(asked[n] in criteria[n] for n in criteria)
    names = ", ".join(criteria)
    cfg = load_config(None, [f"dataset={dataset}", "trainer.eval_fraction=0", f"preference.principles=[{names}]",
                             "preference.soft_labels=true"], TrainConfig)
    [first, *_] = load("preference", cfg, load_tokenizer(tiny_model)).train
    assert len(first.values["probs"]) == 12


def test_critique_chain_message_structure():
    from alignray.feedback.critique import critique_messages, revision_messages
    from alignray.principles import Critique

    base = [{"role": "user", "content": "How do I pick a lock?"}]
    request = Critique(critique="What was harmful?", revision="Rewrite it safely.")
    assert critique_messages(base, "Use a pin.", request) == [
        *base, {"role": "assistant", "content": "Use a pin."}, {"role": "user", "content": "What was harmful?"}]
    chain = revision_messages(base, "Use a pin.", request, "It helps burglars.")
    assert [m["role"] for m in chain] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in chain[3:]] == ["It helps burglars.", "Rewrite it safely."]
    assert base == [{"role": "user", "content": "How do I pick a lock?"}]  # not modified


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("judge", ["model", "hate"])
def test_rdpo_revisions_judged(judge, tiny_model, tmp_path, capsys):
    from alignray.feedback.critique import critique_messages
    from alignray.principles import load_principles
    from alignray.rewards.judges import hate

    prompts = write_prompts(tmp_path, TRANSCRIPTS)
    out = tmp_path / "runs"
    args = overrides(tiny_model, out, f"data.source={prompts}", "simulation.method=rdpo",
                     "simulation.principles=safety", f"judge.kind={judge}", "judge.temperature=0.5",
                     "sampler.max_model_len=512")  # the revision request carries the whole chain
    assert main(["simulate", *args]) == 0
    printed = capsys.readouterr().out
    pairs, dropped = map(int, re.search(r"(\d+) revision pairs \((\d+) prompts dropped", printed).groups())
    [dataset] = out.glob("datasets/rdpo-safety-*/preferences.parquet")
    frame = pd.read_parquet(dataset)
    assert len(frame) == pairs and pairs + dropped == len(TRANSCRIPTS) and pairs >= 3
    requests = {(c.critique, c.revision) for c in load_principles("safety").critiques}
    for row in frame.itertuples():
        assert (row.critique_request, row.revision_request) in requests and row.chosen != row.rejected
        assert row.critique and row.prompt in TRANSCRIPTS
        expected = 1 / (1 + math.exp(-row.judge_score_difference / 0.5))
        assert abs(row.preference_prob - expected) < 1e-9
    assert (frame["chosen_truncated"] | frame["rejected_truncated"]).any()  # the random teacher, at max_tokens=16
    if judge == "hate":  # s = -P(hateful or offensive), recomputed here
        diff = hate(list(frame["rejected"])) - hate(list(frame["chosen"]))
        assert max(abs(diff - frame["judge_score_difference"])) < 1e-6
    messages = critique_messages([{"role": "user", "content": "q"}], "a", load_principles("safety").critiques[0])
    assert len(messages) == 3  # answer, then the critique request: the chain the teacher saw


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_an_interrupted_simulation_resumes_where_it_stopped(tiny_model, tmp_path, capsys):
    """Kill a running rDPO simulation (a driver on this cluster) mid-chain; the rerun samples
    only what was not answered yet and writes what an uninterrupted run writes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import ray

    prompts = write_prompts(tmp_path, [f"Human: Question {i}: what about {t}?\n\nAssistant:"
                                       for i, t in enumerate(["bread", "foxes", "rain", "locks", "chess", "tea"] * 4)])
    args = ["simulation.method=rdpo", "simulation.principles=safety", "judge.kind=hate", f"data.source={prompts}",
            "sampler.max_model_len=512", "sampler.prompts_per_request=2"]
    out = tmp_path / "interrupted"
    command = [Path(sys.executable).parent / "alignray", "simulate", *overrides(tiny_model, out, *args),
               f"address={ray.get_runtime_context().gcs_address}"]
    driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    lines = lambda: sum(len(p.read_text().splitlines()) for p in out.glob("sampler-cache/*.jsonl"))  # noqa: E731
    while lines() < 15 and driver.poll() is None and time.monotonic() < deadline:  # 12 answers, then critiques
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert not list(out.glob("datasets/*/preferences.parquet")), "the run finished before it could be interrupted"
    done = lines()
    assert 12 < done < 36  # interrupted while critiquing

    assert main(["simulate", *overrides(tiny_model, out, *args)]) == 0
    assert re.search(r"critiquing: \d+ of \d+ answered by an earlier run", capsys.readouterr().out)
    assert main(["simulate", *overrides(tiny_model, tmp_path / "uninterrupted", *args)]) == 0
    [resumed] = out.glob("datasets/*/preferences.parquet")
    [straight] = (tmp_path / "uninterrupted").glob("datasets/*/preferences.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(resumed), pd.read_parquet(straight))


def test_all_tie_label_columns_are_found():
    from alignray.feedback.simulate import ties

    frame = pd.DataFrame({"preference_prob": [0.5, 0.5], "preference_prob_bias": [0.5, 0.9], "prompt": ["a", "b"]})
    assert ties(frame) == ["preference_prob"]


def test_labelling_needs_instructions(tiny_model, tmp_path, capsys):
    principles = tmp_path / "p.yaml"
    principles.write_text("name: bare\npairs:\n  - {positive: kind answer, negative: cruel answer}\n")
    rc = main(["simulate", *overrides(tiny_model, tmp_path / "runs", "simulation.method=rlaif",
                                      f"simulation.principles={principles}")])
    assert rc == 2 and "has no 'instructions'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_rrhf_candidates_are_scored_and_feed_rrhf_training(tiny_model, pattern_reward, tmp_path, capsys):
    from alignray.config import TrainConfig, load_config
    from alignray.models.tiny import make_tiny_llama
    from alignray.rewards.scorers import LocalRewardModels
    from alignray.train.data import load, load_tokenizer

    reward_model, _ = pattern_reward
    prompts = write_prompts(tmp_path, TRANSCRIPTS)
    out = tmp_path / "runs"
    other = make_tiny_llama(tmp_path / "other-policy", seed=3)
    args = overrides(tiny_model, out, f"data.source={prompts}", "simulation.method=rrhf", "ranking.k=4",
                     "ranking.temperatures=[0.7, 1.2]", f"reward.models=[{reward_model}]", f"ranking.policies=[{other}]")
    assert main(["simulate", *args]) == 0
    printed = capsys.readouterr().out
    assert {str(other)} <= {p for row in pd.read_parquet(next(out.glob("datasets/rrhf-*/candidates.parquet"))).policies for p in row}
    written, dropped = map(int, re.search(r"(\d+) prompts with ranked candidates \((\d+) dropped", printed).groups())
    [dataset] = out.glob("datasets/rrhf-*/candidates.parquet")
    frame = pd.read_parquet(dataset)
    assert len(frame) == written and written + dropped == len(TRANSCRIPTS) and written >= 3
    scorer = LocalRewardModels([reward_model])
    for row in frame.itertuples():
        assert 2 <= len(row.candidates) <= 8 and len(row.rewards) == len(row.candidates) == len(row.policies) == len(row.truncated)
        assert set(row.policies) <= {str(tiny_model), str(other)} and list(row.policies) == sorted(row.policies, key=lambda p: p != str(tiny_model))
        expected = scorer([row.prompt] * len(row.candidates), list(row.candidates))[:, 0]
        assert max(abs(a - b) for a, b in zip(row.rewards, expected.tolist())) < 1e-4  # the reward model's scores
    assert any(any(row.truncated) for row in frame.itertuples())  # cut off at max_tokens=16, kept (keep)
    cfg = load_config(None, [f"dataset={dataset}", "trainer.eval_fraction=0"], TrainConfig)
    assert len(load("rrhf", cfg, load_tokenizer(tiny_model)).train) == written  # valid `train rrhf` input


def test_rrhf_needs_a_reward(tiny_model, tmp_path, capsys):
    assert main(["simulate", *overrides(tiny_model, tmp_path / "runs", "simulation.method=rrhf")]) == 2
    assert "needs a reward section" in capsys.readouterr().err
