"""The policy app's engine loop, in a process of its own (vLLM's in-process engine state is
process-wide): a switch drains the old engine, and shutting it down leaves the new one working."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # two vLLM engines, in a subprocess

SCRIPT = textwrap.dedent('''
    import asyncio, gc, sys
    from alignray.models.tiny import make_tiny_llama
    from alignray.serve.engine import EngineClosed, EngineLoop
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    ARGS = dict(max_model_len=128, dtype="float32", enforce_eager=True, kvcache_gib=1, gpu_memory_utilization=0.45, seed=0)

    async def text(stream):
        return "".join([o.outputs[0].text async for o in stream])

    async def main(old_path, new_path):
        params = SamplingParams(max_tokens=12, temperature=0, output_kind=RequestOutputKind.DELTA)
        old = EngineLoop(old_path, **ARGS)
        ids = old.tokenizer.encode("Hello there")
        expected_old = await text(old.generate(ids, params))
        in_flight = old.generate(ids, params)
        first = await anext(in_flight)  # a request running on the old engine while the new one is built
        new = EngineLoop(new_path, **ARGS)
        old.close()
        assert first.outputs[0].text + await text(in_flight) == expected_old  # it finished on the old engine
        old._thread.join(60)
        assert not old._thread.is_alive()
        gc.collect()  # the old engine is gone: its shutdown must leave vLLM's shared state alone
        after = await text(new.generate(ids, params))
        assert after and after != expected_old, (after, expected_old)
        try:
            await anext(old.generate(ids, params))
            raise AssertionError("a closed engine took a request")
        except EngineClosed:
            pass
        print("OK", repr(expected_old), repr(after))

    if __name__ == "__main__":
        folder = sys.argv[1]
        old, new = make_tiny_llama(folder + "/old", seed=0), make_tiny_llama(folder + "/new", seed=3)
        asyncio.run(main(str(old), str(new)))
''')


def test_a_switch_drains_the_old_engine_and_its_shutdown_spares_the_new_one(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]
