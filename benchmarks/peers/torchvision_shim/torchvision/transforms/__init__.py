"""The torchvision.transforms names open_clip imports at import time (benchmark shim)."""
import enum

from torchvision import unavailable
from torchvision.transforms import functional  # noqa: F401  (open_clip: `import ... functional as F`)


class InterpolationMode(enum.Enum):
    # open_clip reads these members in default arguments, at import time.
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


Normalize, Compose, RandomResizedCrop, ToTensor, Resize, CenterCrop, ColorJitter, Grayscale = (
    unavailable(f"transforms.{n}") for n in
    ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop", "ColorJitter", "Grayscale"))
