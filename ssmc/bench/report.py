"""The benchmark record: its JSON schema, a check of it, the printed table.

Schema "ssmc-bench/1" (times in seconds; a ratio is how many times faster ssmc is than that
implementation, i.e. its median over ssmc's; a fraction is roofline time over measured time):

    schema            "ssmc-bench/1"
    date              ISO 8601, UTC
    command           the command line, or null
    subject           {kind: "op" | "model", name, spec: path | null, description}
    target            {name, backend, arch, units, clock_ghz, mem_bandwidth_gbs, fp32_tflops,
                       exps_per_s}: the descriptor the roofline used
    device            {cpu_model, cores, machine, torch_threads, tvm_num_threads, gpu,
                       load_average}: where the times were measured
    versions          {python, ssmc_git, ssmc, torch, tvm, triton, numpy}: null when not
                      installed; ssmc_git is the commit (+dirty) of a checkout
    settings          {batch, dtype, pass: "forward" | "forward+backward", seqlens, baselines,
                       dims, warmup, repeats, min_repeats, budget_s, compile_timeout_s,
                       max_call_s}
    implementations   [{name, label, note}]: ssmc first, then the baselines asked for
    cases             one per sequence length:
      seqlen          int
      roofline        {time_s, bound, memory_s, compute_s, exp_s, bytes, flops, exps, kernels}
                      or null (forward+backward)
      results         {impl name: result}; a result is
                        {status: "ok", median_s, min_s, iqr_s, samples, outliers, warmup,
                         first_call_s, build_s, setup_s, times_s: [...]}
                      or {status: "skipped" | "failed" | "timeout", message}
      ratios          {baseline name: its median / ssmc's median}
      roofline_fraction   {impl name: roofline time_s / median_s}
      exp_bound_fraction  {impl name: roofline exp_s / median_s} (empty without exps)
    notes             [str]
"""

from __future__ import annotations

import json
from pathlib import Path

TOP_KEYS = {"schema": str, "date": str, "command": (str, type(None)), "subject": dict,
            "target": dict, "device": dict, "versions": dict, "settings": dict,
            "implementations": list, "cases": list, "notes": list}
CASE_KEYS = {"seqlen": int, "roofline": (dict, type(None)), "results": dict, "ratios": dict,
             "roofline_fraction": dict, "exp_bound_fraction": dict}
OK_KEYS = {"median_s": float, "min_s": float, "iqr_s": float, "samples": int, "outliers": int,
           "warmup": int, "times_s": list}
ROOFLINE_KEYS = {"time_s": float, "bound": str, "memory_s": float, "compute_s": float,
                 "exp_s": float}
STATUSES = ("ok", "skipped", "failed", "timeout")


def validate(doc: dict) -> list:
    """Every way `doc` departs from the schema, as messages (empty: it conforms)."""
    errs = []

    def check(obj, keys, where):
        for k, typ in keys.items():
            if k not in obj:
                errs.append(f"{where}: missing '{k}'")
            elif not isinstance(obj[k], typ) or (typ is float and isinstance(obj[k], bool)):
                if typ is float and isinstance(obj[k], int):
                    continue  # JSON writes 2.0 as 2
                errs.append(f"{where}.{k}: expected {typ}, got {type(obj[k]).__name__}")

    check(doc, TOP_KEYS, "doc")
    if errs:
        return errs
    for i, case in enumerate(doc["cases"]):
        where = f"cases[{i}]"
        check(case, CASE_KEYS, where)
        if isinstance(case.get("roofline"), dict):
            check(case["roofline"], ROOFLINE_KEYS, f"{where}.roofline")
        for name, r in case.get("results", {}).items():
            status = r.get("status")
            if status not in STATUSES:
                errs.append(f"{where}.results.{name}.status: {status!r}")
            elif status == "ok":
                check(r, OK_KEYS, f"{where}.results.{name}")
            elif not isinstance(r.get("message"), str):
                errs.append(f"{where}.results.{name}: a {status} result needs a message")
    return errs


def write_json(doc: dict, path) -> None:
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _pct(x: float | None) -> str:
    return "-" if x is None else (f"{100 * x:.1f}%" if x >= 0.001 else f"{100 * x:.3f}%")


def format_table(doc: dict) -> str:
    t, d, s = doc["target"], doc["device"], doc["settings"]
    lines = [f"{doc['subject']['description']}, {s['pass']}, target {t['name']} ({t['backend']}, "
             f"{t['units']} units)",
             f"device: {d['cpu_model']}, {d['cores']} cores, torch threads {d['torch_threads']}"
             + (f", GPU {d['gpu']}" if d.get("gpu") else "")
             + (f", load average {d['load_average'][0]}" if d.get("load_average") else ""),
             ""]
    labels = {i["name"]: i["label"] for i in doc["implementations"]}
    head = f"{'L':>7}  {'implementation':<12} {'median':>10} {'ssmc faster':>12} " \
           f"{'roofline':>9} {'exp-bound':>9}  note"
    lines.append(head)
    lines.append("-" * len(head))
    for case in doc["cases"]:
        first = True
        for name, r in case["results"].items():
            L = f"{case['seqlen']:>7}" if first else " " * 7
            first = False
            if r["status"] != "ok":
                lines.append(f"{L}  {name:<12} {r['status']:>10} {'':>12} {'':>9} {'':>9}  "
                             f"{r['message']}")
                continue
            ratio = case["ratios"].get(name)
            note = []
            if r.get("setup_s") and r["setup_s"] > 1.0:
                note.append(f"setup {r['setup_s']:.1f} s")
            if r["outliers"]:
                note.append(f"{r['outliers']} outlier(s) of {r['samples']}")
            elif r["samples"] < 5:
                note.append(f"{r['samples']} samples")
            lines.append(f"{L}  {name:<12} {fmt_time(r['median_s']):>10} "
                         f"{(f'{ratio:.1f}x' if ratio else '-'):>12} "
                         f"{_pct(case['roofline_fraction'].get(name)):>9} "
                         f"{_pct(case['exp_bound_fraction'].get(name)):>9}  {', '.join(note)}")
        roof = case["roofline"]
        if roof:
            lines.append(f"{'':>7}  roofline {fmt_time(roof['time_s'])} ({roof['bound']}-bound: "
                         f"memory {fmt_time(roof['memory_s'])}, compute "
                         f"{fmt_time(roof['compute_s'])}, exp {fmt_time(roof['exp_s'])})")
    lines.append("")
    for name, label in labels.items():
        lines.append(f"  {name:<10} {label}")
    for note in doc["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
