"""The benchmark run: every implementation at every sequence length, one after the other, into
one record (the JSON document report.py describes).

Implementations never run at the same time: on a 2-core CPU two timed things side by side would
each measure the other.  An implementation that is unavailable is recorded as skipped with the
reason; one that fails is recorded as failed with its one-line error; neither stops the run.  An
implementation that timed out, or whose single call took longer than `max_call_s`, is skipped at
the longer lengths (it only gets slower) with a note saying so.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field

from ssmc.bench import env
from ssmc.bench.isolate import IsolatedRunner
from ssmc.bench.subject import Recipe, Unavailable, make_subject
from ssmc.bench.timing import Policy, measure

SCHEMA_ID = "ssmc-bench/1"


@dataclass
class Settings:
    seqlens: tuple = (256, 1024, 4096, 16384)
    baselines: tuple = ("eager", "compile")
    policy: Policy = field(default_factory=Policy)
    compile_timeout_s: float = 300.0
    max_call_s: float = 60.0
    torch_threads: int | None = None
    progress: bool = True


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}" if not isinstance(e, Unavailable) else str(e)
    return (text.splitlines() or [type(e).__name__])[0][:300]


def _result_from_timing(timing: dict, build_s: float | None, first_call_s: float | None) -> dict:
    out = {"status": "ok", **timing}
    first = first_call_s if first_call_s is not None else timing.get("first_call_s")
    out["first_call_s"] = first
    out["build_s"] = build_s
    # From nothing to the first result: building (ssmc.compile, inputs) plus the first call
    # (kernel builds or cache loads, torch.compile's compilation).
    out["setup_s"] = (build_s or 0.0) + (first or 0.0)
    return out


def _in_process(impl, L: int, policy: Policy, sync) -> dict:
    t0 = time.perf_counter()
    call = impl.build(L)
    build_s = time.perf_counter() - t0
    timing = measure(call, policy, sync=sync)
    del call
    return _result_from_timing(timing.as_dict(), build_s, None)


def case_summary(results: dict, roof) -> tuple:
    """(ratios, roofline fractions, exp-bound fractions) of a case.  A ratio is how many times
    faster ssmc is than that implementation: its median over ssmc's."""
    ok = {k: r["median_s"] for k, r in results.items() if r["status"] == "ok"}
    ratios = {}
    if "ssmc" in ok:
        ratios = {k: t / ok["ssmc"] for k, t in ok.items() if k != "ssmc"}
    fractions = {k: roof.fraction(t) for k, t in ok.items()} if roof else {}
    exp_fractions = {k: roof.exp_fraction(t) for k, t in ok.items()} if roof and roof.exp_s else {}
    return ratios, fractions, exp_fractions


def run(recipe: Recipe, settings: Settings, argv: list | None = None) -> dict:
    import torch
    from tqdm import tqdm

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    subject = make_subject(recipe)
    impls = subject.impls(list(settings.baselines))
    doc = {
        "schema": SCHEMA_ID,
        "date": env.now(),
        "command": " ".join(argv) if argv else None,
        "subject": {"kind": "op" if recipe.is_op else "model", "name": subject.name,
                    "spec": None if recipe.is_op else str(recipe.subject),
                    "description": subject.describe()},
        "target": target_info(subject.target),
        "device": env.device(settings.torch_threads),
        "versions": env.versions(),
        "settings": {"batch": recipe.batch, "dtype": recipe.dtype,
                     "pass": "forward+backward" if recipe.backward else "forward",
                     "seqlens": list(settings.seqlens), "baselines": list(settings.baselines),
                     "dims": dict(recipe.dims), "warmup": settings.policy.warmup,
                     "repeats": settings.policy.repeats,
                     "min_repeats": settings.policy.min_repeats,
                     "budget_s": settings.policy.budget_s,
                     "compile_timeout_s": settings.compile_timeout_s,
                     "max_call_s": settings.max_call_s},
        "implementations": [{"name": i.name, "label": i.label, "note": i.note or None}
                            for i in impls],
        "cases": [],
        "notes": [],
    }
    runners = {i.name: IsolatedRunner(recipe, i.name, settings.policy,
                                      settings.compile_timeout_s, settings.torch_threads)
               for i in impls if i.isolated}
    given_up: dict = {}  # impl -> why it no longer runs at longer lengths
    bar = tqdm(total=len(settings.seqlens) * len(impls), desc=f"bench {subject.name}",
               unit="run", file=sys.stderr, disable=not settings.progress, leave=False)
    try:
        for L in settings.seqlens:
            roof = subject.roofline(L)
            results = {}
            for impl in impls:
                bar.set_postfix_str(f"L={L} {impl.name}")
                results[impl.name] = _run_one(impl, L, settings, subject, runners, given_up)
                gc.collect()
                bar.update(1)
            ratios, fractions, exp_fractions = case_summary(results, roof)
            doc["cases"].append({"seqlen": L, "roofline": roof.as_dict() if roof else None,
                                 "results": results, "ratios": ratios,
                                 "roofline_fraction": fractions,
                                 "exp_bound_fraction": exp_fractions})
    finally:
        bar.close()
        for r in runners.values():
            r.close()
    doc["device"]["load_average_end"] = env.load_average()
    busy = [x[0] for x in (doc["device"]["load_average"], doc["device"]["load_average_end"]) if x]
    # The run itself keeps up to `cores` threads busy (TVM's pool); more than that is others.
    if busy and max(busy) > doc["device"]["cores"] + 0.5:
        doc["notes"].append(f"other processes were running (1-minute load average up to "
                            f"{max(busy):.1f} on {doc['device']['cores']} cores): times are "
                            "noisy and the slower for it")
    if recipe.backward:
        doc["notes"].append("no roofline for forward+backward: the cost model counts forward "
                            "work only")
    for impl in impls:
        if impl.note:
            doc["notes"].append(f"{impl.name}: {impl.note}")
    return doc


def _run_one(impl, L, settings, subject, runners, given_up) -> dict:
    if impl.name in given_up:
        return {"status": "skipped", "message": given_up[impl.name]}
    try:
        if impl.isolated:
            out = runners[impl.name].run(L)
            if out["status"] == "ok":
                out = _result_from_timing(out["timing"], None, out["first_call_s"])
        else:
            out = _in_process(impl, L, settings.policy, subject.sync)
    except Unavailable as e:
        return {"status": "skipped", "message": _one_line(e)}
    except Exception as e:  # one implementation failing must not lose the others' figures
        out = {"status": "failed", "message": _one_line(e)}
    if out["status"] == "timeout":
        given_up[impl.name] = f"timed out at L={L}: not run at longer lengths"
    elif out["status"] == "ok" and out["median_s"] > settings.max_call_s:
        given_up[impl.name] = (f"one call took {out['median_s']:.0f} s at L={L} (> max call "
                               f"{settings.max_call_s:.0f} s): not run at longer lengths")
    elif out["status"] == "skipped":
        given_up[impl.name] = out["message"]
    return out


def target_info(t) -> dict:
    from ssmc.bench.roofline import rates

    r = rates(t)
    return {"name": t.name, "backend": t.backend, "arch": t.arch, "units": t.units,
            "clock_ghz": t.clock_ghz, "mem_bandwidth_gbs": t.mem_bandwidth_gbs,
            "fp32_tflops": t.fp32_tflops, "exps_per_s": r["exps_per_s"]}
