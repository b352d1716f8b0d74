"""data.prepare: every layout built in code, the report, exit codes, and untouched originals."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.prepare import NamePattern, PrepareError, main
from data.synthetic_rain import make_demo_dataset, make_paired_dataset

H, W = 20, 24  # tiny images: the tool's logic does not depend on size


def _img(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file under ``root``: the originals must not change."""
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _run(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().out


@pytest.fixture
def rain_norain(tmp_path) -> Path:
    """rain/rain-N.png + norain/norain-N.png, N = 1..3, plus a notes file."""
    src = tmp_path / "src"
    for i in (1, 2, 3):
        _write(src / "rain" / f"rain-{i}.png", _img(i))
        _write(src / "norain" / f"norain-{i}.png", _img(10 + i))
    (src / "rain" / "readme.txt").write_text("not an image")
    return src


# ------------------------------------------------------------------ name patterns
def test_name_pattern_ids_and_extension_handling():
    p = NamePattern.parse("norain-{id}x{k}:norain-{id}", r"\d+")
    assert p.match("rainy", Path("norain-12x2.png")) == "12"
    assert p.match("rainy", Path("norain-12.png")) is None
    assert p.match("clean", Path("norain-12.jpg")) == "12"
    assert p.match("clean", Path("norain-12x2.png")) is None  # \d+ keeps renderings out of the clean side
    assert p.clean_name("12") == "norain-12.*"
    q = NamePattern.parse("rain-{id}.png:norain-{id}.png")
    assert q.match("rainy", Path("rain-3.png")) == "3"
    assert q.match("rainy", Path("rain-3.jpg")) is None
    assert q.clean_name("3") == "norain-3.png"


@pytest.mark.parametrize("spec", ["rain-{id}", "rain-{id}:norain", "{id}:{id}:{id}", "r{k}:c{id}",
                                  "r{id}{id}:c{id}", "r{id}:c{id}{k}", "r{idx}:c{id}"])
def test_name_pattern_rejects_malformed(spec):
    with pytest.raises(PrepareError):
        NamePattern.parse(spec)


# ------------------------------------------------------------------ folders layout
def test_folders_rain_norain_pairs_by_name(tmp_path, rain_norain, capsys):
    before = _snapshot(rain_norain)
    out = tmp_path / "out"
    rc, text = _run(capsys, "--name", "Rain12", "--out", out, "--src", rain_norain, "--layout", "folders",
                    "--preset", "rain-norain")
    assert rc == 0, text
    test = out / "Rain12" / "test"
    assert _files(test / "input") == _files(test / "target") == ["rain-1.png", "rain-2.png", "rain-3.png"]
    for i in (1, 2, 3):  # byte copies, and each target is the clean image of its own id
        assert (test / "input" / f"rain-{i}.png").read_bytes() == (rain_norain / "rain" / f"rain-{i}.png").read_bytes()
        assert (test / "target" / f"rain-{i}.png").read_bytes() == (rain_norain / "norain" / f"norain-{i}.png").read_bytes()
    assert "pairs found: 3; files written: 6" in text and "result: OK" in text
    assert "readme.txt" in text  # ignored, but listed
    assert _snapshot(rain_norain) == before
    rc, text = _run(capsys, "--name", "Rain12", "--out", out, "--src", rain_norain, "--layout", "folders",
                    "--preset", "rain-norain")
    assert rc == 0 and "files written: 0, already there: 6" in text  # idempotent rerun


def test_unmatched_files_fail_unless_allowed(tmp_path, rain_norain, capsys):
    _write(rain_norain / "rain" / "rain-7.png", _img(7))  # no clean partner
    _write(rain_norain / "norain" / "norain-8.png", _img(8))  # no rainy image uses it
    _write(rain_norain / "norain" / "clean_9.png", _img(9))  # does not fit the clean pattern
    before = _snapshot(rain_norain)
    out = tmp_path / "out"
    args = ["--name", "Rain12", "--out", out, "--src", rain_norain, "--layout", "folders", "--preset", "rain-norain"]
    rc, text = _run(capsys, *args)
    assert rc == 1
    assert "unmatched files: 3" in text and "rain-7.png: no clean image norain-7.*" in text
    assert "norain-8.png: no rainy image" in text and "clean_9.png: name does not fit the clean pattern" in text
    assert "result: FAILED: unmatched files" in text
    assert not (out / "Rain12").exists()  # nothing written
    rc, text = _run(capsys, *args, "--allow_unmatched")
    assert rc == 0 and "unmatched files: 3" in text and "result: OK" in text
    assert _files(out / "Rain12" / "test" / "input") == ["rain-1.png", "rain-2.png", "rain-3.png"]
    assert _snapshot(rain_norain) == before


def test_several_renderings_share_one_clean_image(tmp_path, capsys):
    src = tmp_path / "src"
    for k in (1, 2, 3):
        _write(src / "rain" / f"norain-12x{k}.png", _img(k))
    _write(src / "rain" / "norain-5x1.png", _img(4))
    clean12, clean5 = _write(src / "norain" / "norain-12.png", _img(20)), _write(src / "norain" / "norain-5.png", _img(21))
    out = tmp_path / "out"
    rc, text = _run(capsys, "--name", "Rain200H", "--out", out, "--src", src, "--layout", "folders",
                    "--preset", "rain-norain-x", "--split", "train")
    assert rc == 0, text
    train = out / "Rain200H" / "train"
    names = ["norain-12x1.png", "norain-12x2.png", "norain-12x3.png", "norain-5x1.png"]
    assert _files(train / "input") == _files(train / "target") == names
    for name in names[:3]:
        assert (train / "target" / name).read_bytes() == clean12.read_bytes()
    assert (train / "target" / "norain-5x1.png").read_bytes() == clean5.read_bytes()


def test_rain_norain_x_preset_in_one_folder(tmp_path, capsys):
    src = tmp_path / "train"  # renderings and clean images side by side in one folder
    for k in (1, 2):
        _write(src / f"norain-7x{k}.png", _img(k))
    clean = _write(src / "norain-7.png", _img(9))
    rc, text = _run(capsys, "--name", "Rain200H", "--out", tmp_path / "out", "--src", src, "--layout", "folders",
                    "--preset", "rain-norain-x", "--rain_dir", ".", "--clean_dir", ".")
    assert rc == 0, text
    target = tmp_path / "out" / "Rain200H" / "test" / "target"
    assert _files(target) == ["norain-7x1.png", "norain-7x2.png"]
    assert (target / "norain-7x2.png").read_bytes() == clean.read_bytes()


def test_shared_folder_in_gt_and_custom_pattern(tmp_path, capsys):
    src = tmp_path / "rain12"
    for i in (1, 2):
        _write(src / f"{i}_in.png", _img(i))
        _write(src / f"{i}_GT.png", _img(10 + i))
    out = tmp_path / "out"
    rc, text = _run(capsys, "--name", "Rain12", "--out", out, "--src", src, "--layout", "folders",
                    "--preset", "in-gt", "--rain_dir", ".", "--clean_dir", ".")
    assert rc == 0, text
    test = out / "Rain12" / "test"
    assert _files(test / "input") == _files(test / "target") == ["1_in.png", "2_in.png"]
    assert (test / "target" / "2_in.png").read_bytes() == (src / "2_GT.png").read_bytes()
    # the same files through an explicit pattern with extensions: identical result, nothing rewritten
    rc, text = _run(capsys, "--name", "Rain12", "--out", out, "--src", src, "--layout", "folders",
                    "--pattern", "{id}_in.png:{id}_GT.png", "--rain_dir", ".", "--clean_dir", ".")
    assert rc == 0 and "files written: 0, already there: 4" in text


def test_shared_folder_ambiguous_names_are_clashes(tmp_path, capsys):
    src = tmp_path / "mixed"
    _write(src / "norain-3x1.png", _img(1))
    _write(src / "norain-3.png", _img(2))
    # with {id} = .+ "norain-3x1" also fits the clean template: refused, never resolved by guessing
    rc, text = _run(capsys, "--name", "x", "--out", tmp_path / "out", "--src", src, "--layout", "folders",
                    "--pattern", "norain-{id}x{k}:norain-{id}", "--rain_dir", ".", "--clean_dir", ".")
    assert rc == 1 and "name clashes: 1" in text and "fits both the rainy and the clean pattern" in text
    rc, text = _run(capsys, "--name", "x", "--out", tmp_path / "out", "--src", src, "--layout", "folders",
                    "--pattern", "norain-{id}x{k}:norain-{id}", "--id_regex", r"\d+", "--rain_dir", ".",
                    "--clean_dir", ".")
    assert rc == 0, text


def test_size_mismatch_and_unreadable_block_unless_skipped(tmp_path, rain_norain, capsys):
    _write(rain_norain / "rain" / "rain-4.png", _img(4))
    _write(rain_norain / "norain" / "norain-4.png", _img(5, H + 2, W))  # size mismatch
    (rain_norain / "rain" / "rain-5.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # unreadable
    _write(rain_norain / "norain" / "norain-5.png", _img(6))
    before = _snapshot(rain_norain)
    out = tmp_path / "out"
    args = ["--name", "Rain12", "--out", out, "--src", rain_norain, "--layout", "folders", "--preset", "rain-norain"]
    rc, text = _run(capsys, *args)
    assert rc == 1
    assert "size mismatches: 1" in text and f"rain-4.png is {W}x{H} but" in text and f"is {W}x{H + 2} (WxH)" in text
    assert "unreadable files: 1" in text and "rain-5.png: cannot be decoded" in text
    assert "pairs found: 3" in text and not out.exists()
    rc, text = _run(capsys, *args, "--skip_bad")
    assert rc == 0 and "size mismatches: 1" in text
    assert _files(out / "Rain12" / "test" / "target") == ["rain-1.png", "rain-2.png", "rain-3.png"]
    assert _snapshot(rain_norain) == before


# ------------------------------------------------------------------ side-by-side layout
@pytest.mark.parametrize("side", ["left", "right"])
def test_side_by_side_halves(tmp_path, capsys, side):
    src = tmp_path / "sbs"
    rainy, clean = _img(1), _img(2)
    halves = (rainy, clean) if side == "left" else (clean, rainy)
    _write(src / "a.jpg", np.concatenate(halves, axis=1))  # lossy source: halves must be its decoded pixels
    rc, text = _run(capsys, "--name", "Rain1200", "--out", tmp_path / "out", "--src", src,
                    "--layout", "side-by-side", "--input_side", side)
    assert rc == 0, text
    decoded = _read(src / "a.jpg")
    test = tmp_path / "out" / "Rain1200" / "test"
    left, right = decoded[:, :W], decoded[:, W:]
    assert np.array_equal(_read(test / "input" / "a.png"), left if side == "left" else right)
    assert np.array_equal(_read(test / "target" / "a.png"), right if side == "left" else left)


def test_side_by_side_odd_width_is_named(tmp_path, capsys):
    src = tmp_path / "sbs"
    _write(src / "good.png", _img(1, H, 2 * W))
    _write(src / "odd.png", _img(2, H, 2 * W + 1))
    rc, text = _run(capsys, "--name", "x", "--out", tmp_path / "out", "--src", src, "--layout", "side-by-side",
                    "--input_side", "left")
    assert rc == 1 and "odd widths: 1" in text and f"odd.png: width {2 * W + 1} is odd" in text
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ standard layout
def _standard(root: Path, splits=("train", "test"), n: int = 2) -> Path:
    for split in splits:
        for i in range(n):
            _write(root / split / "input" / f"{i}.png", _img(i))
            _write(root / split / "target" / f"{i}.png", _img(100 + i))
    return root


def test_standard_layout_copied_and_checked_in_place(tmp_path, capsys):
    src = _standard(tmp_path / "download" / "Rain200L")
    out = tmp_path / "out"
    rc, text = _run(capsys, "--name", "Rain200L", "--out", out, "--src", src, "--layout", "standard")
    assert rc == 0 and text.count("result: OK") == 2  # both splits
    assert {k: v[0] for k, v in _snapshot(out / "Rain200L").items()} == {k: v[0] for k, v in _snapshot(src).items()}
    before = _snapshot(out / "Rain200L")
    rc, text = _run(capsys, "--name", "Rain200L", "--out", out, "--src", out / "Rain200L", "--layout", "standard")
    assert rc == 0 and "files written: 0, already there: 4" in text and _snapshot(out / "Rain200L") == before
    (out / "Rain200L" / "test" / "target" / "1.png").unlink()  # a broken copy is reported
    rc, text = _run(capsys, "--name", "Rain200L", "--out", out, "--src", out / "Rain200L", "--layout", "standard",
                    "--split", "test")
    assert rc == 1 and "1.png: no clean image 1.*" in text


def test_standard_split_folder_needs_split_and_no_target(tmp_path, capsys):
    src = tmp_path / "rw"
    _write(src / "input" / "real1.png", _img(1))
    rc, _ = _run(capsys, "--name", "RW_Rain", "--out", tmp_path / "out", "--src", src, "--layout", "standard",
                 "--no_target")
    assert rc == 2  # input/ directly under --src: which split is it? Not guessed.
    rc, text = _run(capsys, "--name", "RW_Rain", "--out", tmp_path / "out", "--src", src, "--layout", "standard",
                    "--no_target", "--split", "test")
    assert rc == 0, text
    assert _files(tmp_path / "out" / "RW_Rain" / "test" / "input") == ["real1.png"]
    assert not (tmp_path / "out" / "RW_Rain" / "test" / "target").exists()
    rc, text = _run(capsys, "--name", "RW_Rain", "--out", tmp_path / "out2", "--src", src, "--layout", "folders",
                    "--no_target", "--rain_dir", "input")
    assert rc == 0 and _files(tmp_path / "out2" / "RW_Rain" / "test" / "input") == ["real1.png"]


# ------------------------------------------------------------------ writing rules
def test_existing_different_files_need_overwrite(tmp_path, rain_norain, capsys):
    out = tmp_path / "out"
    args = ["--name", "Rain12", "--out", out, "--src", rain_norain, "--layout", "folders", "--preset", "rain-norain"]
    stale = _write(out / "Rain12" / "test" / "target" / "rain-2.png", _img(99))
    stale_bytes = stale.read_bytes()
    rc, text = _run(capsys, *args)
    assert rc == 1 and "different files already in the output: 1" in text and "rain-2.png" in text
    assert stale.read_bytes() == stale_bytes and not (out / "Rain12" / "test" / "input").exists()
    rc, text = _run(capsys, *args, "--overwrite")
    assert rc == 0 and "files written: 6, already there: 0" in text
    assert stale.read_bytes() == (rain_norain / "norain" / "norain-2.png").read_bytes()
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_leftover_output_without_partner_is_reported(tmp_path, rain_norain, capsys):
    out = tmp_path / "out"
    _write(out / "Rain12" / "test" / "input" / "old.png", _img(1))
    rc, text = _run(capsys, "--name", "Rain12", "--out", out, "--src", rain_norain, "--layout", "folders",
                    "--preset", "rain-norain")
    assert rc == 1 and "output files without a partner: 1" in text and "old.*: no partner" in text
    assert (out / "Rain12" / "test" / "input" / "old.png").exists()  # reported, never deleted


@pytest.mark.parametrize("mode", ["symlink", "hardlink"])
def test_link_modes(tmp_path, rain_norain, capsys, mode):
    out = tmp_path / "out"
    rc, text = _run(capsys, "--name", "Rain12", "--out", out, "--src", rain_norain, "--layout", "folders",
                    "--preset", "rain-norain", "--mode", mode)
    assert rc == 0, text
    dst, src = out / "Rain12" / "test" / "target" / "rain-1.png", rain_norain / "norain" / "norain-1.png"
    assert os.path.samefile(dst, src)
    assert dst.is_symlink() == (mode == "symlink")


def test_output_inside_a_source_folder_is_refused(tmp_path, capsys):
    # the authors' folder names, but clean images named differently: --out pointing at the
    # download would write rainy names into the original target/ folder
    src = tmp_path / "data" / "Rain200H" / "test"
    _write(src / "input" / "rain-1.png", _img(1))
    _write(src / "target" / "norain-1.png", _img(2))
    before = _snapshot(src)
    rc, _ = _run(capsys, "--name", "Rain200H", "--out", tmp_path / "data", "--src", src, "--layout", "folders",
                 "--rain_dir", "input", "--clean_dir", "target", "--preset", "rain-norain")
    assert rc == 2 and _snapshot(src) == before


def test_dry_run_and_report_file(tmp_path, rain_norain, capsys):
    report = tmp_path / "report.txt"
    rc, text = _run(capsys, "--name", "Rain12", "--out", tmp_path / "out", "--src", rain_norain, "--layout",
                    "folders", "--preset", "rain-norain", "--dry_run", "--report", report)
    assert rc == 0 and "dry run: nothing written" in text and not (tmp_path / "out").exists()
    assert report.read_text() == text


@pytest.mark.parametrize("argv", [
    ["--layout", "folders"],  # neither --pattern nor --preset
    ["--layout", "folders", "--preset", "in-gt", "--pattern", "a{id}:b{id}"],  # both
    ["--layout", "folders", "--pattern", "a{id}"],  # malformed pattern
    ["--layout", "side-by-side"],  # no --input_side
    ["--layout", "side-by-side", "--input_side", "left", "--mode", "symlink"],  # halves cannot be links
    ["--layout", "side-by-side", "--input_side", "left", "--no_target"],  # a side-by-side image has a clean half
    ["--synthetic", "synth-light", "--layout", "standard"],  # a synthetic set has no --src/--layout
    ["--layout", "standard", "--preset", "in-gt"],  # pattern options belong to folders
    ["--layout", "folders", "--preset", "in-gt", "--input_side", "left"],
])
def test_argument_errors_exit_2(tmp_path, rain_norain, capsys, argv):
    rc, _ = _run(capsys, "--name", "x", "--out", tmp_path / "out", "--src", rain_norain, *argv)
    assert rc == 2 and not (tmp_path / "out").exists()


def test_missing_source_folder_exit_2(tmp_path, capsys):
    rc, _ = _run(capsys, "--name", "x", "--out", tmp_path / "out", "--src", tmp_path / "nope", "--layout",
                 "folders", "--preset", "rain-norain")
    assert rc == 2


# ------------------------------------------------------------------ synthetic sets
def test_synthetic_set_equals_generator_output(tmp_path, capsys):
    out = tmp_path / "out"
    rc, text = _run(capsys, "--synthetic", "synth-light", "--out", out, "--synthetic_size", "24x32",
                    "--no-synthetic_train", "--seed", "3")
    assert rc == 0, text
    direct = make_paired_dataset(tmp_path / "direct", "test", "light", seed=3, size=(24, 32), supersample=2)
    prepared = out / "synth-light" / "test"
    assert _snapshot(prepared).keys() == _snapshot(direct).keys() and len(_files(prepared / "input")) == 4
    assert {k: v[0] for k, v in _snapshot(prepared).items()} == {k: v[0] for k, v in _snapshot(direct).items()}
    assert not (out / "synth-light" / "train").exists()
    assert [p.name for p in out.iterdir()] == ["synth-light"]  # the temporary build folder is gone


def test_synthetic_heavy_test_split_is_the_demo_test_set(tmp_path, capsys):
    rc, text = _run(capsys, "--synthetic", "synth-heavy", "--out", tmp_path / "out", "--no-synthetic_train")
    assert rc == 0, text
    demo = make_demo_dataset(tmp_path / "demo", splits=("test",))["test"]
    prepared = tmp_path / "out" / "synth-heavy" / "test"
    assert len(_files(demo / "input")) == 4
    assert {k: v[0] for k, v in _snapshot(prepared).items()} == {k: v[0] for k, v in _snapshot(demo).items()}
