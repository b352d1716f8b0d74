"""The networks of this toolkit, built by name: ``build_model("vlifnet", dim=16)``."""
from __future__ import annotations

import inspect

import torch.nn as nn

from .esdnet import ESDNet
from .vlifnet import VLIFNet

MODELS: dict[str, type[nn.Module]] = {"vlifnet": VLIFNet, "esdnet": ESDNet}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a network by name with its released defaults; keywords override constructor args.

    ``build_model("vlifnet", use_refinement=True)`` is the released Rain200L variant.
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(sorted(MODELS))}")
    cls = MODELS[key]
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{cls.__name__} has no argument(s) {', '.join(unknown)}; it accepts {', '.join(accepted)}")
    return cls(**kwargs)


__all__ = ["MODELS", "build_model", "VLIFNet", "ESDNet"]
