"""Weight sync: seconds per trainer-to-sampler update on both transports (sampler.weight_transfer),
SmolLM2-135M-Instruct, for 1 and 2 samplers, and the bytes moved.

This process is the sender, as the trainer's rank 0 is in PPO: it holds the full HF state dict
(float32 by default, as a fp32 trainer's; `--dtype bfloat16` for a bf16 one; the samplers
compute in the same dtype) and calls
`SamplerPool.update_weights` without a probe (the probe check sits above the transport and
costs the same on both). `object_store`: `ray.put` of a CPU copy, every sampler fetches it and
reloads; `collective`: the gloo broadcast in buckets through vLLM's weight-transfer engine API
and our gloo engine. The first update of each pool is a warm-up, timed apart (the collective
one also forms the process group); the table shows the mean of the next `--repeats`.
"Delivered" counts the state dict's bytes once per sampler, what every sampler must receive.

    .venv/bin/python benchmarks/weight_sync.py [--samplers 1 2 --repeats 3 --dtype float32]
"""

from __future__ import annotations

import argparse
import time

import torch
from alignray import cluster
from alignray.config import SamplerConfig
from alignray.models.registry import prepare
from alignray.sampling.pool import SamplerPool
from alignray.host import cpu_summary
from transformers import AutoModelForCausalLM


def measure(model_path, state: dict, dtype: str, transport: str, samplers: int, repeats: int, bucket_mb: int) -> tuple[float, float]:
    """(seconds of the first update, mean seconds of the next `repeats`)."""
    cfg = SamplerConfig(
        num_samplers=samplers, cpus_per_sampler=1, max_model_len=256, kvcache_gib=1,
        weight_transfer=transport, weight_bucket_mb=bucket_mb,
    )
    with SamplerPool(model_path, cfg, dtype=dtype, seed=0) as pool:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            pool.update_weights(state)
            times.append(time.perf_counter() - start)
    return times[0], sum(times[1:]) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samplers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--transports", nargs="+", choices=["object_store", "collective"], default=["object_store", "collective"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="of the sent state dict and the samplers")
    parser.add_argument("--bucket-mb", type=int, default=256, help="sampler.weight_bucket_mb")
    parser.add_argument("--address", default="local", help="Ray cluster (default: start a new local one)")
    args = parser.parse_args()

    model_path = prepare("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, args.dtype))
    state = model.state_dict()
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.nbytes for t in state.values())  # lm_head ties to the embedding: sent twice
    print(f"CPU: {cpu_summary()}")
    print(f"SmolLM2-135M-Instruct weight sync: {params / 1e6:.1f}M parameters, state dict {nbytes / 1e6:.0f} MB"
          f" ({args.dtype}), buckets of {args.bucket_mb} MiB, mean of {args.repeats} after a warm-up")
    print(f"{'transport':<13} {'samplers':>8} {'first s':>8} {'s/sync':>8} {'delivered MB':>13} {'MB/s':>8}", flush=True)
    cluster.connect(args.address)
    rows = {}
    for samplers in args.samplers:
        for transport in args.transports:
            first, mean = rows[transport, samplers] = measure(
                model_path, state, args.dtype, transport, samplers, args.repeats, args.bucket_mb
            )
            delivered = nbytes * samplers / 1e6
            print(f"{transport:<13} {samplers:>8} {first:>8.2f} {mean:>8.2f} {delivered:>13.0f} {delivered / mean:>8.0f}",
                  flush=True)
    for samplers in args.samplers:
        if len(args.transports) == 2:
            ratio = rows["object_store", samplers][1] / rows["collective", samplers][1]
            print(f"ratio (object_store / collective s/sync), {samplers} sampler(s): {ratio:.2f}x")


if __name__ == "__main__":
    main()
