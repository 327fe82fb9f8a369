"""The pass pipeline (canonicalize, legalize, select_algorithm, fuse, schedule): the algorithm
choice follows the target and the shape bucket, the rewrites keep the graph verifiable and do
not touch the caller's graph, tuned records override the cost model."""

from __future__ import annotations

import copy

import pytest

import ssmc.ir.verify as verify_mod
import ssmc.passes as passes
from ssmc.errors import SsmcError, SpecError
from ssmc.ir.spec import load_spec
from ssmc.ir.verify import reverify
from ssmc.passes import PIPELINE, PassContext, run_pipeline
from ssmc.passes.schedule import TVM_OWN_DEFAULTS
from ssmc.passes.select_algorithm import family
from ssmc.paths import zoo_dir
from ssmc.targets import load_target

ZOO = zoo_dir()
# Values for run-time dims other than batch/seqlen that some zoo specs have (chimera: variates).
EXTRA_DIMS = {"variates": 4}


def spec(name: str):
    return load_spec(ZOO / f"{name}.yaml")


def lower(graph, target="cpu", seqlen=1024, batch=2, records=None, **dims):
    ctx = PassContext(target=load_target(target), bindings={"batch": batch, "seqlen": seqlen, **dims},
                      records=records, dtype=graph.dtype)
    return run_pipeline(graph, ctx)


def ssm_nodes(graph):
    """(qualified name, node) of every node select_algorithm decides for."""
    return [(q, n) for q, n, _ in graph.walk() if n.ALGORITHMS and n.OP != "conv"]


def only_ssm(graph):
    nodes = ssm_nodes(graph)
    assert len(nodes) == 1, nodes
    return nodes[0][1]


def find(graph, qname: str):
    for q, n, _ in graph.walk():
        if q == qname:
            return n
    raise KeyError(qname)


@pytest.fixture(scope="module")
def mamba():
    return spec("mamba")


@pytest.fixture(scope="module")
def mamba2():
    return spec("mamba2")


@pytest.fixture(scope="module")
def s4d_complex():
    return spec("s4d_complex")


# ---- select_algorithm --------------------------------------------------------------------------

def test_mamba_on_cpu_is_sequential(mamba):
    for L in (16, 1024, 16384):
        node = only_ssm(lower(mamba, "cpu", seqlen=L))
        assert node.meta["algorithm"] == "sequential", L
        assert node.meta["why"].startswith("cost model")


def test_mamba_on_sm90_long_is_parallel(mamba):
    node = only_ssm(lower(mamba, "sm_90", seqlen=16384))
    assert node.meta["algorithm"] in ("chunked", "associative")
    # the chosen one is the cheapest row of the cost table, and the table is sorted
    costs = node.meta["costs"]
    assert costs[0]["algorithm"] == node.meta["algorithm"]
    assert [c["time_us"] for c in costs] == sorted(c["time_us"] for c in costs)
    assert {c["algorithm"] for c in costs} == {"sequential", "associative", "chunked"}


def test_choice_depends_on_shape_bucket(mamba):
    short = only_ssm(lower(mamba, "sm_90", seqlen=16)).meta["algorithm"]
    long = only_ssm(lower(mamba, "sm_90", seqlen=16384)).meta["algorithm"]
    assert short != long


def test_choice_depends_on_target(mamba):
    cpu = only_ssm(lower(mamba, "cpu", seqlen=16384)).meta["algorithm"]
    gpu = only_ssm(lower(mamba, "sm_90", seqlen=16384)).meta["algorithm"]
    assert cpu != gpu


def test_s4d_complex_is_the_recurrence_on_cpu_and_fft_long_on_a_gpu(s4d_complex):
    """On the CPU the TVM recurrence beat the Vandermonde + torch.fft path at every length
    measured (2-41x, L 256-16384: the descriptor's fft_efficiency); a GPU's FFT path has the
    parallelism over L that the recurrence lacks."""
    for L in (16, 1024, 16384):
        assert only_ssm(lower(s4d_complex, "cpu", seqlen=L)).meta["algorithm"] == "sequential"
    assert only_ssm(lower(s4d_complex, "sm_90", seqlen=16384)).meta["algorithm"] == "fft"


def test_complex_mamba1_on_triton_may_get_the_associative_scan(mamba):
    """The Triton associative scan takes a complex A (as (re, im) pairs): for a complex A it is
    costed like the others and nothing is left out."""
    g = load_spec((ZOO / "mamba.yaml").read_text().replace(
        "        variant: mamba1\n", "        variant: mamba1\n        complex: true\n"))
    real = only_ssm(lower(mamba, "sm_90", seqlen=256))
    assert "associative" in {c["algorithm"] for c in real.meta["costs"]}
    for target in ("sm_90", "gfx942"):
        node = only_ssm(lower(g, target, seqlen=256))
        assert "associative" in {c["algorithm"] for c in node.meta["costs"]}
        assert "excluded" not in node.meta
    assert "excluded" not in real.meta


def test_s4d_on_triton_chooses_an_algorithm_with_a_kernel(s4d_complex):
    """Triton runs S4D by the recurrence or the FFT path only.  The cost model would take the
    (cheaper) associative form at L=64 and chunked at L=16384, which would run the eager
    reference: it chooses among the two with a kernel, the cost table still has all four rows,
    and `excluded` says why two were not taken."""
    from ssmc.runtime.dispatch import algorithms_with_kernel

    chosen = {}
    for L in (64, 16384):
        node = only_ssm(lower(s4d_complex, "sm_90", seqlen=L))
        chosen[L] = node.meta["algorithm"]
        assert chosen[L] in algorithms_with_kernel("diagonal_ssm", "triton"), L
        assert {c["algorithm"] for c in node.meta["costs"]} == set(node.algorithms())
        assert set(node.meta["excluded"]) == {"chunked", "associative"}
        assert all("no triton kernel" in why for why in node.meta["excluded"].values())
        assert "cheaper but excluded" in node.meta["why"]
    assert chosen == {64: "sequential", 16384: "fft"}  # issue 4: long L -> FFT convolution


def test_family_without_a_kernel_on_the_backend_keeps_the_cost_models_choice(monkeypatch):
    """A family no Triton kernel runs (here the dense selective SSM with its Triton kernel
    taken out of the registry): every algorithm runs the reference, so none is left out and
    the cheapest is chosen."""
    from ssmc.runtime import dispatch

    kernels = {k: v for k, v in dispatch.KERNELS.items()
               if k[0] != "selective_ssm/dense" or k[2] != "triton"}
    monkeypatch.setattr(dispatch, "KERNELS", kernels)
    node = [n for _, n in ssm_nodes(lower(spec("lcde"), "sm_90", seqlen=256))
            if n.OP == "selective_ssm"][0]
    assert "excluded" not in node.meta
    assert node.meta["algorithm"] == node.meta["costs"][0]["algorithm"]


def test_dense_on_a_gpu_target_picks_the_triton_scan():
    """lcde on sm_90: only the sequential scan has a Triton kernel; the parallel algorithms
    the cost model prices lower stay in the table, excluded."""
    node = [n for _, n in ssm_nodes(lower(spec("lcde"), "sm_90", seqlen=256))
            if n.OP == "selective_ssm"][0]
    assert node.meta["algorithm"] == "sequential"
    assert set(node.meta["excluded"]) == {"associative", "chunked"}
    assert "cheaper but excluded" in node.meta["why"]


def test_spec_request_is_kept():
    text = (ZOO / "mamba.yaml").read_text()
    needle = "        variant: mamba1\n"
    assert needle in text
    g = load_spec(text.replace(needle, needle + "        algorithm: sequential\n"))
    # on sm_90 at a long L the cost model would pick a parallel algorithm
    node = only_ssm(lower(g, "sm_90", seqlen=16384))
    assert node.meta["algorithm"] == "sequential"
    assert node.meta["why"] == "requested in the spec"
    assert node.meta["costs"]  # the table is still there for `explain`


@pytest.mark.parametrize("target", ["cpu", "sm_90", "gfx942"])
def test_every_zoo_spec_lowers_and_verifies(target):
    for path in sorted(ZOO.glob("*.yaml")):
        g = load_spec(path)
        out = lower(g, target, seqlen=256, **EXTRA_DIMS)
        reverify(out)
        nodes = ssm_nodes(out)
        assert nodes, path.stem
        for q, n in nodes:
            assert n.meta["algorithm"] in n.algorithms(), (path.stem, q)
            # schedule: every SSM node has a kernel config (the kernel's own host default,
            # {}, for those with knobs of their own) and a kernel name
            own = target == "cpu" and family(n) in TVM_OWN_DEFAULTS
            assert isinstance(n.meta["config"], dict) and bool(n.meta["config"]) != own, \
                (path.stem, q)
            assert n.meta["config_source"] == "default"
            assert n.meta["kernel"].endswith("/" + n.meta["algorithm"])


def test_unbound_runtime_dim_is_a_user_error():
    """chimera has a run-time dim `variates`: without a value the cost model cannot size the
    node, and that is the user's error (one line), not an internal one."""
    with pytest.raises(SsmcError, match="variates"):
        lower(spec("chimera"), "cpu", seqlen=64)


# ---- canonicalize ------------------------------------------------------------------------------

CANON = """\
name: canon
dims:
  d: 8
inputs:
  x: {shape: [batch, seqlen, d]}
nodes:
  - {name: ident, op: identity, inputs: [x]}
  - {name: conv, op: conv1d, inputs: [ident], kernel: 4}
  - {name: act, op: silu, inputs: [conv]}
  - {name: proj, op: linear, inputs: [act], out: d}
outputs: [proj]
"""

# the conv's output is read twice: the silu cannot become the conv's activation
CANON_SHARED = """\
name: canon_shared
dims:
  d: 8
inputs:
  x: {shape: [batch, seqlen, d]}
nodes:
  - {name: conv, op: conv1d, inputs: [x], kernel: 4}
  - {name: act, op: silu, inputs: [conv]}
  - {name: both, op: add, inputs: [act, conv]}
outputs: [both]
"""


def test_canonicalize_drops_identity_and_folds_silu():
    g = load_spec(CANON)
    out = passes.canonicalize.run(copy.deepcopy(g), PassContext(load_target("cpu")))
    names = [n.name for n in out.nodes]
    assert names == ["conv", "proj"]
    conv = out.nodes[0]
    assert conv.inputs == {"x": "x"}
    assert conv.activation == "silu"
    assert conv.meta["folded"] == ["act"]
    assert out.nodes[1].inputs == {"x": "conv"}
    reverify(out)
    # the original still has its four nodes
    assert [n.name for n in g.nodes] == ["ident", "conv", "act", "proj"]
    assert g.nodes[1].activation == "identity"


def test_canonicalize_preserves_meaning():
    import torch

    from ssmc.semantics.model import GraphModule, build_reference

    g = load_spec(CANON)
    out = passes.canonicalize.run(copy.deepcopy(g), PassContext(load_target("cpu")))
    ref = build_reference(g).eval()
    low = GraphModule(out).eval()
    low.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(low(x), ref(x))


def test_canonicalize_keeps_silu_when_conv_output_is_shared():
    g = load_spec(CANON_SHARED)
    out = passes.canonicalize.run(copy.deepcopy(g), PassContext(load_target("cpu")))
    assert [n.name for n in out.nodes] == ["conv", "act", "both"]
    assert out.nodes[0].activation == "identity"


def test_canonicalize_inside_repeat_bodies(mamba):
    """The pipeline reaches block bodies (mamba's conv already carries silu: nothing to fold)."""
    out = lower(mamba, "cpu")
    conv = find(out, "layers.*.conv1d")
    assert conv.activation == "silu"


# ---- fuse ---------------------------------------------------------------------------------------

def test_fuse_absorbs_gate_after_ssd(mamba2):
    before = [q for q, _, _ in mamba2.walk()]
    assert "layers.*.gated" in before
    out = lower(mamba2, "sm_90", seqlen=4096)
    after = {q: n for q, n, _ in out.walk()}
    assert "layers.*.gated" not in after
    ssm = after["layers.*.ssm"]
    assert ssm.inputs["z"] == "z"
    assert ssm.meta["fused_nodes"] == ["gated"]
    assert "silu(z) gate" in ssm.meta["fused"]
    # the norm that read the gate now reads the SSM node, and the lowered graph verifies
    assert after["layers.*.gnorm"].inputs["x"] == "ssm"
    reverify(out)
    body = find(out, "layers").body
    assert str(body.types["ssm"]) == str(find(mamba2, "layers").body.types["gated"])


def test_fuse_records_mamba1_epilogue(mamba):
    ssm = only_ssm(lower(mamba, "cpu"))
    fused = ssm.meta["fused"]
    assert "softplus(delta + bias)" in fused
    assert "D skip" in fused and "silu(z) gate" in fused
    assert "fused_nodes" not in ssm.meta  # no gate node to absorb in Mamba-1


# ---- legalize ----------------------------------------------------------------------------------

@pytest.mark.parametrize("target,expected", [("sm_90", "real pairs (re, im)"),
                                             ("gfx942", "real pairs (re, im)"),
                                             ("cpu", "native complex64")])
def test_legalize_complex(s4d_complex, target, expected):
    node = only_ssm(lower(s4d_complex, target, seqlen=256))
    assert node.meta["complex"] == expected
    assert node.meta["dtype"] == {"io": "float32", "state": "float32", "accumulate": "float32"}


def test_legalize_real_nodes_have_no_complex_mark(mamba, mamba2):
    for g in (mamba, mamba2):
        node = only_ssm(lower(g, "sm_90", seqlen=256))
        assert "complex" not in node.meta


# ---- schedule ----------------------------------------------------------------------------------

def test_schedule_defaults_per_backend(mamba):
    cpu = only_ssm(lower(mamba, "cpu"))
    assert {"channel_block", "vector_width", "threads"} <= set(cpu.meta["config"])
    assert cpu.meta["config"]["threads"] == load_target("cpu").units
    gpu = only_ssm(lower(mamba, "sm_90", seqlen=16384))
    cfg = gpu.meta["config"]
    assert {"BLOCK_D", "num_warps", "num_stages"} <= set(cfg)
    if gpu.meta["algorithm"] == "chunked":
        assert "CHUNK" in cfg
    if gpu.meta["algorithm"] == "associative":
        assert "BLOCK_L" in cfg
    assert gpu.meta["kernel"] == f"selective_ssm/mamba1/{gpu.meta['algorithm']}"


# ---- tuned records -----------------------------------------------------------------------------

class FakeRecords:
    def __init__(self, algorithm="associative", config=None):
        self.algorithm = algorithm
        self.config = config if config is not None else {"BLOCK_D": 8, "BLOCK_L": 128, "num_warps": 2}
        self.calls = []

    def lookup(self, fam, node, graph, ctx):
        self.calls.append(fam)
        return {"algorithm": self.algorithm, "config": dict(self.config), "source": "measured"}


def test_record_overrides_cost_model(mamba):
    rec = FakeRecords()
    # the cost model says chunked here; associative has a Triton kernel too
    node = only_ssm(lower(mamba, "sm_90", seqlen=1024, records=rec))
    assert node.meta["algorithm"] == "associative"
    assert node.meta["why"] == "tuned record (measured)"
    assert node.meta["config"] == rec.config
    assert node.meta["config_source"] == "record"
    assert node.meta["kernel"] == "selective_ssm/mamba1/associative"
    assert "selective_ssm/mamba1" in rec.calls


def test_record_for_an_unknown_algorithm_is_ignored(mamba):
    node = only_ssm(lower(mamba, "cpu", records=FakeRecords(algorithm="fft")))
    assert node.meta["algorithm"] == "sequential"
    assert node.meta["config_source"] == "default"


def test_record_for_an_algorithm_without_a_kernel_is_ignored(mamba):
    """The TVM backend runs Mamba-1 by the sequential scan only: a record naming associative
    (made by another build, or by hand) would have the compiled model run the eager
    reference."""
    node = only_ssm(lower(mamba, "cpu", records=FakeRecords(algorithm="associative")))
    assert node.meta["algorithm"] == "sequential"
    assert node.meta["why"].startswith("cost model")
    assert node.meta["config_source"] == "default"
    assert "no tvm kernel" in node.meta["excluded"]["associative"]


def test_spec_request_beats_record():
    text = (ZOO / "mamba.yaml").read_text()
    needle = "        variant: mamba1\n"
    g = load_spec(text.replace(needle, needle + "        algorithm: chunked\n"))
    node = only_ssm(lower(g, "cpu", records=FakeRecords()))
    assert node.meta["algorithm"] == "chunked"
    assert node.meta["why"] == "requested in the spec"
    # the record's config is for another algorithm: not used
    assert node.meta["config_source"] == "default"


# ---- the pipeline as a whole -------------------------------------------------------------------

def _snapshot(graph):
    return [(q, n.OP, dict(n.inputs), list(n.outputs), copy.deepcopy(n.meta), copy.deepcopy(n.attrs()))
            for q, n, _ in graph.walk()], list(graph.outputs)


@pytest.mark.parametrize("text_or_name", ["mamba2", "mamba", CANON])
def test_pipeline_does_not_mutate_input(text_or_name):
    g = load_spec(text_or_name) if "\n" in text_or_name else spec(text_or_name)
    before = _snapshot(g)
    out = lower(g, "sm_90", seqlen=4096)
    assert out is not g
    assert _snapshot(g) == before
    assert _snapshot(out) != before


def test_trace_sees_every_pass_in_order(mamba):
    seen = []
    run_pipeline(mamba, PassContext(load_target("cpu")), trace=lambda name, _g: seen.append(name))
    assert seen == [name for name, _ in PIPELINE]
    assert seen == ["canonicalize", "legalize", "select_algorithm", "fuse", "schedule"]


def _counting_reverify(monkeypatch):
    calls = []
    real = verify_mod.reverify

    def spy(graph):
        calls.append(graph)
        return real(graph)

    monkeypatch.setattr(verify_mod, "reverify", spy)
    return calls


def test_debug_reverifies_between_passes(monkeypatch, mamba):
    calls = _counting_reverify(monkeypatch)
    monkeypatch.delenv("SSMC_DEBUG", raising=False)
    run_pipeline(mamba, PassContext(load_target("cpu")))
    plain = len(calls)
    calls.clear()
    monkeypatch.setenv("SSMC_DEBUG", "1")
    run_pipeline(mamba, PassContext(load_target("cpu")))
    assert len(calls) >= plain + len(PIPELINE)


def _breaking_pass(graph, ctx):
    """A broken pass: the last node reads a value nobody produces."""
    node = graph.nodes[-1]
    port = next(iter(node.inputs))
    node.inputs[port] = "no_such_value"
    return graph


def test_debug_catches_a_broken_pass(monkeypatch, mamba):
    monkeypatch.setattr(passes, "PIPELINE", [*PIPELINE[:1], ("broken", _breaking_pass), *PIPELINE[1:2]])
    monkeypatch.delenv("SSMC_DEBUG", raising=False)
    run_pipeline(mamba, PassContext(load_target("cpu")))  # unchecked: goes through
    monkeypatch.setenv("SSMC_DEBUG", "1")
    with pytest.raises(SpecError, match="no_such_value"):
        run_pipeline(mamba, PassContext(load_target("cpu")))


SELF_GATE = """\
name: selfgate
dims:
  d: 16
  h: 2
  n: 4
inputs:
  x: {shape: [batch, seqlen, d]}
  dt: {shape: [batch, seqlen, h]}
  B: {shape: [batch, seqlen, n]}
  C: {shape: [batch, seqlen, n]}
nodes:
  - name: ssm
    op: selective_ssm
    variant: ssd
    inputs: {x: x, dt: dt, B: B, C: C}
    heads: h
    d_state: n
  - {name: g, op: gate, inputs: [ssm, ssm], fn: silu}
outputs: [g]
"""


def test_fuse_leaves_a_self_gate_alone():
    """y * silu(y) reads the SSD output twice: it cannot become the node's z input (that would
    be a cycle), so the gate stays and the graph still verifies."""
    import torch

    import ssmc
    from ssmc.semantics.model import build_reference

    g = load_spec(SELF_GATE)
    for target in ("cpu", "sm_90"):
        out = lower(g, target, seqlen=64)
        assert [n.name for n in out.nodes] == ["ssm", "g"]
        assert "z" not in out.nodes[0].inputs
        reverify(out)
    model = ssmc.compile(g, "cpu", seqlen=8).eval()
    ref = build_reference(g).eval()
    model.load_state_dict(ref.state_dict())
    ins = dict(x=torch.randn(1, 5, 16), dt=torch.rand(1, 5, 2), B=torch.randn(1, 5, 4), C=torch.randn(1, 5, 4))
    with torch.no_grad():
        torch.testing.assert_close(model(**ins), ref(**ins))
