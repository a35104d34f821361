"""torchvision.ops.misc (benchmark shim): FrozenBatchNorm2d, used only to freeze a CNN tower."""
from torchvision import unavailable

FrozenBatchNorm2d = unavailable("ops.misc.FrozenBatchNorm2d")
