"""RLAIF labelling throughput: alignray's labeller (vLLM `score` on the sampler pool) vs a
transformers forward pass, on the same (A)/(B) judge prompts, both orders.

Pairs are two real SmolLM2-135M-Instruct answers to the same prompt. Ours scores the option
tokens with the pool's `score` (4 requests per pair: 2 orders x 2 options; vLLM's prefix cache
shares the prompt between the two options). The peer runs one batched forward pass per distinct
prompt (2 per pair) and reads both options from the next-token distribution, the cheapest
transformers way. Both give P(first is better); the script prints their largest difference as a
correctness check. Model loading and engine start-up are excluded; each side gets a warm-up.

    .venv/bin/python benchmarks/labelling.py [--pairs 32 --batch-size 8 --threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from alignray import cluster
from alignray.config import DataConfig, SamplerConfig
from alignray.data.conversation import TURN_STOP, clean_output
from alignray.data.sources import load_conversations
from alignray.feedback import rlaif
from alignray.models.registry import prepare
from alignray.principles import load_principles
from alignray.sampling.pool import SamplerPool
from alignray.sampling.types import SamplingSpec
from alignray.host import cpu_summary
from transformers import AutoModelForCausalLM, AutoTokenizer


def comparisons(pool: SamplerPool, n: int) -> list[rlaif.Comparison]:
    prompts = [c.transcript for c in load_conversations(DataConfig(source="donotanswer", limit=n))]
    outs = pool.generate(prompts, SamplingSpec(n=2, temperature=1.0, max_tokens=48, stop=TURN_STOP, seed=0))
    question = load_principles("harmlessness").instructions[0]
    return [rlaif.Comparison(p, question, clean_output(o[0].text) or "...", clean_output(o[1].text) or "...")
            for p, o in zip(prompts, outs)]


def hf_label(model_path, items: list[rlaif.Comparison], batch_size: int) -> list[float]:
    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    a, b = (tok(o, add_special_tokens=False).input_ids[0] for o in rlaif.OPTIONS)
    texts = [rlaif.judge_prompt(c, swapped) for c in items for swapped in (False, True)]
    logps = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tok(texts[i : i + batch_size], return_tensors="pt", padding=True)
            positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens only
            logits = model(**batch, position_ids=positions).logits
            last = torch.log_softmax(logits[:, -1].float(), dim=-1)
            logps += last[:, [a, b]].tolist()
    out = []
    for k in range(len(items)):
        (la, lb), (la_s, lb_s) = logps[2 * k], logps[2 * k + 1]
        out.append(0.5 * (rlaif.option_a_probability(la, lb) + 1 - rlaif.option_a_probability(la_s, lb_s)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="HF prompts per forward = prompts per pool request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the transformers side (the pool has 1 CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_path = prepare("smollm2-135m-instruct")
    cluster.connect()
    cfg = SamplerConfig(num_samplers=1, cpus_per_sampler=1, prompts_per_request=4 * args.batch_size, max_model_len=1024, kvcache_gib=2)
    with SamplerPool(model_path, cfg, seed=0) as pool:
        items = comparisons(pool, args.pairs)
        score = lambda p, c: pool.score(p, c)  # noqa: E731
        rlaif.label(score, items[:2])  # warm-up
        start = time.perf_counter()
        ours = rlaif.label(score, items)
        ours_s = time.perf_counter() - start
    hf_label(model_path, items[:2], args.batch_size)  # warm-up
    start = time.perf_counter()
    theirs = hf_label(model_path, items, args.batch_size)
    hf_s = time.perf_counter() - start

    print(f"\nCPU: {cpu_summary()}")
    print(f"SmolLM2-135M-Instruct labelling {len(items)} pairs (both orders), batch {args.batch_size}")
    print(f"transformers forward  : {len(items) / hf_s:8.2f} pairs/s  ({args.threads} torch thread(s))")
    print(f"alignray labeller     : {len(items) / ours_s:8.2f} pairs/s  (1 vLLM actor, 1 CPU)")
    print(f"ratio (ours / HF)     : {hf_s / ours_s:8.2f}x")
    print(f"max |P(first) ours - HF| = {max(abs(x - y) for x, y in zip(ours, theirs)):.2e}")


if __name__ == "__main__":
    main()
