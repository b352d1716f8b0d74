"""The command line of train.py (and the shared network flags of test.py): help text, block
counts, ``--r``."""
from __future__ import annotations

import argparse
import re

import pytest

from models import build_model
from options.common import HelpFormatter, add_network_args, network_overrides
from options.train_options import build_parser, parse_train_args


def test_help_states_each_default_at_most_once():
    text = build_parser().format_help()
    assert "(default: None)" not in text
    for block in re.split(r"\n  (?=-)", text):  # one block per option
        assert block.count("default") <= 1, block
    assert "(default: 64)" in text and "(default: 0.001)" in text  # the formatter still adds real defaults
    assert "levels 2 and 3" in text and "indices" not in text


def test_formatter_skips_none_and_defaults_already_described():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--a", default=None, help="not given = off")
    p.add_argument("--b", default=3, help="three by default")
    p.add_argument("--c", default=5, help="five")
    p.add_argument("--d", action=argparse.BooleanOptionalAction, default=True, help="switch")
    text = " ".join(p.format_help().split())
    assert "not given = off --b" in text and "three by default --c" in text
    assert "five (default: 5)" in text and text.count("(default: True)") == 1


def test_two_block_counts_are_vlifnets_levels_2_and_3():
    args = parse_train_args(["--train_dir", "x", "--dim", "16", "--en_num_blocks", "1", "2",
                             "--de_num_blocks", "1", "1"])
    assert args.en_num_blocks == [4, 1, 2, 8] and args.de_num_blocks == [2, 1, 1, 2]  # stored as 4, as before
    short = build_model("vlifnet", **network_overrides(args))
    full = build_model("vlifnet", dim=16, en_num_blocks=[9, 1, 2, 9], de_num_blocks=[9, 1, 1, 9])
    assert list(short.state_dict()) == list(full.state_dict())  # levels 1 and 4 are not read


@pytest.mark.parametrize("argv", [["--en_num_blocks", "1", "2", "3"],
                                  ["--arch", "esdnet", "--de_num_blocks", "1", "1"]])
def test_block_counts_of_the_wrong_length_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_train_args(["--train_dir", "x", *argv])
    assert exc.value.code == 2 and "takes 4 numbers" in capsys.readouterr().err


def test_r_flag_reaches_vlifnet_and_not_esdnet():
    args = parse_train_args(["--train_dir", "x", "--dim", "16", "--r", "3"])
    net = build_model("vlifnet", **network_overrides(args))
    assert net.config["r"] == 3 and net.size_multiple == 12
    assert net.state_dict()["encoder_level1.initial_residual.lif_2.channel_adjust.weight"].shape[:2] == (16, 16 * 9)
    assert "r" not in network_overrides(parse_train_args(["--train_dir", "x", "--arch", "esdnet", "--r", "3"]))


def test_from_checkpoint_network_flags_override_only_when_given():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_network_args(p, from_checkpoint=True)
    assert network_overrides(p.parse_args([])) == {}
    assert network_overrides(p.parse_args(["--r", "4", "--en_num_blocks", "2", "3"])) == {
        "r": 4, "en_num_blocks": [4, 2, 3, 8]}
    text = " ".join(p.format_help().split())
    assert "(default: None)" not in text and "defaults: the network stored in the checkpoint" in text
