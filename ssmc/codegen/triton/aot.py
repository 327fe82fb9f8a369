"""Ahead-of-time compilation of a kernel family for a target descriptor, without a GPU.

    triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget(...))

runs Triton's whole pipeline on a CPU-only machine (DESIGN.md): ttir -> ttgir -> llir ->
ptx -> cubin (ptxas ships with triton) for CUDA, or -> amdgcn -> hsaco for HIP.  The family's
launch plan is built from `meta` tensors of a realistic problem, and each launch's signature is
specialised exactly as a JIT launch would be (triton's own `native_specialize_impl`: pointer
and int alignment, ints equal to 1 as constants).

Resource use comes from the compiled code: registers and spill bytes from `ptxas -v` (CUDA) or
the kernel descriptor in the amdgcn (HIP), shared memory from Triton's metadata.  A kernel
`fits` when one block fits on one SM/CU of the descriptor.

Under TRITON_INTERPRET=1, `@triton.jit` yields interpreter objects that cannot be compiled, so
the compile then runs in a subprocess without that variable (`python -m
ssmc.codegen.triton.aot`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ssmc.codegen.triton.common import interpreting
from ssmc.errors import SsmcError

# fp64: the families that compute in it (s4d.vandermonde_bwd, for float64 gradchecks)
DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
               "fp64": torch.float64}


@dataclass
class AotKernel:
    """One compiled kernel of a family, for one target."""

    family: str
    kernel: str
    target: str
    num_warps: int
    num_stages: int
    n_regs: int  # per thread (CUDA: ptxas; HIP: VGPRs incl. accumulation VGPRs)
    n_spills: int  # CUDA: spill-store bytes; HIP: spilled VGPRs + SGPRs
    shared: int  # bytes of shared memory / LDS per block
    fits: bool  # one block fits on one SM/CU of the target descriptor
    compile_s: float
    files: dict = field(default_factory=dict)  # stage (ptx, cubin, ...) -> path

    def as_dict(self) -> dict:
        return asdict(self)


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise SsmcError(f"dtype: {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[dtype]


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPE_NAMES.items()}[dtype]


def compile_family(family: str, target, *, dtype="fp16", config=None, out_dir=None,
                   example=None) -> list[AotKernel]:
    """Compile every kernel of `family` for `target` (a name or a Target).

    config: the family's Config (or a dict of knobs); example: launcher kwargs (meta tensors)
    replacing the family's realistic example problem; out_dir: where <target>/<family>/ with
    ttir/ttgir/llir/ptx/cubin (amdgcn/hsaco) and metadata JSON go (a temporary directory when
    None).  Returns one AotKernel per launch of the family's plan."""
    from ssmc.codegen.triton.families import get_family

    dtype = _dtype(dtype)
    if dtype not in get_family(family).dtypes:
        raise SsmcError(f"dtype: family {family} takes "
                        f"{', '.join(_dtype_name(d) for d in get_family(family).dtypes)}")
    return compile_families([family], [target], dtype=dtype, config=config, out_dir=out_dir,
                            example=example)


def compile_families(families, targets, *, dtype="fp16", config=None, out_dir=None,
                     example=None) -> list[AotKernel]:
    """compile_family for every (family, target) pair, in one process (one subprocess under
    TRITON_INTERPRET=1).  A family that does not take `dtype` is compiled for its first dtype
    (s4d.vandermonde has fp32 parameters only)."""
    from ssmc.targets import load_target

    tgts = [load_target(t) for t in targets]
    for tgt in tgts:
        if not tgt.is_gpu:
            raise SsmcError(f"target {tgt.name}: backend {tgt.backend} does not compile Triton "
                            "kernels")
    dtype = _dtype(dtype)
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="ssmc-aot-"))
    if config is not None and len(families) > 1:
        raise SsmcError("config: one family's knobs cannot apply to several families")
    if interpreting():
        if example is not None:
            raise SsmcError("example: a custom example problem cannot cross into the compile "
                            "subprocess used under TRITON_INTERPRET=1")
        return _compile_in_subprocess(list(families), [t.name for t in tgts], dtype, config,
                                      out_dir)
    results = []
    for tgt in tgts:
        for family in families:
            results += _compile_here(family, tgt, dtype, config, out_dir, example)
    return results


def _compile_here(family_name, tgt, dtype, config, out_dir, example) -> list[AotKernel]:
    import triton
    from triton.backends.compiler import GPUTarget

    from ssmc.codegen.triton.families import get_family

    family = get_family(family_name)
    if isinstance(config, dict):
        config = family.config.from_dict(config)
    if dtype not in family.dtypes:
        dtype = family.dtypes[0]
    kwargs = example if example is not None else family.example(dtype, "meta")
    plan = family.plan(kwargs, config)
    gpu_target = GPUTarget(*tgt.triton_target())
    where = out_dir / tgt.name / family_name
    where.mkdir(parents=True, exist_ok=True)
    results = []
    for index, launch in enumerate(plan.launches):
        # a family may launch one kernel twice, specialised differently: number the files
        stem = f"{index:02d}{launch.name}"
        src = _ast_source(launch, gpu_target)
        started = time.perf_counter()
        compiled = triton.compile(src, target=gpu_target,
                                  options={"num_warps": launch.num_warps,
                                           "num_stages": launch.num_stages})
        elapsed = time.perf_counter() - started
        # the @triton.jit Python source the stages below were compiled from
        source = where / f"{stem}.py"
        source.write_text(f"# {launch.kernel.fn.__module__}.{launch.name}\n{launch.kernel.src}")
        files = {"source": str(source)}
        for stage, text in compiled.asm.items():
            if stage == "source":
                continue
            path = where / f"{stem}.{stage}"
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
            files[stage] = str(path)
        if "ptx" in compiled.asm:
            n_regs, n_spills = _ptxas_usage(compiled.asm["ptx"], gpu_target.arch)
        else:
            n_regs, n_spills = _amdgcn_usage(compiled.asm["amdgcn"])
        shared = int(compiled.metadata.shared)
        threads = launch.num_warps * tgt.warp_size
        kernel = AotKernel(
            family=family_name, kernel=launch.name, target=tgt.name,
            num_warps=launch.num_warps, num_stages=launch.num_stages, n_regs=n_regs,
            n_spills=n_spills, shared=shared,
            fits=tgt.fits(regs_per_thread=n_regs, threads=threads, smem_bytes=shared),
            compile_s=round(elapsed, 3), files=files)
        (where / f"{stem}.json").write_text(json.dumps(kernel.as_dict(), indent=1))
        results.append(kernel)
    return results


def _ast_source(launch, gpu_target):
    """The ASTSource a JIT launch of `launch` would compile, specialised the same way."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from triton.compiler import ASTSource, make_backend

    fn = launch.kernel
    backend = make_backend(gpu_target)
    values = {**launch.args, **launch.constexprs}
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(fn.arg_names):
        if name not in values:
            raise SsmcError(f"{launch.name}: no value for parameter {name!r}")
        value = values[name]
        if name in launch.constexprs:
            signature[name], constexprs[name] = "constexpr", value
            continue
        kind, spec = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":  # an int equal to 1, specialised away like the JIT does
            constexprs[name] = spec
        elif isinstance(spec, str) and spec:
            attrs[(index,)] = backend.parse_attr(spec)
    return ASTSource(fn, signature, constexprs, attrs)


def _ptxas_path(arch: int) -> str:
    from triton import knobs

    tool = knobs.nvidia.ptxas if arch < 90 else knobs.nvidia.ptxas_blackwell
    return tool.path


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill-store bytes) from `ptxas -v`, run on the PTX Triton produced with the
    flags Triton uses for its own cubin."""
    target = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        cmd = [_ptxas_path(arch), "-v", "--regAllocOptLevel=2", f"--gpu-name={target}",
               str(src), "-o", str(Path(tmp) / "k.cubin")]
        if os.environ.get("TRITON_DEFAULT_FP_FUSION", "1").lower() in ("0", "false"):
            cmd.insert(2, "--fmad=false")
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return int(regs.group(1)) if regs else 0, int(spills.group(1)) if spills else 0


def _amdgcn_usage(asm: str) -> tuple[int, int]:
    """(VGPRs incl. accumulation VGPRs, spilled VGPRs + SGPRs) from the kernel metadata."""
    def field_value(key):
        m = re.search(rf"\.{key}:\s+(\d+)", asm)
        return int(m.group(1)) if m else 0
    vgprs = field_value("vgpr_count") + field_value("agpr_count")
    spills = field_value("vgpr_spill_count") + field_value("sgpr_spill_count")
    return vgprs, spills


def _compile_in_subprocess(families, targets, dtype, config, out_dir) -> list[AotKernel]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if config is not None and not isinstance(config, dict):
        config = config.as_dict()
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "ssmc.codegen.triton.aot", ",".join(families),
           ",".join(targets), "--dtype", _dtype_name(dtype), "--out", str(out_dir), "--json"]
    if config:
        cmd += ["--config", json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SsmcError(f"AOT compile of {', '.join(families)} for {', '.join(targets)} "
                        f"failed:\n{proc.stderr[-4000:]}")
    return [AotKernel(**k) for k in json.loads(proc.stdout.strip().splitlines()[-1])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssmc.codegen.triton.aot",
                                     description="Compile a Triton kernel family for a target "
                                                 "without a GPU.")
    parser.add_argument("family", help="a family, a comma-separated list, or 'all'")
    parser.add_argument("target", help="a target, a comma-separated list, or 'all' (GPUs)")
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPE_NAMES))
    parser.add_argument("--out", default=None)
    parser.add_argument("--config", default=None, help="knobs as a JSON object")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    config = json.loads(args.config) if args.config else None
    from ssmc.codegen.triton.families import FAMILIES
    from ssmc.targets import list_targets, load_target

    families = list(FAMILIES) if args.family == "all" else args.family.split(",")
    targets = [t for t in list_targets() if load_target(t).is_gpu] if args.target == "all" \
        else args.target.split(",")
    try:
        if len(families) == 1:
            kernels = [k for t in targets
                       for k in compile_family(families[0], t, dtype=args.dtype,
                                               config=config, out_dir=args.out)]
        else:
            kernels = compile_families(families, targets, dtype=args.dtype, config=config,
                                       out_dir=args.out)
    except (SsmcError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([k.as_dict() for k in kernels]))
    else:
        for k in kernels:
            print(f"{k.target:<7} {k.family:<27} {k.kernel:<35} regs {k.n_regs:>3}  "
                  f"spills {k.n_spills:>4}  shared {k.shared:>6}  warps {k.num_warps}  "
                  f"{'fits' if k.fits else 'DOES NOT FIT'}  {k.compile_s:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
