"""Input pipeline headroom: Grain examples/s against what the train step consumes.

    python benchmarks/input_pipeline.py [--config configs/bind_avdigits.py] [--batches 30]

Measures, in one process on this machine:
  * the Grain train iterator of the config (all transforms: decode, log-mel,
    SpecAugment, point sampling and augmentation, tokenisation; threads as
    config.data.num_threads), for several thread counts, after a warm-up;
  * the jitted train step of the same config (mmjax.step's, the one training runs:
    model, objective, accumulation, optimiser) on one batch, after compilation;
and prints a Markdown table with the ratio (target: pipeline >= 5x the step).
The two are timed separately, each with both cores; in training they share
them, so the ratio is an upper bound on the headroom seen in a run.
"""
import argparse
import importlib.util
import os
import pathlib
import sys
import time

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmjax import parallel  # noqa: E402
from mmjax import step as step_lib  # noqa: E402
from mmjax.batch_keys import model_inputs  # noqa: E402
from mmjax.data import pipeline  # noqa: E402


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def pipeline_rate(config, tokenizer, threads: int, batches: int) -> float:
    data = config.data.copy_and_resolve_references()
    data.num_threads = threads
    it = pipeline.make_train_iterator(data, global_batch_size=config.batch_size, seed=0, tokenizer=tokenizer,
                                      shard_index=0, shard_count=1)
    for _ in range(3):  # warm-up: thread start, first file reads
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * config.batch_size / (time.perf_counter() - start)


def step_rate(config, setup, batch, steps: int) -> float:
    mesh = parallel.make_mesh(config.mesh)
    init_rng, train_rng = step_lib.run_rngs(config.seed)
    layout = step_lib.state_layout(setup, mesh, init_rng)
    state = jax.jit(layout.init, out_shardings=layout.shardings)()
    step = step_lib.jit_train_step(setup, train_rng, mesh, layout.shardings)
    batch = parallel.host_to_global(model_inputs(batch), mesh)
    with jax.set_mesh(mesh):  # as in training: objectives with explicit collectives read it
        state, _ = step(state, batch)
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(steps):
            state, _ = step(state, batch)
        jax.block_until_ready(state)
    return steps * config.batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "bind_avdigits.py"))
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2, 4])
    args = parser.parse_args()
    config = load_config(args.config)
    setup = step_lib.build(config)
    tokenizer = setup.tokenizer
    first = next(pipeline.make_train_iterator(config.data, global_batch_size=config.batch_size, seed=0,
                                              tokenizer=tokenizer, shard_index=0, shard_count=1))
    consumed = step_rate(config, setup, first, args.steps)
    print(f"config: {os.path.relpath(args.config, ROOT)}, batch {config.batch_size}, "
          f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}\n")
    print(f"train step consumes: {consumed:.0f} examples/s\n")
    print("| Grain threads | pipeline examples/s | pipeline / step |")
    print("| ---: | ---: | ---: |")
    for threads in args.threads:
        rate = pipeline_rate(config, tokenizer, threads, args.batches)
        print(f"| {threads} | {rate:.0f} | {rate / consumed:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
