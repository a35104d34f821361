"""Input pipeline headroom: Grain examples/s against what the train step consumes.

    python benchmarks/input_pipeline.py [--config configs/bind_avdigits.py[:variant]] [--set k=v ...]
                                        [--workers 0 1 2] [--batches 30]

Measures, in one process on this machine:
  * the Grain train iterator of the config (all transforms: JPEG/PNG decoding, random resized
    crop, log-mel, SpecAugment, point sampling, tokenisation; config.data.num_threads threads)
    for each number of worker processes in --workers (data.num_workers; 0 = in this process),
    after a warm-up that includes the workers' start;
  * the jitted train step of the same config (mmjax.step's, the one training runs:
    model, objective, accumulation, optimiser) on one batch, after compilation;
and prints a Markdown table with the ratio (target: pipeline >= 5x the step).
The two are timed separately, each with every core; in training they share
them, so the ratio is an upper bound on the headroom seen in a run.
A converted corpus: `--set data.name=tfds data.tfds.dir=/data/x`; `--synthetic-jpegs DIR` makes and
converts 500x375 JPEGs (benchmarks/decode.py's) to measure JPEG decoding + crop + resize at the
config's resolution, e.g. `--config configs/pod/clip_vitb16.py:data=fake,size=tiny --set
'data.image.shape=(224,224,3)' data.text.tokenizer_path= --synthetic-jpegs /tmp/jpegs`.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from mmjax import parallel  # noqa: E402
from mmjax import step as step_lib  # noqa: E402
from mmjax.batch_keys import model_inputs  # noqa: E402
from mmjax.config_utils import apply_overrides  # noqa: E402
from mmjax.data import pipeline  # noqa: E402


def load_config(path: str, overrides=()):
    path, _, variant = path.partition(":")
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant or None)
    apply_overrides(config, list(overrides))
    return config


def synthetic_jpeg_corpus(folder: str, count: int) -> str:
    """A converted webdataset of `count` photo-like 500x375 JPEGs with captions under `folder`
    (made once): the input a CLIP run on LAION-style shards decodes."""
    out = os.path.join(folder, "corpus", "1.0.0")
    if os.path.exists(os.path.join(out, "dataset_info.json")):
        return out
    import io
    import tarfile

    from decode import make_jpegs  # benchmarks/decode.py: the same images its table decodes
    from mmjax.ingest import cli

    os.makedirs(folder, exist_ok=True)
    tar_path = os.path.join(folder, "00000.tar")
    with tarfile.open(tar_path, "w") as tar:
        for i, jpeg in enumerate(make_jpegs(count, 500, 375)):
            for ext, data in (("jpg", jpeg), ("txt", f"a photo of blob number {i}".encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    if cli.main(["webdataset", tar_path, "--out", out, "--workers", "1"]):
        raise SystemExit("conversion failed")
    return out


def pipeline_rate(config, tokenizer, workers: int, batches: int) -> float:
    data = config.data.copy_and_resolve_references()
    data.num_workers = workers
    it = pipeline.make_train_iterator(data, global_batch_size=config.batch_size, seed=0, tokenizer=tokenizer,
                                      shard_index=0, shard_count=1)
    for _ in range(3 + 2 * workers):  # warm-up: worker start, first file reads, every worker's buffer
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * config.batch_size / (time.perf_counter() - start)
    it.close()
    return rate


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
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--synthetic-jpegs", default="", metavar="DIR",
                        help="read a converted corpus of 500x375 JPEGs made in DIR (data.name=tfds)")
    parser.add_argument("--jpeg-count", type=int, default=512)
    args = parser.parse_args()
    sets = list(args.set)
    if args.synthetic_jpegs:
        corpus = synthetic_jpeg_corpus(args.synthetic_jpegs, args.jpeg_count)
        sets = ["data.name=tfds", f"data.tfds.dir={corpus}", "data.tfds.label_field=", *sets]
    config = load_config(args.config, sets)
    setup = step_lib.build(config)
    tokenizer = setup.tokenizer
    first = next(pipeline.make_train_iterator(config.data, global_batch_size=config.batch_size, seed=0,
                                              tokenizer=tokenizer, shard_index=0, shard_count=1))
    consumed = step_rate(config, setup, first, args.steps)
    print(f"config: {os.path.relpath(args.config, ROOT)}, batch {config.batch_size}, "
          f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}\n")
    print(f"train step consumes: {consumed:.0f} examples/s; Grain threads per process: {config.data.num_threads}\n")
    print("| worker processes | pipeline examples/s | pipeline / step |")
    print("| ---: | ---: | ---: |")
    for workers in args.workers:
        rate = pipeline_rate(config, tokenizer, workers, args.batches)
        print(f"| {workers} | {rate:.0f} | {rate / consumed:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
