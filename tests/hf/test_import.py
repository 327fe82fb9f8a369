"""`ssmc import hf`: the spec of a transformers / mamba-ssm config and the state-dict renaming
(both ways), so that ssmc.compile(SPEC) loaded with the converted weights gives transformers'
logits; bad configs are user errors with a clear message."""

import json

import pytest
import torch

import ssmc
from ssmc.cli import main
from ssmc.hf import convert
from ssmc.ir.spec import load_spec
from ssmc.semantics.model import build_reference

TOL = dict(rtol=6e-4, atol=2e-3)


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_spec_names_and_shapes_line_up(model):
    graph = load_spec(convert.spec_from_config(model.config))
    ref = build_reference(graph, device="meta")
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = convert.to_ssmc_state_dict(model.state_dict(), model.config)
    assert {k: tuple(v.shape) for k, v in got.items()} == want


def test_round_trip_compile_gives_the_same_logits(model, ids):
    sd = model.state_dict()
    ours = convert.to_ssmc_state_dict(sd, model.config)
    assert all(ours[v].data_ptr() == sd[k].data_ptr()  # renamed, not copied
               for k, v in convert.name_map(model.config).items())
    cm = ssmc.compile(convert.spec_from_config(model.config))
    cm.load_state_dict(ours)
    with torch.no_grad():
        got = cm(ids)
    torch.testing.assert_close(got, _hf_logits(model, ids), **TOL)
    back = convert.from_ssmc_state_dict(ours, model.config)
    assert back.keys() == sd.keys()
    assert all(back[k] is sd[k] for k in sd)  # the identity


def test_base_model_state_dict_and_missing_tied_head(mamba):
    sd = mamba.backbone.state_dict()  # no 'backbone.' prefix, no lm_head
    ours = convert.to_ssmc_state_dict(sd, mamba.config)
    assert ours["lm_head.weight"] is ours["embedding.weight"]


def test_mamba_ssm_checkpoint(mamba, ids):
    """The same model as a mamba-ssm MambaLMHeadModel state dict + config."""
    cfg = {"d_model": 64, "n_layer": 2, "vocab_size": 128, "ssm_cfg": {"d_state": 16},
           "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
           "pad_vocab_size_multiple": 8, "tie_embeddings": True}
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v
          for k, v in mamba.state_dict().items()}
    mc = convert.model_config(cfg)
    assert (mc.flavor, mc.kind, mc.dt_rank, mc.d_inner) == ("mamba_ssm", "mamba1", 4, 128)
    cm = ssmc.compile(convert.spec_from_config(cfg))
    cm.load_state_dict(convert.to_ssmc_state_dict(sd, cfg))
    with torch.no_grad():
        torch.testing.assert_close(cm(ids), _hf_logits(mamba, ids), **TOL)
    # and on to transformers' names
    hf = convert.from_ssmc_state_dict(convert.to_ssmc_state_dict(sd, cfg), cfg, flavor="hf")
    assert hf.keys() == mamba.state_dict().keys()


def test_mamba_ssm_mamba2_config():
    cfg = {"d_model": 64, "n_layer": 2, "vocab_size": 100, "pad_vocab_size_multiple": 16,
           "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "headdim": 16, "ngroups": 2}}
    mc = convert.model_config(cfg)
    assert (mc.vocab, mc.n_heads, mc.n_groups, mc.gated_norm_eps) == (112, 8, 2, 1e-5)
    graph = load_spec(convert.spec_from_config(cfg))
    assert graph.dims["n_heads"] == 8


def test_cli_import_and_export(tmp_path, mamba2, ids, capsys):
    mamba2.save_pretrained(tmp_path / "ckpt")
    spec, w = tmp_path / "m.yaml", tmp_path / "w.safetensors"
    assert main(["import", "hf", str(tmp_path / "ckpt"), "-o", str(spec), "--weights", str(w)]) == 0
    assert "Mamba-2 from a transformers config" in capsys.readouterr().out
    cm = ssmc.compile(str(spec))
    cm.load_state_dict(convert.load_state_dict(w))
    with torch.no_grad():
        torch.testing.assert_close(cm(ids), _hf_logits(mamba2, ids), **TOL)
    back = tmp_path / "hf.safetensors"
    assert main(["export", "hf", str(tmp_path / "ckpt"), "--weights", str(w), "-o", str(back)]) == 0
    sd, want = convert.load_state_dict(back), mamba2.state_dict()
    assert sd.keys() == want.keys()
    assert all(torch.equal(sd[k], want[k]) for k in want)


def test_cli_spec_only_from_config_json(tmp_path, mamba, capsys):
    (tmp_path / "config.json").write_text(mamba.config.to_json_string())
    spec = tmp_path / "spec.yaml"
    assert main(["import", "hf", str(tmp_path / "config.json"), "-o", str(spec)]) == 0
    assert load_spec(spec).name == "hf_mamba"
    # --weights without a checkpoint next to the config: a user error
    assert main(["import", "hf", str(tmp_path / "config.json"), "-o", str(spec),
                 "--weights", str(tmp_path / "w.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


BAD = [
    ({"model_type": "llama", "hidden_size": 64}, "model_type 'llama' is not a Mamba model"),
    ({"foo": 1}, "neither a transformers Mamba config"),
    ({"model_type": "mamba", "num_hidden_layers": 2, "vocab_size": 8}, "missing required key 'hidden_size'"),
    ({"model_type": "mamba", "hidden_size": -4, "num_hidden_layers": 2, "vocab_size": 8},
     "hidden_size: expected a positive integer"),
    ({"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 8,
      "hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 8,
      "num_heads": 3, "head_dim": 16}, "num_heads \\* head_dim"),
    ({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 8,
      "num_heads": 8, "head_dim": 16, "n_groups": 3}, "n_groups \\(3\\) must divide"),
    ({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 8,
      "num_heads": 8, "head_dim": 16, "time_step_limit": [1.0, 0.5]}, "time_step_limit"),
    ({"d_model": 64, "n_layer": 2, "vocab_size": 8, "d_intermediate": 128}, "d_intermediate"),
    ({"d_model": 64, "n_layer": 2, "vocab_size": 8, "attn_layer_idx": [1]}, "attention"),
    ({"d_model": 64, "n_layer": 2, "vocab_size": 8, "ssm_cfg": {"layer": "Mamba3"}}, "Mamba1 or Mamba2"),
]


@pytest.mark.parametrize("cfg,msg", BAD)
def test_bad_configs_are_user_errors(cfg, msg):
    with pytest.raises(ssmc.SsmcError, match=msg):
        convert.spec_from_config(cfg)


def test_bad_files(tmp_path, capsys):
    with pytest.raises(ssmc.SsmcError, match="no such config file"):
        convert.load_config(tmp_path / "nope")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ssmc.SsmcError, match="cannot read the config as JSON"):
        convert.load_config(tmp_path)
    assert main(["import", "hf", str(bad), "-o", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "Traceback" not in err
    bad.write_text(json.dumps({"model_type": "mamba", "hidden_size": 64, "vocab_size": 8}))
    assert main(["import", "hf", str(bad), "-o", str(tmp_path / "s.yaml")]) == 2
    assert "num_hidden_layers" in capsys.readouterr().err


def test_state_dict_mismatch_names_the_tensor(mamba):
    sd = dict(mamba.state_dict())
    del sd["backbone.layers.1.mixer.dt_proj.bias"]
    with pytest.raises(ssmc.SsmcError, match="missing 1 tensor.*layers.1.mixer.dt_proj.bias"):
        convert.to_ssmc_state_dict(sd, mamba.config)
    sd = dict(mamba.state_dict())
    sd["backbone.layers.0.mixer.A_log"] = torch.zeros(3, 3)
    with pytest.raises(ssmc.SsmcError, match="ssm.A_log: shape \\(3, 3\\)"):
        convert.to_ssmc_state_dict(sd, mamba.config)


def test_grouped_rmsnorm_groups_must_divide():
    spec = """
name: g
dims: {d: 12}
inputs: {x: {shape: [batch, seqlen, d]}}
nodes:
  - {name: n, op: rmsnorm, inputs: [x], groups: 5}
outputs: [n]
"""
    with pytest.raises(ssmc.SpecError, match="groups"):
        load_spec(spec)
    m = build_reference(load_spec(spec.replace("groups: 5", "groups: 3")))
    x = torch.randn(2, 4, 12)
    xg = x.view(2, 4, 3, 4)
    want = (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + 1e-5)).view(2, 4, 12)
    torch.testing.assert_close(m(x), want)
