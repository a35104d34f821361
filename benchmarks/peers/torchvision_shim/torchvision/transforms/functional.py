"""torchvision.transforms.functional (benchmark shim): every function is missing."""


def __getattr__(name):  # PEP 562; AttributeError so that `from ... import x` is an ImportError
    raise AttributeError(f"torchvision.transforms.functional.{name} is not available in mmjax's benchmark shim")
