"""torchvision.ops (benchmark shim)."""
