"""Checkpoint loading: released layouts, prefixes, recognition, clear errors, atomic saving."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import build_model
from utils.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    atomic_save,
    infer_architecture,
    load_model,
    load_state_dict_strict,
    make_checkpoint,
    read_checkpoint,
)

GOLDEN64 = Path(__file__).parent / "data" / "golden64"


@pytest.mark.exactness
@pytest.mark.parametrize("file", ["vlifnet_small_f64.pt", "vlifnet_small_refine_f64.pt", "esdnet_small_f64.pt"])
@pytest.mark.parametrize("layout", ["raw", "wrapped", "module", "compiled"])
def test_released_layouts_load_strictly_and_reproduce_golden(tmp_path, file, layout):
    ref = torch.load(GOLDEN64 / file, weights_only=True)
    state = ref["state_dict"]
    if layout == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    if layout == "compiled":
        state = {f"_orig_mod.module.{k}": v for k, v in state.items()}
    obj = {"state_dict": state, "epoch": 3} if layout == "wrapped" else state
    torch.save(obj, tmp_path / "w.pth")

    model, ckpt = load_model(tmp_path / "w.pth")
    used = {k: v for k, v in ref["config"].items()}
    for key in ("en_num_blocks", "de_num_blocks"):  # only some indices are used by each network
        used[key] = [used[key][i] for i in ((1, 2) if ckpt["arch"] == "vlifnet" else (0, 1, 2))]
        ckpt["config"][key] = [ckpt["config"][key][i] for i in ((1, 2) if ckpt["arch"] == "vlifnet" else (0, 1, 2))]
    assert ckpt["arch"] == ("esdnet" if file.startswith("esdnet") else "vlifnet")
    assert {k: ckpt["config"][k] for k in used} == used
    with torch.no_grad():  # float64: exact on every CPU (SPEC 5b)
        assert (model.double()(ref["input"].double()) - ref["output_eval"]).abs().max() < 1e-9


def test_refinement_is_recognised_from_keys(tiny_config):
    plain = build_model("vlifnet", **tiny_config).state_dict()
    refined = build_model("vlifnet", **tiny_config, use_refinement=True).state_dict()
    assert infer_architecture(plain)[1]["use_refinement"] is False
    assert infer_architecture(refined)[1]["use_refinement"] is True


def test_own_checkpoint_round_trip_keeps_ablation_config(tmp_path, tiny_config):
    net = build_model("vlifnet", **tiny_config, neuron="nilif", T=2)
    atomic_save(make_checkpoint(net, epoch=7), tmp_path / "own.pth")
    model, ckpt = load_model(tmp_path / "own.pth")
    assert ckpt["epoch"] == 7 and model.config == net.config
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), net.eval()(x))


def test_mismatch_names_first_keys_and_suggests_refinement(tiny_config):
    refined = build_model("vlifnet", **tiny_config, use_refinement=True).state_dict()
    plain_model = build_model("vlifnet", **tiny_config)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(plain_model, refined, source="w.pth")
    message = str(info.value)
    assert "w.pth" in message and "unexpected keys, first: refinement_blocks.0." in message
    assert "--use_refinement" in message


def test_shape_mismatch_is_reported(tiny_config):
    small = build_model("esdnet", **tiny_config).state_dict()
    wide = build_model("esdnet", **{**tiny_config, "dim": 32})
    with pytest.raises(CheckpointMismatchError, match="shape mismatches, first: patch_embed.proj.weight"):
        load_state_dict_strict(wide, small)


def test_arch_override_to_other_network_fails_loudly(tmp_path, tiny_config):
    torch.save(build_model("esdnet", **tiny_config).state_dict(), tmp_path / "esd.pth")
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_model(tmp_path / "esd.pth", arch="vlifnet", **tiny_config)


def test_unrelated_truncated_and_missing_files(tmp_path, tiny_config):
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(CheckpointError, match="not a VLIFNet or ESDNet"):
        read_checkpoint(tmp_path / "linear.pth")

    torch.save(build_model("esdnet", **tiny_config).state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(tmp_path / "cut.pth")

    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "last.pth"
    atomic_save({"a": torch.ones(2)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
