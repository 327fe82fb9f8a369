"""The end of a study: the tuned config against the compiler's default, measured side by side
in one run (interleaved, so both see the same machine load), and the record that the compiler
will pick up."""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass

from optuna.trial import TrialState

from ssmc.tune.records import Records, make_record


@dataclass
class Row:
    label: str
    algorithm: str
    config: dict
    time_us: float
    detail: str = ""


def _fmt_time(us: float) -> str:
    return f"{us / 1e3:9.3f} ms" if us >= 100 else f"{us:9.1f} us"


def default_choice(objective) -> tuple[str, dict]:
    """What the compiler runs without a record: the cost model's algorithm and the schedule
    pass's default config."""
    w = objective.workload
    return w.default_algorithm, w.default_config


def kernel_default_config() -> dict:
    """The TVM kernel's own default Config (what runs when no config is passed at all)."""
    from ssmc.codegen.tvm.config import default_config

    return default_config("llvm").as_dict()


def compare(objective, best_alg: str, best_config: dict, rounds: int = 30) -> list[Row]:
    """Rows for the default and the tuned config (and the TVM kernel's own default when it
    differs from the compiler's): measured side by side, or priced by the model."""
    d_alg, d_cfg = default_choice(objective)
    rows = [("default", d_alg, d_cfg), ("tuned", best_alg, best_config)]
    if objective.mode == "model":
        import optuna

        out = []
        for label, alg, cfg in rows:
            cfg = kernel_config(objective, alg, cfg)
            try:
                out.append(Row(label, alg, cfg, objective.evaluate(alg, cfg)))
            except optuna.TrialPruned as e:  # the default may not even fit the target
                out.append(Row(label, alg, cfg, float("inf"), f"infeasible: {e}"))
        return out
    from ssmc.tune.measure import side_by_side

    if objective.backend == "tvm":
        kd = kernel_default_config()
        if kd != kernel_config(objective, d_alg, d_cfg):
            rows.insert(1, ("kernel default", d_alg, kd))
    fns = {}
    for label, alg, cfg in rows:
        fn = objective.call(alg, cfg)
        objective.check(fn())
        fns[label] = fn
    timings = side_by_side(fns, objective.device, rounds=rounds)
    stat = objective.statistic
    return [Row(label, alg, cfg, timings[label].statistic(stat) * 1e6, timings[label].summary())
            for label, alg, cfg in rows]


def kernel_config(objective, alg: str, cfg: dict) -> dict:
    from ssmc.tune.workload import kernel_knobs

    return kernel_knobs(objective.workload, objective.backend, alg, cfg)


def study_counts(study) -> dict:
    trials = study.get_trials(deepcopy=False)
    return {s.name.lower(): sum(t.state == s for t in trials)
            for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}


def finish(study, objective, *, export_dir=None, rounds: int = 30, out=print) -> dict | None:
    """Print the comparison, write the record (user directory, and export_dir/<target>/ when
    given).  None when no trial completed."""
    w = objective.workload
    target = objective.target
    try:
        best = study.best_trial
    except ValueError:
        out(f"  no trial completed ({study_counts(study)}): no record written")
        return None
    best_alg, best_cfg = best.user_attrs["algorithm"], best.user_attrs["config"]
    rows = compare(objective, best_alg, best_cfg, rounds=rounds)
    by = {r.label: r for r in rows}
    for r in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in r.config.items()) or "(kernel defaults)"
        out(f"  {r.label:<15} {r.algorithm:<12} {_fmt_time(r.time_us)}   {cfg}")
        if r.detail:
            out(f"  {'':<15} {'':<12} {r.detail}")
    default = by["default"]
    chosen = min(rows, key=lambda r: r.time_us)  # re-measured side by side: the fastest wins
    speedup = default.time_us / chosen.time_us if chosen.time_us > 0 else float("nan")
    how = (f"{objective.statistic} of {rounds} interleaved runs each, measured side by side"
           if objective.mode == "measured" else "cost model: the target is not on this machine")
    if chosen is default:
        out(f"  gain: none ({how}); the record keeps the default config")
    else:
        out(f"  gain: {speedup:.2f}x over the default, {chosen.label} config ({how})")
    chosen_cfg = kernel_config(objective, chosen.algorithm, chosen.config)
    record = make_record(
        w.key, target, algorithm=chosen.algorithm, config=chosen_cfg, source=objective.mode,
        time_us=_finite(chosen.time_us, 3), default_time_us=_finite(default.time_us, 3),
        speedup=_finite(speedup, 4), chosen=chosen.label, study=study.study_name,
        trials=study_counts(study), measured_seqlen=w.seqlen,
        host={"machine": platform.machine(), "cpu": _cpu_name(target), "units": target.units},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    records = Records(target)
    path = records.write(record)
    out(f"  record: {path}")
    if export_dir is not None:
        from pathlib import Path

        exported = records.write(record, Path(export_dir) / target.name)
        out(f"  exported: {exported}")
    return record


def _finite(x: float, digits: int):
    """JSON has no infinity: an infeasible default has no time."""
    import math

    return round(x, digits) if math.isfinite(x) else None


def _cpu_name(target) -> str:
    if target.is_gpu:
        return target.description
    return f"{target.llvm_mcpu or platform.processor()} ({target.vector_bits}-bit vectors)"
