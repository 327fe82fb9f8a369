"""Pruning: infeasible configs raise optuna.TrialPruned before compiling (from the target
descriptor) and after compiling (from the AOT metadata), and Optuna records them as pruned."""

import dataclasses

import optuna
import pytest

from ssmc.codegen.triton.aot import AotKernel
from ssmc.ir.spec import load_spec
from ssmc.paths import zoo_dir
from ssmc.targets import load_target
from ssmc.tune import prune
from ssmc.tune.workload import workloads

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def mamba():
    return load_spec(zoo_dir() / "mamba.yaml")


def _workload(graph, target):
    (w,) = [x for x in workloads(graph, target, {"batch": 2, "seqlen": 1024})
            if not x.glue]  # the SSM node (a CPU target also tunes the conv1d and rmsnorm)
    return w


def test_gpu_config_over_the_register_budget_is_pruned(mamba):
    sm90 = load_target("sm_90")
    w = _workload(mamba, sm90)
    # (a, b) pairs of 8 channels x 16 states x 128 steps over 64 threads: ~1000 registers
    with pytest.raises(optuna.TrialPruned, match="registers"):
        prune.before_compile("associative", {"block_d": 8, "block_l": 128, "num_warps": 2}, sm90, w)
    est = prune.before_compile("sequential", {"block_d": 4, "num_warps": 1}, sm90, w)
    assert est["regs_per_thread"] <= sm90.regs_per_thread


def test_gpu_config_over_the_shared_memory_budget_is_pruned(mamba):
    small = dataclasses.replace(load_target("sm_90"), smem_per_block=16 * 1024)
    graph = load_spec((zoo_dir() / "mamba2.yaml").read_text())
    (w,) = [x for x in workloads(graph, small, {"batch": 2, "seqlen": 1024})
            if x.family == "selective_ssm/ssd"]
    cfg = {"chunk": 256, "block_m": 32, "block_k": 64, "block_p": 64, "num_warps": 4, "num_stages": 4}
    with pytest.raises(optuna.TrialPruned, match="shared memory"):
        prune.before_compile("chunked", cfg, small, w)


def test_cpu_configs_the_target_cannot_use_are_pruned(mamba):
    cpu = load_target("cpu")
    w = _workload(mamba, cpu)
    lanes = cpu.vector_bits // 32
    with pytest.raises(optuna.TrialPruned, match="vector_width"):
        prune.before_compile("sequential", {"vector_width": 4 * lanes, "channel_block": 4 * lanes}, cpu, w)
    with pytest.raises(optuna.TrialPruned, match="multiple"):
        prune.before_compile("sequential", {"vector_width": 16, "channel_block": 24}, cpu, w)
    with pytest.raises(optuna.TrialPruned, match="threads"):
        prune.before_compile("sequential", {"vector_width": 8, "channel_block": 16,
                                            "threads": cpu.units + 1}, cpu, w)
    prune.before_compile("sequential", {"vector_width": lanes, "channel_block": 2 * lanes}, cpu, w)


def _aot(**kw):
    base = dict(family="selective_scan.sequential", kernel="k", target="sm_90", num_warps=4,
                num_stages=1, n_regs=64, n_spills=0, shared=0, fits=True, compile_s=0.1)
    return AotKernel(**{**base, **kw})


def test_spills_or_a_block_that_does_not_fit_prune_after_compiling():
    prune.after_compile([_aot()])
    with pytest.raises(optuna.TrialPruned, match="spill"):
        prune.after_compile([_aot(), _aot(n_spills=48, n_regs=255)])
    with pytest.raises(optuna.TrialPruned, match="does not fit"):
        prune.after_compile([_aot(fits=False, shared=300_000)])


def test_a_pruned_config_is_a_pruned_trial_not_a_failure(mamba):
    sm90 = load_target("sm_90")
    w = _workload(mamba, sm90)
    study = optuna.create_study()

    def objective(trial):
        block_l = trial.suggest_categorical("block_l", [16, 128])
        prune.before_compile("associative", {"block_d": 8, "block_l": block_l, "num_warps": 2}, sm90, w)
        return 1.0

    study.enqueue_trial({"block_l": 128})
    study.enqueue_trial({"block_l": 16})
    study.optimize(objective, n_trials=2)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE]
