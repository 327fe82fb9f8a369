"""The TVM selective-scan schedule knobs and their search space file."""

import dataclasses
import itertools

import pytest

from ssmc.codegen.tvm.config import Config, default_config, legalize, load_space


@pytest.mark.parametrize("kind", ["llvm", "cuda"])
def test_space_names_config_fields_and_every_choice_is_valid(kind):
    fields = {f.name for f in dataclasses.fields(Config)}
    knobs = load_space(kind)
    assert knobs and all(k["name"] in fields and k["type"] in ("int", "str") for k in knobs)
    for knob in knobs:
        for choice in knob["choices"]:
            cfg = legalize(Config(**{knob["name"]: choice}), kind)
            assert getattr(cfg, knob["name"]) == choice or knob["name"] == "channel_block"
        for cond in knob.get("when", {}):
            assert cond in fields


def test_legalize_rounds_block_to_vector_multiple():
    for cb, vw in itertools.product([1, 7, 8, 10, 33], [4, 8, 16]):
        cfg = legalize(Config(channel_block=cb, vector_width=vw), "llvm")
        assert cfg.channel_block % vw == 0 and cfg.channel_block >= vw


def test_defaults_and_validation():
    assert default_config("llvm", lanes=8) == Config(channel_block=16, vector_width=8)
    assert default_config("cuda").channel_block == 128
    with pytest.raises(ValueError, match="layout"):
        Config(layout="dlb")
    with pytest.raises(ValueError, match="exp_degree"):
        Config(exp_degree=3)
