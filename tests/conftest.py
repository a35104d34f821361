"""Test session setup: 8 simulated CPU devices for the mesh tests.

XLA reads the flag once, when the backend starts, so it must be set before
anything imports jax. Single-device tests use a mesh over `jax.devices()[:1]`.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The pipeline's TFDS build goes into a per-session cache shared by all tests.
os.environ.setdefault("MMJAX_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "build", "test_data"))
