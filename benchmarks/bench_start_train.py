"""START's training cost: one compiled mamba_start training step (b2 L1024) with the START
prologue, the time of the prologue itself, and the step without it (the prologue replaced by
the identity).  `python benchmarks/bench_start_train.py`; figures in RESULTS.md (issue 10)."""
import time, torch, ssmc
from ssmc.runtime import executors
torch.manual_seed(0)
m = ssmc.compile("ir/mamba_start.yaml", target="cpu").train()
tok = torch.randint(0, 256, (2, 1024))
def step():
    out = m(tok); (out.float().square().mean()).backward()
for _ in range(3): step()
def med(f, n=7):
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return sorted(ts)[n//2]*1e3
print("train step with START: %.1f ms" % med(step))
orig = executors.start_prologue
import ssmc.runtime.executors as E
t_pro=[]
def timed(mod, ins):
    t=time.perf_counter(); r=orig(mod, ins); t_pro.append(time.perf_counter()-t); return r
E.start_prologue = timed
step(); t_pro.clear(); med(step)
print("prologue per call: %.2f ms (calls per step %d)" % (sorted(t_pro)[len(t_pro)//2]*1e3, len(t_pro)//7))
E.start_prologue = lambda mod, ins: ins
print("train step without START: %.1f ms" % med(step))
