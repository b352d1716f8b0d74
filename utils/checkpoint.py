"""Checkpoints: strict loading of released and own weights, atomic saving.

Three file layouts are accepted by :func:`load_checkpoint`:
- a raw state dict (the authors' released ``.pth`` files),
- a dict holding ``state_dict`` (some released training scripts),
- this project's own checkpoint (``format``, ``arch``, ``config``, ``state_dict``, plus the
  training state written by ``train.py``).

Prefixes added by DataParallel/DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) are
stripped. Weights always load with ``strict=True``; a mismatch raises
:class:`CheckpointMismatchError` naming the first missing and unexpected keys.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from models import MODELS, build_model
from data.io import atomic_write

FORMAT = "spiking-derain-checkpoint/1"
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or does not fit the requested network."""


class CheckpointMismatchError(CheckpointError):
    """The state dict's keys or shapes differ from the network's."""


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove any leading ``module.`` / ``_orig_mod.`` (in any order, repeated) from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def _count(state_dict: Mapping[str, Any], level: str) -> int:
    """Number of blocks in ``level`` (keys ``level.<i>.*``)."""
    pattern = re.compile(rf"^{re.escape(level)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Recognise the network and its constructor arguments from a (prefix-free) state dict.

    Returns ``(name, config)``; raises :class:`CheckpointError` for an unrelated state dict.
    Block counts at indices the networks do not use keep their released defaults.
    """
    if "patch_embed.proj.weight" not in state_dict:
        raise CheckpointError(
            "the state dict has no 'patch_embed.proj.weight': it is not a VLIFNet or ESDNet "
            f"checkpoint (first keys: {', '.join(list(state_dict)[:3])})"
        )
    dim = int(state_dict["patch_embed.proj.weight"].shape[0])
    ta_keys = [k for k in state_dict if k.endswith("attn.ta.sharedMLP.0.weight")]
    T = int(state_dict[ta_keys[0]].shape[1]) if ta_keys else 4
    if "encoder_level1.initial_residual.conv1.weight" in state_dict:
        config: dict[str, Any] = dict(
            dim=dim,
            en_num_blocks=[4, _count(state_dict, "encoder_level2"), _count(state_dict, "encoder_level3"), 8],
            de_num_blocks=[2, _count(state_dict, "decoder_level2"), _count(state_dict, "decoder_level3"), 2],
            T=T,
            use_refinement=any(k.startswith("refinement_blocks.") for k in state_dict),
        )
        adjust = state_dict.get("encoder_level1.initial_residual.lif_2.channel_adjust.weight")
        if adjust is not None:
            config["r"] = int(round((adjust.shape[1] // adjust.shape[0]) ** 0.5))
        return "vlifnet", config
    if "refinement.ca.1.weight" in state_dict:
        levels = ("encoder_level1", "encoder_level2", "encoder_level3")
        config = dict(
            dim=dim,
            en_num_blocks=[_count(state_dict, lv) for lv in levels] + [8],
            de_num_blocks=[_count(state_dict, f"decoder_level{i}") for i in (1, 2, 3)] + [2],
            T=T,
        )
        return "esdnet", config
    raise CheckpointError(
        "the state dict has a patch embedding but neither VLIFNet's SMU keys nor ESDNet's "
        "refinement keys; pass --arch and check that the file belongs to this project"
    )


_HEADERS = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive; before torch 1.6, a pickle


def _unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` failed on ``path``, in words: not a checkpoint at all, or a damaged one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as err:
        return f"cannot read checkpoint {path}: {err.strerror}; check the path and its permissions"
    if not head:
        return f"checkpoint {path} is empty (0 bytes): a copy or download was cut short; copy or download it again"
    if not head.startswith(_HEADERS):
        text = head.decode("utf-8", errors="replace").split("\n")[0].strip()
        what = (f"it is text starting with {text[:40]!r}" if text.isprintable() and text
                else f"it starts with the bytes {head[:8].hex(' ')}")
        return (f"{path} is not a PyTorch checkpoint: {what}, while files written by torch.save start with "
                "a zip or pickle header. Pass the .pth weights file itself (e.g. pretrained_models/Rain200H.pth); "
                "a download that saved a web page instead of the file must be repeated.")
    detail = re.split(r"(?<=\.)\s|\n", str(exc).strip(), maxsplit=1)[0][:200]  # torch's first sentence
    return (f"cannot read checkpoint {path} ({type(exc).__name__}: {detail}): the file is truncated or not a "
            "PyTorch checkpoint of tensors and plain values (corrupt, or holding other objects); download or "
            "copy it again, or save only its state_dict.")


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file into this project's layout: ``arch``, ``config``, ``state_dict``
    (prefix-free) and, for own checkpoints, everything else they hold."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise CheckpointError(_unreadable(path, exc)) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    ckpt = dict(obj) if "state_dict" in obj and isinstance(obj["state_dict"], Mapping) else {"state_dict": obj}
    state = strip_prefixes(ckpt["state_dict"])
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: 'state_dict' holds values that are not tensors")
    ckpt["state_dict"] = state
    if "arch" not in ckpt or "config" not in ckpt:
        ckpt["arch"], ckpt["config"] = infer_architecture(state)
    return ckpt


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """``model.load_state_dict(strict=True)`` with an error that says what differs and what to try."""
    state_dict = strip_prefixes(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs network {tuple(own[k].shape)}"
        for k in own if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit {type(model).__name__}({getattr(model, 'config', '')}):"]
        if missing:
            parts.append(f"{len(missing)} missing keys, first: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first: {', '.join(unexpected[:3])}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches, first: {shapes[0]}")
        hint = "check --arch and the constructor arguments"
        if any(k.startswith("refinement_blocks.") for k in missing + unexpected):
            hint = "the refinement blocks differ: toggle --use_refinement (the released Rain200L model has them)"
        parts.append(f"Try: {hint}, or build the model with utils.checkpoint.load_model, which reads them from the file.")
        raise CheckpointMismatchError(" ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load_model(
    path: str | os.PathLike,
    arch: str | None = None,
    map_location: str | torch.device = "cpu",
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network a checkpoint describes and load its weights strictly.

    ``arch`` overrides the recognised network; ``overrides`` replace constructor arguments.
    Returns ``(model, checkpoint)``; the model is on ``map_location``, in eval mode.
    """
    ckpt = read_checkpoint(path, map_location)
    name = arch or ckpt["arch"]
    config = dict(ckpt["config"]) if name == ckpt["arch"] else {}
    config.update(overrides)
    model = build_model(name, **config)
    load_state_dict_strict(model, ckpt["state_dict"], source=f"checkpoint {path}")
    return model.to(map_location).eval(), ckpt


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    with atomic_write(path, "wb", fsync=True) as fh:
        torch.save(obj, fh)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_checkpoint(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """This project's self-describing checkpoint: network name, constructor arguments, weights."""
    net = getattr(model, "module", model)
    net = getattr(net, "_orig_mod", net)
    arch = next(name for name, cls in MODELS.items() if isinstance(net, cls))
    return {"format": FORMAT, "arch": arch, "config": dict(net.config), "state_dict": net.state_dict(), **extra}
