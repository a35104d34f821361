"""Benchmark-only stand-in for torchvision: NOT torchvision.

open_clip imports a few torchvision names when it is imported (image
transforms in open_clip/transform.py, FrozenBatchNorm2d in open_clip/utils.py),
although a model built with `open_clip.create_model` and trained on tensors
never calls them. Where no torchvision build matches the installed torch (the
development CPU machine: its torchvision wheel is a CUDA build that fails to
register its ops), benchmarks/peers/open_clip_step.py puts this folder first
on sys.path so that `import open_clip` works. Every name here raises if it is
used, so a benchmark can never silently run a fake transform; the model code
timed is open_clip's own.
"""
__version__ = "0.0.0+mmjax-benchmark-shim"


def unavailable(name: str):
    """A class standing in for torchvision's `name` that fails when constructed."""

    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"torchvision.{name} is not available: this is mmjax's benchmark import shim "
                               "(benchmarks/peers/torchvision_shim), which only lets open_clip import")

    Unavailable.__name__ = Unavailable.__qualname__ = name.rsplit(".", 1)[-1]
    return Unavailable
