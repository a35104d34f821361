"""Builds mmjax's embedded TFDS datasets ahead of a run and prints their splits.

On a pod, run this once on a host that can write the shared data directory so
that the training processes start reading at once:

    python tools/build_datasets.py --data_dir /shared/tfds

Without --data_dir it uses $MMJAX_DATA_DIR, else ~/.cache/mmjax/tfds, as the
trainer does. Building is idempotent: a prepared dataset is left as it is.
"""
import argparse

from mmjax.data import builders
from mmjax.data.datasets import DATASETS, TfdsDataset

# Datasets with a TFDS builder of their own; generated ones (fake) have nothing to build.
STORED = sorted(name for name, dataset in DATASETS.items()
                if issubclass(dataset, TfdsDataset) and hasattr(dataset, "builder_cls"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--datasets", nargs="*", default=STORED, choices=STORED)
    args = parser.parse_args()
    for name in args.datasets:
        builder_cls = DATASETS.get(name).builder_cls
        data_dir = builders.ensure_prepared(builder_cls, args.data_dir)
        info = builder_cls(data_dir=data_dir).info
        splits = ", ".join(f"{s}={info.splits[s].num_examples}" for s in sorted(info.splits))
        print(f"{name} {info.version} in {data_dir}: {splits}")


if __name__ == "__main__":
    main()
