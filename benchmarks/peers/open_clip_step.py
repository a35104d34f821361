"""open_clip's CLIP train step, as open_clip_train runs it, for side-by-side timing.

One step is what `open_clip_train/train.py::train_one_epoch` does per batch
without gradient accumulation or clipping (its defaults): autocast forward
(a no-op in fp32), `ClipLoss`, backward, `torch.optim.AdamW` over open_clip's
two parameter groups (no weight decay for gains, biases and the temperature),
then the logit scale clamped to log(100). The model is
`open_clip.create_model(name)` with random weights: nothing is downloaded.

Needs torch and open_clip_torch (the `bench` extra, or see benchmarks/README.md);
where torchvision cannot be imported (a torchvision build that does not match
torch), a benchmark-only import shim stands in for it: see torchvision_shim/.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time

SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchvision_shim")


def import_open_clip():
    """`import open_clip`, with the torchvision shim if the real torchvision fails to import."""
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # ImportError, or RuntimeError from a wheel built for another torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.path.insert(0, SHIM_DIR)
        print(f"peers: torchvision unusable ({type(e).__name__}: {str(e)[:80]}); using the import shim",
              file=sys.stderr)
    import open_clip
    return open_clip


class OpenClipTrainStep:
    """open_clip model + ClipLoss + AdamW on one device; `step(images, texts)` runs one update.

    images: float32 [B, 3, H, W] (NCHW); texts: int64 [B, L] token ids whose
    end token is the largest id (open_clip pools the argmax).
    """

    def __init__(self, model_name: str, *, device: str = "cpu", amp_dtype=None, lr: float = 5e-4,
                 weight_decay: float = 0.2, betas=(0.9, 0.98), eps: float = 1e-6):
        import torch

        open_clip = import_open_clip()
        torch.manual_seed(0)  # the same random init in every run
        self.torch = torch
        self.device = torch.device(device)
        self.model = open_clip.create_model(model_name, device=self.device, output_dict=True)
        self.model.train()
        self.loss = open_clip.ClipLoss()
        # open_clip_train/main.py's groups: no decay for gains, biases and the temperature.
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        named = list(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
             {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay}],
            lr=lr, betas=betas, eps=eps)
        # open_clip's --precision amp_bf16: autocast around forward and loss, fp32 params.
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype is not None \
            else contextlib.nullcontext
        self.num_params = sum(p.numel() for _, p in named)

    def step(self, images, texts) -> float:
        """One training step; returns the loss (a host float, so the step has finished)."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.model(images, texts)
            loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        self.optimizer.step()
        with self.torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return loss.detach().item()

    def timed_step(self, images, texts) -> tuple[float, float]:
        """(seconds, loss) of one step, device work included."""
        start = time.perf_counter()
        loss = self.step(images, texts)  # .item() synchronises the device
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        return time.perf_counter() - start, loss
