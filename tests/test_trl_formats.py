"""What alignray writes, TRL reads: a preference file with every column an RLCD simulation writes
loads with `datasets` and trains TRL's DPOTrainer and RewardTrainer for a step on the tiny model
as it is, and TRL's SFTTrainer (prompt-completion) with its `chosen` column named `completion`.
alignray writes no SFT file of its own: SFT (context distillation) trains on a pairs file's
`chosen` side."""

import math

import datasets
import mlflow
import pandas as pd
import pytest
import trl
from alignray.data.formats import PAIRS
from alignray.feedback.simulate import write_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

pytestmark = pytest.mark.slow  # three TRL trainers, one step each (~20 s)


def rlcd_rows(tokenizer, n=8):
    """Rows as the rlcd method writes them: the prompt rendered with the model's chat template,
    the responses without it, and the provenance columns."""
    rows = []
    for i in range(n):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"Question {i}: how do I stay safe?"}],
                                               tokenize=False, add_generation_prompt=True)
        rows.append({"prompt": prompt, "chosen": "Stay calm and ask someone you trust.", "rejected": "Do not bother.",
                     "chosen_truncated": False, "rejected_truncated": i % 3 == 0, "method": "rlcd",
                     "principles": "harmlessness", "pair_index": i % 4, "positive_affix": "kind",
                     "negative_affix": "rude", "prompt_positive": prompt, "prompt_negative": prompt,
                     "source": f"test:{i}", "model": "tiny", "seed": 0, "chosen_seed": 2 * i,
                     "rejected_seed": 2 * i + 1, "attempts": 1, "sampler_params": '{"temperature": 0.8}'})
    return rows


def test_our_preference_file_trains_trl_dpo_reward_and_sft(tiny_model, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.pad_token = tok.pad_token or tok.eos_token
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("trl-formats")  # not an experiment id an earlier test left active
    with mlflow.start_run():  # the writer stamps the file with the run that made it
        path = write_dataset(pd.DataFrame(rlcd_rows(tok)), PAIRS, tmp_path / "preferences.parquet")
    data = datasets.load_dataset("parquet", data_files=str(path), split="train")
    common = dict(use_cpu=True, per_device_train_batch_size=4, max_steps=1, report_to=[], save_strategy="no",
                  logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0)

    dpo = trl.DPOTrainer(str(tiny_model), args=trl.DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
                         train_dataset=data, processing_class=tok)
    dpo.train()
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    reward_model.config.pad_token_id = tok.pad_token_id
    reward = trl.RewardTrainer(reward_model, args=trl.RewardConfig(output_dir=str(tmp_path / "reward"), **common),
                               train_dataset=data, processing_class=tok)
    reward.train()
    sft = trl.SFTTrainer(str(tiny_model), args=trl.SFTConfig(output_dir=str(tmp_path / "sft"), **common),
                         train_dataset=data.rename_column("chosen", "completion"), processing_class=tok)
    sft.train()
    for trainer in (dpo, reward, sft):
        [logged] = [entry for entry in trainer.state.log_history if "loss" in entry]
        assert trainer.state.global_step == 1 and math.isfinite(logged["loss"])
