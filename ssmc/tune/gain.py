"""The end of a study: the tuned config against the compiler's default, measured side by side
in one run (interleaved, so all see the same machine load), and the record that the compiler
will pick up: the fastest of them in that run."""

from __future__ import annotations

import datetime
import math
import platform
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from ssmc.tune.records import Records, make_record


MIN_GAIN = 0.02  # 2%: below this a side-by-side difference is within run-to-run noise
RUNNERS_UP = 2  # the next-best distinct trial configs re-measured with the best: on a busy
# machine the best trial is often a lucky sample, and a steadier config just behind it wins


@dataclass
class Row:
    label: str  # default | kernel default | tuned
    algorithm: str
    config: dict  # in the kernel's knob names, every knob spelled out
    time_us: float = math.inf  # the objective's statistic (or the model's estimate)
    timing: object = None  # measure.Timing when measured
    note: str = ""


def _fmt_time(us: float) -> str:
    if not math.isfinite(us):
        return "   (none)"
    return f"{us / 1e3:9.3f} ms" if us >= 100 else f"{us:9.1f} us"


def kernel_config(objective, alg: str, cfg: dict) -> dict:
    from ssmc.tune.workload import kernel_knobs

    return kernel_knobs(objective.workload, objective.backend, alg, cfg)


def candidates(objective, best_alg: str, best_cfg: dict, runners_up=()) -> tuple[list, str]:
    """The distinct configs to compare, and the label the tuned one goes by: the compiler's
    default (cost model algorithm, schedule pass config), the TVM kernel's own default when
    that differs, the tuned one unless it is one of those, then the runners-up ((algorithm,
    config) of the next-best trials) that are none of those."""
    w = objective.workload
    rows = [Row("default", w.default_algorithm,
                kernel_config(objective, w.default_algorithm, w.default_config))]
    if objective.backend == "tvm":
        rows.append(Row("kernel default", w.default_algorithm,
                        kernel_config(objective, w.default_algorithm, {})))
    tuned = Row("tuned", best_alg, kernel_config(objective, best_alg, best_cfg))
    others = [Row(f"tuned #{i}", alg, kernel_config(objective, alg, cfg))
              for i, (alg, cfg) in enumerate(runners_up, start=2)]
    distinct, tuned_label = [], "tuned"
    for row in rows + [tuned] + others:
        same = [r for r in distinct if (r.algorithm, r.config) == (row.algorithm, row.config)]
        if not same:
            distinct.append(row)
        elif row is tuned:
            tuned_label = same[0].label
    return distinct, tuned_label


def compare(objective, rows: list, rounds: int = 30) -> list:
    """Fill in each row's time: the cost model's estimate, or all measured side by side."""
    if objective.mode == "model":
        for row in rows:
            try:
                row.time_us = objective.evaluate(row.algorithm, row.config)
            except optuna.TrialPruned as e:  # the default may not even fit the target
                row.note = f"infeasible: {e}"
        return rows
    from ssmc.tune.measure import side_by_side

    fns = {}
    for row in rows:
        fn = objective.call(row.algorithm, row.config)
        objective.check(fn())
        fns[row.label] = fn
    timings = side_by_side(fns, objective.device, rounds=rounds)
    for row in rows:
        row.timing = timings[row.label]
        row.time_us = row.timing.statistic(objective.statistic) * 1e6
    return rows


def study_counts(study) -> dict:
    trials = study.get_trials(deepcopy=False)
    return {s.name.lower(): sum(t.state == s for t in trials)
            for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}


def _ratio(a: float, b: float):
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else None


def finish(study, objective, *, export_dir=None, rounds: int = 30, out=print) -> dict | None:
    """Print the comparison, write the record (user directory, and export_dir/<target>/ when
    given).  None when no trial completed."""
    w, target = objective.workload, objective.target
    try:
        best = study.best_trial
    except ValueError:
        out(f"  no trial completed ({study_counts(study)}): no record written")
        return None
    rows, tuned_label = candidates(objective, best.user_attrs["algorithm"],
                                   best.user_attrs["config"], _runners_up(study, best))
    compare(objective, rows, rounds)
    for row in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in row.config.items())
        out(f"  {row.label:<15} {row.algorithm:<12} {_fmt_time(row.time_us)}   {cfg}")
        if row.timing is not None:
            out(f"  {'':<28} {row.timing.summary()}")
        if row.note:
            out(f"  {'':<28} {row.note}")
    if tuned_label != "tuned":
        out(f"  tuned: the best trial is the {tuned_label} config")
    default = rows[0]
    fastest = min(rows, key=lambda r: r.time_us)  # re-measured side by side
    # a config replaces the default only when it is clearly faster, not by the noise of one run
    chosen = fastest if fastest.time_us < default.time_us * (1 - MIN_GAIN) else default
    speedup = _ratio(default.time_us, chosen.time_us)
    if objective.mode == "measured":
        how = f"{objective.statistic} of {rounds} interleaved runs each, measured side by side"
        other = "min" if objective.statistic != "min" else "median"
        alt = _ratio(default.timing.statistic(other), fastest.timing.statistic(other))
        how += f"; {fastest.label} by the {other}: {alt:.2f}x" if alt else ""
    else:
        how = "cost model: the target is not on this machine"
    if chosen is default:
        best = (f"{fastest.label} {_ratio(default.time_us, fastest.time_us):.2f}x, under the "
                f"{MIN_GAIN:.0%} noise margin; " if fastest is not default else "")
        out(f"  gain: none ({best}{how}); the record keeps the default config")
    else:
        out(f"  gain: {speedup:.2f}x over the default with the {chosen.label} config ({how})"
            if speedup else f"  gain: the default is infeasible; {chosen.label} config ({how})")
    record = make_record(
        w.key, target, algorithm=chosen.algorithm, config=chosen.config, source=objective.mode,
        time_us=_finite(chosen.time_us, 3), default_time_us=_finite(default.time_us, 3),
        speedup=_finite(speedup, 4) if speedup else None, chosen=chosen.label,
        statistic=objective.statistic if objective.mode == "measured" else "model",
        study=study.study_name, trials=study_counts(study), measured_seqlen=w.seqlen,
        host=_host(target, objective.mode),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    records = Records(target)
    out(f"  record: {records.write(record)}")
    if export_dir is not None:
        from pathlib import Path

        out(f"  exported: {records.write(record, Path(export_dir) / target.name)}")
    return record


def _runners_up(study, best, n: int = RUNNERS_UP) -> list:
    """(algorithm, config) of the next-best completed trials with a config other than the
    best's, fastest first, n at most (only where timed: a cost model has no luck to undo)."""
    if best.user_attrs.get("source") != "measured":
        return []
    seen = [(best.user_attrs["algorithm"], best.user_attrs["config"])]
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if t.value is not None and "config" in t.user_attrs), key=lambda t: t.value)
    for t in done:
        pick = (t.user_attrs["algorithm"], t.user_attrs["config"])
        if pick not in seen and len(seen) <= n:
            seen.append(pick)
    return seen[1:]


def _finite(x, digits: int):
    """JSON has no infinity: an infeasible default has no time."""
    return round(x, digits) if x is not None and math.isfinite(x) else None


def _host(target, mode: str) -> dict:
    """Where the figures come from: this machine, or the descriptor the model priced."""
    if mode == "model":
        return {"model_of": target.description, "units": target.units}
    if target.is_gpu:
        return {"gpu": target.description, "units": target.units}
    return {"machine": platform.machine(), "cpu": target.llvm_mcpu or platform.processor(),
            "vector_bits": target.vector_bits, "cores": target.units}


__all__ = ["Row", "candidates", "compare", "finish"]
