"""Sampling throughput: alignray's vLLM sampler pool vs batched transformers `generate`.

Both run SmolLM2-135M-Instruct in --dtype on the same prompts with the same sampling settings and
exactly the same number of new tokens per prompt (min = max), one after the other in this
process tree. Model loading and engine start-up are excluded; each side gets one warm-up batch.
Each vLLM actor reserves one CPU and computes with one thread; transformers runs in this process
with `--samplers` threads, so both use the same cores. MFU = 2 x N x tokens/s / peak: N = the
weights of every nn.Linear, peak = torch.mm's FLOP/s in --dtype on `--samplers` threads, measured
here (best of before and after); attention FLOPs and the prompt prefill are left out.

    .venv/bin/python benchmarks/sampling.py [--dtype bfloat16 --prompts 64 --max-tokens 64 ...]
"""

from __future__ import annotations

import argparse
import time

import torch
from alignray import cluster
from alignray.config import DataConfig, SamplerConfig
from alignray.data.sources import load_conversations
from alignray.models.registry import prepare
from alignray.sampling.pool import SamplerPool
from alignray.sampling.types import SamplingSpec
from flops import linear_params, peak_flops
from alignray.host import cpu_summary
from transformers import AutoModelForCausalLM, AutoTokenizer


def prompts_for(n: int) -> list[str]:
    convs = load_conversations(DataConfig(source="sample")) + load_conversations(DataConfig(source="mtbench"))
    return [c.transcript for c in convs[:n]]


def hf_tokens_per_s(model_path, prompts, args) -> tuple[float, int]:
    """(tokens/s, N linear weights)."""
    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, args.dtype)).eval()
    kwargs = dict(
        do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0,
        max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens, pad_token_id=tok.pad_token_id,
    )

    def run(batch_prompts):
        batch = tok(batch_prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, **kwargs)
        return (out.shape[1] - batch.input_ids.shape[1]) * len(batch_prompts)

    run(prompts[: args.batch_size])  # warm-up
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(prompts), args.batch_size):
        tokens += run(prompts[i : i + args.batch_size])
    return tokens / (time.perf_counter() - start), linear_params(model)


def pool_tokens_per_s(model_path, prompts, args) -> float:
    cluster.connect()
    cfg = SamplerConfig(
        num_samplers=args.samplers, cpus_per_sampler=1, prompts_per_request=args.batch_size,
        enforce_eager=not args.compile, max_model_len=1024, kvcache_gib=2,
    )
    spec = SamplingSpec(
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        min_tokens=args.max_tokens, seed=0,
    )
    with SamplerPool(model_path, cfg, dtype=args.dtype) as pool:
        pool.generate(prompts[: args.batch_size], spec)  # warm-up
        start = time.perf_counter()
        outs = pool.generate(prompts, spec)
        elapsed = time.perf_counter() - start
    return sum(len(c.token_ids) for o in outs for c in o) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per prompt, both sides")
    parser.add_argument("--batch-size", type=int, default=16, help="HF batch = prompts per pool request")
    parser.add_argument("--samplers", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--compile", action="store_true", help="vLLM with torch.compile (not eager)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16", help="both sides")
    args = parser.parse_args()

    torch.set_num_threads(args.samplers)
    model_path = prepare("smollm2-135m-instruct")
    prompts = prompts_for(args.prompts)
    peaks = [peak_flops(args.dtype)]
    hf, n = hf_tokens_per_s(model_path, prompts, args)
    ours = pool_tokens_per_s(model_path, prompts, args)
    peaks.append(peak_flops(args.dtype))
    peak = max(peaks)
    print(f"\nCPU: {cpu_summary()}")
    print(f"SmolLM2-135M-Instruct {args.dtype}, {len(prompts)} prompts x {args.max_tokens} new tokens, "
          f"batch {args.batch_size}, T={args.temperature}, top_p={args.top_p}")
    print(f"peak {args.dtype} on {args.samplers} thread(s): {peak / 1e9:.0f} GFLOP/s; N linear = {n / 1e6:.1f}M")
    print(f"transformers generate : {hf:8.1f} tokens/s  MFU {2 * n * hf / peak:6.2%}")
    print(f"alignray sampler pool : {ours:8.1f} tokens/s  MFU {2 * n * ours / peak:6.2%}  ({args.samplers} vLLM actor(s))")
    print(f"ratio (pool / HF)     : {ours / hf:8.2f}x")


if __name__ == "__main__":
    main()
