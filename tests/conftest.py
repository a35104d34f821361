"""Test session setup: 8 simulated CPU devices for the mesh tests.

XLA reads the flag once, when the backend starts, so it must be set before
anything imports jax. Single-device tests use a mesh over `jax.devices()[:1]`.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The pipeline's TFDS build goes into a per-session cache shared by all tests.
os.environ.setdefault("MMJAX_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "build", "test_data"))

# The longest tests (tens of seconds each: several processes or whole training runs) go first, so
# that pytest-xdist's two workers do not end with one of them running a long test alone while the
# other idles (longest-processing-time-first scheduling; the order of the others is unchanged).
LONGEST_FIRST = (
    "tests/test_multihost.py::test_two_processes_resume_exactly",
    "tests/test_train.py::test_exact_resume_after_sigkill_and_sigterm",
    "tests/test_real_data.py::test_pod_clip_runs_with_data_real_on_a_converted_corpus",
    "tests/test_pod_configs.py::test_tiny_fake_run_trains_two_steps",
    "tests/test_train.py::test_four_modality_binding_trains_with_modality_dropout",
    "tests/test_extension.py::test_new_modality_dataset_encoder_and_evaluator_train_and_evaluate",
    "tests/test_masked_models.py::test_masked_config_trains",
    "tests/test_mae.py::test_masked_configs_train_and_probe_from_step_zero",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))
    items.sort(key=rank)  # stable: the rest keep their collection order
