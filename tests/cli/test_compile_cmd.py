"""`ssmc compile`: kernel sources, AOT artifacts and manifest for every target, without a GPU."""

import json
from pathlib import Path

import pytest

from ssmc.cli import main
from ssmc.paths import zoo_dir
from ssmc.targets import list_targets, load_target

MAMBA = str(zoo_dir() / "mamba.yaml")
GPU_TARGETS = [t for t in list_targets() if load_target(t).is_gpu]


def _compile(target: str, out: Path, seqlen=16384) -> dict:
    assert main(["compile", MAMBA, "--target", target, "-o", str(out), "--seqlen", str(seqlen)]) == 0
    return json.loads((out / "manifest.json").read_text(), parse_constant=_not_json)


def _not_json(word):
    """manifest.json must be strict JSON: no Infinity / NaN, which only Python reads back."""
    raise AssertionError(f"manifest.json holds {word}, which is not JSON")


def _check_gpu_manifest(manifest: dict, target: str) -> None:
    tgt = load_target(target)
    (node,) = manifest["nodes"]
    assert node["node"] == "layers.*.ssm" and node["backend"] == tgt.backend
    assert node["algorithm"] in ("sequential", "associative", "chunked")
    kernels = node["triton"]["kernels"]
    assert kernels, "no kernel compiled"
    # training's backward kernel is compiled too (real A)
    assert node["triton_backward"]["family"] == "selective_scan.backward"
    assert [k["kernel"] for k in node["triton_backward"]["kernels"]] == \
        ["_selective_scan_bwd_kernel"]
    kernels = kernels + node["triton_backward"]["kernels"]
    want = {"cubin", "ptx"} if tgt.backend == "triton-cuda" else {"hsaco", "amdgcn"}
    for k in kernels:
        assert want <= set(k["files"]), k["files"]
        for path in k["files"].values():
            assert Path(path).stat().st_size > 0
        assert 0 < k["n_regs"] <= (tgt.regs_per_thread or 512)
        assert k["n_spills"] == 0
        assert k["shared"] <= tgt.smem_per_block
        assert k["fits"]


@pytest.mark.parametrize("target", ["sm_90", "gfx942"])
def test_compile_gpu_target_without_gpu(tmp_path, target, capsys):
    manifest = _compile(target, tmp_path)
    _check_gpu_manifest(manifest, target)
    out = capsys.readouterr().out
    assert "manifest" in out and "_selective_scan_bwd_kernel (backward)" in out


@pytest.mark.slow
@pytest.mark.parametrize("target", GPU_TARGETS)
def test_compile_every_gpu_target(tmp_path, target):
    _check_gpu_manifest(_compile(target, tmp_path), target)


def test_compile_cpu_writes_tir(tmp_path):
    manifest = _compile("cpu", tmp_path, seqlen=256)
    (node,) = manifest["nodes"]
    tir = Path(node["tvm"]["files"]["tir"])
    assert "prim_func" in tir.read_text() or "T." in tir.read_text()


def test_compile_bad_target_exits_2(tmp_path, capsys):
    assert main(["compile", MAMBA, "--target", "sm_9O", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean" in err and "Traceback" not in err


@pytest.mark.parametrize("name,family,kernel,bwd_family,bwd_kernel", [
    ("convssm", "plrnn.sequential", "_plrnn_kernel", "plrnn.backward", "_plrnn_bwd_kernel"),
    ("lcde", "dense.sequential", "_dense_scan_kernel", "dense.backward",
     "_dense_scan_bwd_kernel"),
])
def test_compile_issue10_models_for_sm90_lists_their_triton_kernels(tmp_path, capsys, name,
                                                                     family, kernel,
                                                                     bwd_family, bwd_kernel):
    """convSSM's PLRNN (with the HRF folded in) and the linear CDE's dense scan: compiled
    ahead of time for sm_90 with the adjoint kernel their training launches, registers and
    spills listed, no eager-reference line."""
    assert main(["compile", str(zoo_dir() / f"{name}.yaml"), "--target", "sm_90",
                 "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "eager reference" not in out
    assert f"{kernel}: " in out and " regs, 0 spill bytes" in out
    assert f"{bwd_kernel} (backward): " in out
    manifest = json.loads((tmp_path / "manifest.json").read_text(), parse_constant=_not_json)
    (node,) = manifest["nodes"]
    assert node["algorithm"] == "sequential" and "runs" not in node
    for key, fam, kname in (("triton", family, kernel),
                            ("triton_backward", bwd_family, bwd_kernel)):
        assert node[key]["family"] == fam
        (k,) = node[key]["kernels"]
        assert k["kernel"] == kname and k["n_spills"] == 0 and k["fits"]
        assert Path(k["files"]["cubin"]).stat().st_size > 0


def test_compile_mamba2_for_sm90_lists_the_ssd_backward(tmp_path, capsys):
    """Mamba-2: the chunked SSD forward's kernels and training's backward (the Mamba-1 backward
    kernel in its SSD mode, family ssd.backward), compiled ahead of time without spills."""
    assert main(["compile", str(zoo_dir() / "mamba2.yaml"), "--target", "sm_90",
                 "-o", str(tmp_path)]) == 0
    assert "_selective_scan_bwd_kernel (backward)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "manifest.json").read_text(), parse_constant=_not_json)
    (node,) = manifest["nodes"]
    assert node["triton"]["family"] == "ssd.chunked"
    assert node["triton_backward"]["family"] == "ssd.backward"
    (k,) = node["triton_backward"]["kernels"]
    assert k["kernel"] == "_selective_scan_bwd_kernel" and k["n_spills"] == 0 and k["fits"]
    assert Path(k["files"]["cubin"]).stat().st_size > 0
