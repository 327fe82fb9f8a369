"""`ssmc compile` for the composite kernels on the CPU: the TIR of their TVM parts, and what runs
in the library (GEMMs, FFTs) said in the manifest entry."""

from __future__ import annotations

from pathlib import Path

# (family, algorithm) -> what the library part is
COMPOSITE = {
    ("nested_recursion", "tree"): "GEMMs per tree level: torch (BLAS); GELU and the GRC "
                                  "epilogue: TVM",
    ("selective_ssm/dense", "sequential"): "u = x W_B^T, y = h W_C^T: torch GEMMs; the scan: TVM",
    ("selective_ssm/dense", "associative"): "torch: transitions by one GEMM, recursive doubling",
    ("selective_ssm/dense", "chunked"): "the TVM scan on chunks as rows (end states, transition "
                                        "products, second pass); carries: torch",
    ("diagonal_ssm", "sequential"): "the recurrence: TVM (discretisation: torch, per call)",
    ("diagonal_ssm", "fft"): "torch: blocked Vandermonde matmul, rfft/irfft",
}


# on GPU targets: only the nested tree has a composite path (torch GEMMs + Triton epilogue)
COMPOSITE_GPU = {
    ("nested_recursion", "tree"): "GEMMs per tree level: torch (cuBLAS); GELU and the GRC "
                                  "epilogue: Triton (ssmc.codegen.triton.grc, JIT at run time)",
}


def handles(fam: str, alg: str, target) -> bool:
    return (fam, alg) in (COMPOSITE_GPU if target.is_gpu else COMPOSITE)


def _script(prim) -> str:
    return prim.script() if hasattr(prim, "script") else str(prim)


def _d(graph, node, port: str) -> int:
    from ssmc.ir import dims as D

    return D.as_int(graph.types[node.inputs[port]].shape[-1], {})


def emit(node, graph, fam: str, alg: str, out: Path, write, target=None) -> dict:
    """Write the TVM kernels of one composite node to `out` with write(path, text)."""
    if target is not None and target.is_gpu:
        return {"composite": COMPOSITE_GPU[(fam, alg)]}
    from ssmc.codegen.tvm.target import host_vector_lanes_f32

    lanes = host_vector_lanes_f32()
    files = {}
    if fam == "nested_recursion":
        from ssmc.codegen.tvm import grc_tir

        d = _d(graph, node, "x")
        for name, prim in (("grc_epilogue", grc_tir.build_grc_epilogue(d, 1e-5, lanes)),
                           ("gelu", grc_tir.build_gelu(4 * d, lanes))):
            files[name] = str(out / f"{name}.tir.py")
            write(out / f"{name}.tir.py", _script(prim))
    elif fam == "selective_ssm/dense" and alg in ("sequential", "chunked"):
        from ssmc.codegen.tvm import dense_scan_tir as tirb

        bs = node.block or node.d_state
        sig = tirb.DenseSignature(K=_d(graph, node, "x"), nb=node.d_state // bs, bs=bs,
                                  given=node.transition == "expm", lanes=lanes)
        files["dense_scan"] = str(out / "dense_scan.tir.py")
        write(out / "dense_scan.tir.py", _script(tirb.build_dense_scan(sig)))
    elif fam == "diagonal_ssm" and alg == "sequential":
        from ssmc.codegen.tvm import diagonal_scan_tir as tirb
        from ssmc.runtime.executors import tvm_diagonal_config

        cfg = tvm_diagonal_config(node.meta.get("config")) or tirb.DiagonalScanConfig()
        conj = node.complex and node.conj_pair
        sig = tirb.DiagonalSignature(d=_d(graph, node, "u"),
                                     n=node.d_state // 2 if conj else node.d_state,
                                     complex_state=node.complex, scale=2.0 if conj else 1.0,
                                     has_D=node.D, lanes=cfg.vector_width or lanes)
        files["diagonal_scan"] = str(out / "diagonal_scan.tir.py")
        write(out / "diagonal_scan.tir.py",
              _script(tirb.build_diagonal_scan(sig, cfg.mode_unroll)))
    return {"files": files, "composite": COMPOSITE[(fam, alg)]}
