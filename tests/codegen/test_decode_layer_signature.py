"""The fused decode-layer signatures (codegen/tvm/decode_layer_tir.py) refuse bad sizes with a
message naming what is wrong."""

import pytest

tvm = pytest.importorskip("tvm")

from ssmc.codegen.tvm import decode_layer_tir as layerb  # noqa: E402


def test_mamba1_layer_signature_checks_sizes():
    with pytest.raises(ValueError, match="every size must be >= 1"):
        layerb.Mamba1LayerSignature(Dm=64, d=0, N=16, R=4, k=4, eps=1e-5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        layerb.Mamba1LayerSignature(Dm=64, d=128, N=16, R=4, k=4, eps=0.0)


def test_mamba2_layer_signature_checks_heads_and_groups():
    with pytest.raises(ValueError, match="head_dim and norm_groups must divide d"):
        layerb.Mamba2LayerSignature(Dm=64, d=128, N=16, head_dim=48, groups=1, k=4, eps=1e-5,
                                    norm_eps=1e-5)
    sig = layerb.Mamba2LayerSignature(Dm=64, d=128, N=16, head_dim=16, groups=2, k=4, eps=1e-5,
                                      norm_eps=1e-5)
    assert sig.heads == 8 and sig.conv_dim == 128 + 2 * 2 * 16
    assert layerb.arg_names2(sig)[0] == "h" and layerb.arg_names2(sig)[-1] == "out"

