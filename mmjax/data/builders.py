"""What every embedded TFDS builder shares: the data dir, a base class, a locked build.

mmjax's builders read only files shipped inside the package, write ArrayRecord
(read back by `tfds.data_source` without TensorFlow), and are built on first use.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time

import tensorflow_datasets as tfds
from etils import epath

log = logging.getLogger(__name__)


def resolve_data_dir(data_dir: str | None = None) -> str:
    """`data_dir`, else $MMJAX_DATA_DIR, else ~/.cache/mmjax/tfds."""
    return os.path.abspath(os.path.expanduser(
        data_dir or os.environ.get("MMJAX_DATA_DIR") or "~/.cache/mmjax/tfds"))


class EmbeddedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for builders of package data: ArrayRecord output, no downloads."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup for a builder inside a package touches the
        # `importlib_resources` backport, which is not among our dependencies.
        import inspect
        return epath.Path(inspect.getfile(cls))

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)


@contextlib.contextmanager
def _file_lock(path: str):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_prepared(builder) -> bool:
    # The existence check first keeps TFDS from warning about a missing folder.
    return builder.data_path.exists() and builder.is_prepared()


def ensure_prepared(builder_cls, data_dir: str | None = None) -> str:
    """Builds `builder_cls` under data_dir unless already there; returns data_dir.

    The lock makes concurrent starters (several processes of one job, parallel
    test workers) build once: the first builds, the rest wait and then find it
    prepared. TFDS writes into a temporary directory and renames at the end, so
    a crashed build never looks prepared.
    """
    data_dir = resolve_data_dir(data_dir)
    if _is_prepared(builder_cls(data_dir=data_dir)):
        return data_dir
    os.makedirs(data_dir, exist_ok=True)
    with _file_lock(os.path.join(data_dir, f".{builder_cls.name}.lock")):
        builder = builder_cls(data_dir=data_dir)  # Re-check: another process may have built it.
        if not _is_prepared(builder):
            tfds.disable_progress_bar()
            start = time.perf_counter()
            builder.download_and_prepare()
            log.info("built %s in %s in %.1fs", builder_cls.name, data_dir, time.perf_counter() - start)
    return data_dir
