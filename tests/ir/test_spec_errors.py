"""The spec language's errors: every problem is a SpecError that names file:line:col, the
field, what was expected and, for a misspelling, the closest valid name.  Plus the positive
cases: the zoo loads and its inferred types are right."""

from __future__ import annotations

import textwrap

import pytest

from ssmc.errors import Loc, SpecError
from ssmc.ir.graph import TensorType
from ssmc.ir.spec import load_spec, load_zoo
from ssmc.paths import zoo_dir

ZOO_FILES = sorted(zoo_dir().glob("*.yaml"))


def zoo(name: str) -> str:
    return (zoo_dir() / f"{name}.yaml").read_text()


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} is not unique in the spec"
    return text.replace(old, new)


def at(text: str, needle: str, nth: int = 1) -> tuple:
    """1-based (line, col) of the nth occurrence of needle in text."""
    i = -1
    for _ in range(nth):
        i = text.index(needle, i + 1)
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1


def val(text: str, needle: str) -> tuple:
    """(line, col) of the value in a `key: value` needle."""
    line, col = at(text, needle)
    return line, col + needle.index(": ") + 2


def spec_error(text) -> SpecError:
    with pytest.raises(SpecError) as e:
        load_spec(text)
    return e.value


def check(e: SpecError, pos: tuple, field: str, *parts: str, suggestion: str | None = None, file="<spec>"):
    assert (e.loc.file, e.loc.line, e.loc.col) == (file, *pos), str(e)
    assert e.field == field, str(e)
    for p in parts:
        assert p in e.message, f"{p!r} not in {e.message!r}"
    assert e.suggestion == suggestion, str(e)
    text = str(e)
    assert text.startswith(f"{file}:{pos[0]}:{pos[1]}: {field}: ")
    if suggestion:
        assert text.endswith(f"(did you mean '{suggestion}'?)")
    assert "\n" not in text


TINY = textwrap.dedent("""\
    name: tiny
    dims:
      d: 8
    inputs:
      x: {shape: [batch, seqlen, d]}
    nodes:
      - {name: a, op: linear, inputs: [x], out: d}
    outputs: [a]
    """)


def test_tiny_loads():
    g = load_spec(TINY)
    assert str(g.types["a"]) == "float32[batch, seqlen, 8]"


# ---- keys and names ----------------------------------------------------------------------------

def test_misspelled_top_level_key():
    text = edit(zoo("mamba"), "description:", "descriptoin:")
    e = spec_error(text)
    check(e, at(text, "descriptoin"), "descriptoin", "unknown key", "name, description, dims",
          suggestion="description")


def test_missing_top_level_key():
    e = spec_error(edit(TINY, "outputs: [a]\n", ""))
    check(e, (1, 1), "outputs", "missing required key")


def test_misspelled_node_key():
    text = edit(zoo("mamba"), "bias: false, tied", "bais: false, tied")
    e = spec_error(text)
    check(e, at(text, "bais"), "nodes.lm_head.bais", "unknown key", "out, bias, tied", suggestion="bias")


def test_misspelled_block_key():
    text = edit(zoo("mamba"), "    outputs: [res]", "    ouputs: [res]")
    e = spec_error(text)
    check(e, at(text, "ouputs"), "blocks.mamba_block.ouputs", "unknown key", suggestion="outputs")


def test_unknown_op():
    text = edit(zoo("mamba"), "op: rmsnorm, inputs: [layers]", "op: rmsnrom, inputs: [layers]")
    e = spec_error(text)
    check(e, at(text, "rmsnrom"), "nodes[2].op", "unknown op 'rmsnrom'", "known: add,", suggestion="rmsnorm")


def test_op_that_is_not_a_string():
    text = edit(TINY, "op: linear", "op: [linear]")
    e = spec_error(text)
    check(e, at(text, "[linear]"), "nodes[0].op", "unknown op ['linear']")


def test_missing_op_and_name():
    e = spec_error(edit(TINY, "op: linear, ", ""))
    check(e, at(TINY, "{name: a"), "nodes[0].op", "missing required key")
    e = spec_error(edit(TINY, "name: a, ", ""))
    check(e, at(TINY, "{name: a"), "nodes[0].name", "missing required key")


def test_bad_node_name():
    text = edit(TINY, "name: a,", "name: 'a b',")
    e = spec_error(text)
    check(e, at(text, "'a b'"), "nodes[0].name", "expected a name (letters, digits, _)")


# ---- dims --------------------------------------------------------------------------------------

def test_unknown_dim_in_expression():
    text = edit(zoo("mamba"), "d_inner: expand*d_model", "d_inner: expand*d_modle")
    e = spec_error(text)
    check(e, at(text, "expand*d_modle"), "dims.d_inner", "unknown dimension 'd_modle'", suggestion="d_model")


def test_unknown_dim_in_a_shape():
    text = edit(TINY, "[batch, seqlen, d]", "[batch, seqlen, dd]")
    e = spec_error(text)
    check(e, at(text, "dd]"), "inputs.x.shape[2]", "unknown dimension 'dd'", "declare it under dims:",
          suggestion="d")


def test_unknown_dim_in_an_attribute():
    text = edit(TINY, "out: d}", "out: 2*e}")
    e = spec_error(text)
    check(e, at(text, "2*e"), "nodes.a.out", "unknown dimension 'e'")


def test_cyclic_dims():
    text = edit(zoo("mamba"), "d_model: 128", "d_model: d_inner/2")
    e = spec_error(text)
    check(e, at(text, "d_inner/2"), "dims.d_model", "cyclic definition: d_model -> d_inner -> d_model")


def test_cyclic_dims_names_only_the_cycle():
    text = edit(TINY, "  d: 8\n", "  d: e\n  e: f+1\n  f: e\n")
    e = spec_error(text)
    assert "cyclic definition: e -> f -> e" in e.message
    assert e.field in ("dims.e", "dims.f")


def test_self_referencing_dim():
    text = edit(TINY, "  d: 8\n", "  d: d+1\n")
    e = spec_error(text)
    check(e, at(text, "d+1"), "dims.d", "cyclic definition: d -> d")


def test_dim_using_a_run_time_dim():
    text = edit(zoo("mamba"), "d_model: 128", "d_model: seqlen*2")
    e = spec_error(text)
    check(e, at(text, "seqlen*2"), "dims.d_model", "uses 'seqlen', which is bound at run time")


def test_dim_using_a_declared_symbolic_dim():
    text = edit(TINY, "  d: 8\n", "  v: symbolic\n  d: v+1\n")
    e = spec_error(text)
    check(e, at(text, "v+1"), "dims.d", "uses 'v', which is bound at run time")


def test_rebinding_a_run_time_dim():
    text = edit(TINY, "  d: 8\n", "  d: 8\n  batch: 4\n")
    e = spec_error(text)
    check(e, at(text, "batch: 4"), "dims.batch", "bound at run time", "'symbolic'")


def test_attribute_using_a_run_time_dim():
    text = edit(TINY, "out: d}", "out: seqlen}")
    e = spec_error(text)
    check(e, at(text, "seqlen}"), "nodes.a.out", "must be a constant", "'seqlen' is bound at run time")


@pytest.mark.parametrize("value, message", [
    ("2.5", "got float 2.5"),
    ("5/2", "= 2.5 is not a whole number (use ceil() or floor())"),
    ("1-9", "is negative"),
    ("2**60", "out of range"),
    ("2**99", "whole exponent between 0 and 64"),
    ("1/0", "division by zero"),
    ("'(((('", "expected a number, a name or '('"),
    ("'2 $ 3'", "unexpected character '$'"),
    ("sqrt(4)", "unknown function 'sqrt'"),
    ("[8]", "got a list [8]"),
    ("true", "got True"),
    ("99999999999999999999999999999999999999999999", "out of range"),
])
def test_bad_dim_values(value, message):
    text = edit(TINY, "  d: 8\n", f"  d: {value}\n")
    e = spec_error(text)
    check(e, at(text, value), "dims.d", message)


def test_dims_not_a_mapping():
    text = edit(TINY, "dims:\n  d: 8\n", "dims: [d]\n")
    e = spec_error(text)
    check(e, at(text, "[d]"), "dims", "expected a mapping, got a list")


def test_dims_bad_name():
    text = edit(TINY, "  d: 8\n", "  d: 8\n  2x: 3\n")
    e = spec_error(text)
    check(e, at(text, "2x"), "dims", "expected a name")


def test_exact_ceil_dims():
    g = load_spec(zoo("mamba"))
    assert g.dims["dt_rank"] == 8 and g.dims["d_inner"] == 256
    g = load_spec(edit(zoo("mamba"), "d_model: 128", "d_model: 129"))
    assert g.dims["dt_rank"] == 9  # ceil(129/16), exactly


# ---- attributes --------------------------------------------------------------------------------

def test_string_for_bool():
    text = edit(zoo("mamba"), "bias: false, tied", "bias: 'no', tied")
    e = spec_error(text)
    check(e, at(text, "'no'"), "nodes.lm_head.bias", "expected true or false, got a string 'no'")


def test_yaml_1_1_word_booleans_are_booleans():
    # YAML 1.1 reads `no` as false: that is the YAML's meaning and is accepted.
    g = load_spec(edit(TINY, "out: d}", "out: d, bias: no}"))
    assert g.nodes[0].bias is False


def test_list_for_int():
    text = edit(zoo("mamba"), "num: vocab", "num: [vocab]")
    e = spec_error(text)
    check(e, at(text, "[vocab]"), "nodes.embedding.num", "expected a dimension (integer or expression)",
          "got a list")


def test_mapping_for_float():
    text = edit(TINY, "out: d}", "out: d}\n  - {name: n, op: rmsnorm, inputs: [a], eps: {a: 1}}")
    e = spec_error(text)
    check(e, at(text, "{a: 1}"), "nodes.n.eps", "expected a number, got a mapping")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'abc'", "1e999"])
def test_non_finite_or_non_numeric_float(value):
    text = edit(TINY, "out: d}", f"out: d}}\n  - {{name: n, op: rmsnorm, inputs: [a], eps: {value}}}")
    e = spec_error(text)
    check(e, val(text, f"eps: {value}"), "nodes.n.eps", "expected a")


def test_float_range_checked():
    text = edit(TINY, "out: d}", "out: d}\n  - {name: n, op: rmsnorm, inputs: [a], eps: -1.0}")
    e = spec_error(text)
    check(e, at(text, "-1.0"), "nodes.n.eps", "must be > 0")


def test_float_attributes_accept_yaml_1_1_exponents():
    # YAML 1.1 reads 1e-3 (no dot) as a string; it is accepted as the number it means.
    text = edit(zoo("mamba"), "        D: true\n", "        D: true\n        dt_min: 1e-3\n        dt_max: 5E-2\n")
    g = load_spec(text)
    ssm = g.blocks["mamba_block"].node("ssm")
    assert ssm.dt_min == pytest.approx(1e-3) and ssm.dt_max == pytest.approx(5e-2)


def test_choice_not_allowed():
    text = edit(zoo("mamba"), "activation: silu", "activation: sliu")
    e = spec_error(text)
    check(e, at(text, "sliu"), "nodes.conv1d.activation", "expected one of identity, silu, got 'sliu'",
          suggestion="silu")


def test_choice_of_variant():
    text = edit(zoo("mamba"), "variant: mamba1", "variant: mamba_1")
    e = spec_error(text)
    check(e, at(text, "mamba_1"), "nodes.ssm.variant", "expected one of mamba1, ssd, dense", suggestion="mamba1")


def test_missing_required_attribute():
    text = edit(zoo("mamba"), "out: vocab, ", "")
    e = spec_error(text)
    check(e, at(text, "{name: lm_head"), "nodes.lm_head.out", "missing required attribute of op 'linear'",
          "output features")


def test_attribute_of_the_wrong_variant():
    text = edit(zoo("mamba"), "        D: true\n", "        D: true\n        heads: 4\n")
    e = spec_error(text)
    check(e, val(text, "heads: 4"), "nodes.ssm.heads", "is not an attribute of variant 'mamba1'", "it takes:")


def test_ssd_without_heads():
    text = edit(zoo("mamba2"), "        heads: n_heads\n", "")
    e = spec_error(text)
    check(e, at(text, "- name: ssm")[:1] + (at(text, "- name: ssm")[1] + 2,), "nodes.ssm.heads",
          "variant 'ssd' needs heads")


def test_start_settings_checked():
    text = edit(zoo("mamba_start"), "start: {k: 8, mode: noise, sigma: 0.1}", "start: {k: 8, mode: nosie}")
    e = spec_error(text)
    check(e, at(text, "{k: 8"), "nodes.ssm.start", "mode must be 'noise' or 'drop'")
    text = edit(zoo("mamba_start"), "start: {k: 8, mode: noise, sigma: 0.1}", "start: {k: 2.5}")
    check(spec_error(text), at(text, "{k: 2.5"), "nodes.ssm.start", "k (tokens perturbed) must be an integer")
    text = edit(zoo("mamba_start"), "start: {k: 8, mode: noise, sigma: 0.1}", "start: {k: 8, ratio: 0.1}")
    check(spec_error(text), at(text, "{k: 8"), "nodes.ssm.start", "unknown key 'ratio'")


def test_tied_weight_checked():
    text = edit(zoo("mamba"), "tied: embedding", "tied: embeding")
    e = spec_error(text)
    check(e, at(text, "embeding"), "nodes.lm_head.tied", "not an embedding node", suggestion="embedding")
    text = edit(zoo("mamba"), "tied: embedding", "tied: norm_f")
    check(spec_error(text), at(text, "norm_f}"), "nodes.lm_head.tied", "not an embedding node")
    text = edit(zoo("mamba"), "out: vocab, bias: false, tied", "out: 255, bias: false, tied")
    check(spec_error(text), at(text, "embedding}"), "nodes.lm_head.tied", "needs out == num")


def test_algorithm_on_a_glue_op():
    text = edit(TINY, "out: d}", "out: d, algorithm: fft}")
    e = spec_error(text)
    check(e, at(text, "fft"), "nodes.a.algorithm", "op 'linear' has no algorithm choice")


def test_unknown_algorithm():
    text = edit(zoo("mamba"), "        D: true\n", "        D: true\n        algorithm: chunkd\n")
    e = spec_error(text)
    check(e, at(text, "chunkd"), "nodes.ssm.algorithm", "unknown algorithm 'chunkd'",
          "valid: auto, sequential, associative, chunked", suggestion="chunked")


# ---- algorithm requests a node cannot support --------------------------------------------------

def test_associative_scan_of_a_nonlinear_recurrence():
    text = edit(zoo("convssm"), "algorithm: sequential", "algorithm: associative")
    e = spec_error(text)
    check(e, at(text, "associative"), "nodes.plrnn.algorithm", "'associative' cannot run a recurrence node",
          "nonlinear", "no associative operator", "valid: auto, sequential")


def test_fft_on_a_selective_ssm():
    text = edit(zoo("mamba"), "        D: true\n", "        D: true\n        algorithm: fft\n")
    e = spec_error(text)
    check(e, at(text, "fft"), "nodes.ssm.algorithm", "'fft' cannot run a selective_ssm (variant mamba1) node",
          "depends on the input", "not a convolution")


def test_associative_on_nested_recursion():
    text = edit(zoo("rir"), "inner: bbt}", "inner: bbt, algorithm: associative}")
    e = spec_error(text)
    check(e, at(text, "associative"), "nodes.encoder.algorithm", "'associative' cannot run a nested_recursion",
          "not associative")


def test_wavefront_on_a_1d_ssm():
    text = edit(zoo("s4d"), "init: real}", "init: real, algorithm: wavefront}")
    e = spec_error(text)
    check(e, at(text, "wavefront"), "nodes.ssm.algorithm", "1-D recurrence")


def test_supported_algorithm_requests_load():
    g = load_spec(edit(zoo("s4d"), "init: real}", "init: real, algorithm: fft}"))
    assert g.blocks["s4d_block"].node("ssm").algorithm == "fft"
    g = load_spec(edit(zoo("rir"), "inner: bbt}", "inner: bbt, algorithm: tree}"))
    assert g.node("encoder").algorithm == "tree"


# ---- inputs and references ---------------------------------------------------------------------

def test_missing_input_port():
    text = edit(zoo("mamba"), "delta: dt_proj, ", "")
    e = spec_error(text)
    check(e, at(text, "{x: conv1d"), "nodes.ssm.inputs.delta", "missing required input of op 'selective_ssm'")


def test_unknown_input_port():
    text = edit(zoo("mamba"), "delta: dt_proj", "dleta: dt_proj")
    e = spec_error(text)
    check(e, at(text, "dleta"), "nodes.ssm.inputs.dleta", "unknown input port",
          "takes: x, delta, B, C, z, initial_state", suggestion="delta")


def test_too_many_positional_inputs():
    text = edit(zoo("mamba"), "op: rmsnorm, inputs: [layers]", "op: rmsnorm, inputs: [layers, embedding]")
    e = spec_error(text)
    check(e, at(text, "[layers, embedding]"), "nodes.norm_f.inputs", "op 'rmsnorm' takes 1 inputs (x), got 2")


def test_missing_inputs_key():
    text = edit(TINY, "inputs: [x], ", "")
    e = spec_error(text)
    check(e, at(text, "{name: a"), "nodes.a.inputs", "missing required key")


def test_add_needs_two_inputs():
    text = edit(TINY, "out: d}", "out: d}\n  - {name: s, op: add, inputs: [a]}")
    e = spec_error(text)
    check(e, at(text, "[a]}"), "nodes.s.inputs", "takes at least two inputs")


def test_dangling_input_reference():
    text = edit(zoo("mamba"), "inputs: [norm_f]", "inputs: [norm_ff]")
    e = spec_error(text)
    check(e, at(text, "norm_ff"), "nodes.lm_head.inputs.x", "'norm_ff' is not a graph input or the output",
          suggestion="norm_f")


def test_dangling_named_port_reference():
    text = edit(zoo("mamba"), "B: Bm,", "B: Bmm,")
    e = spec_error(text)
    check(e, at(text, "Bmm"), "nodes.ssm.inputs.B", "'Bmm' is not", suggestion="Bm")


def test_dangling_graph_output():
    text = edit(TINY, "outputs: [a]", "outputs: [b]")
    e = spec_error(text)
    check(e, at(text, "[b]"), "outputs[0]", "'b' is not produced by any node")


def test_duplicate_node_name():
    text = edit(zoo("mamba"), "name: norm_f,", "name: embedding,")
    e = spec_error(text)
    check(e, at(text, "{name: embedding, op: rmsnorm"), "nodes.embedding.name", "duplicate name 'embedding'")


def test_node_named_like_a_graph_input():
    text = edit(TINY, "name: a,", "name: x,")
    e = spec_error(text.replace("outputs: [a]", "outputs: [x]"))
    assert e.field == "nodes.x.name" and "duplicate name 'x'" in e.message


def test_value_produced_twice():
    text = edit(TINY, "out: d}", "out: d}\n  - {name: b, op: silu, inputs: [a], outputs: [a]}")
    e = spec_error(text)
    check(e, at(text, "[a]}", nth=1), "nodes.b.outputs", "value 'a' is already produced by 'a'")


def test_wrong_number_of_output_names():
    text = edit(zoo("mamba"), "outputs: [xs, z]", "outputs: [xs]")
    e = spec_error(text)
    check(e, at(text, "[xs]"), "nodes.xz.outputs", "produces 2 value(s), got 1 name(s)")


def test_duplicate_yaml_key():
    text = edit(zoo("mamba"), "num: vocab,", "num: vocab, num: 3,")
    e = spec_error(text)
    check(e, at(text, "num: 3"), "num", "duplicate key")


def test_cycle_between_nodes():
    text = edit(TINY, "  - {name: a, op: linear, inputs: [x], out: d}\n",
                "  - {name: a, op: linear, inputs: [c], out: d}\n"
                "  - {name: b, op: silu, inputs: [a]}\n"
                "  - {name: c, op: gelu, inputs: [b]}\n")
    e = spec_error(text)
    assert "cycle:" in e.message and "recurrences belong inside SSM nodes" in e.message
    cycle = e.message.split("cycle: ")[1].split(" (")[0].split(" -> ")
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b", "c"]
    first = cycle[0]
    check(e, at(text, "[c]" if first == "a" else "[a]" if first == "b" else "[b]"), f"nodes.{first}.inputs",
          "cycle")


def test_cycle_in_a_zoo_spec():
    text = edit(zoo("mamba"), "op: rmsnorm, inputs: [layers]", "op: rmsnorm, inputs: [lm_head]")
    e = spec_error(text)
    assert e.message.startswith("cycle: ") and "norm_f" in e.message and "lm_head" in e.message


def test_self_loop():
    text = edit(TINY, "inputs: [x]", "inputs: [a]")
    e = spec_error(text)
    check(e, at(text, "[a], out"), "nodes.a.inputs", "cycle: a -> a")


# ---- shapes ------------------------------------------------------------------------------------

def test_split_sizes_do_not_add_up():
    text = edit(zoo("mamba"), "sizes: [d_inner, d_inner]", "sizes: [d_inner, d_model]")
    e = spec_error(text)
    check(e, at(text, "in_proj], sizes"), "nodes.xz.inputs.x", "sizes [256, 128] add up to 384",
          "axis -1 of the input is 512")


def test_selective_ssm_B_with_the_wrong_last_axis():
    text = edit(zoo("mamba"), "sizes: [dt_rank, d_state, d_state]", "sizes: [dt_rank, d_state+2, d_state-2]")
    e = spec_error(text)
    check(e, at(text, "Bm, C:"), "nodes.ssm.inputs.B", "last axis (groups * d_state) must be 16, got 18")


def test_add_of_mismatched_shapes():
    text = edit(zoo("mamba"), "inputs: [h, out_proj]", "inputs: [h, in_proj]")
    e = spec_error(text)
    check(e, at(text, "in_proj]}"), "nodes.res.inputs.1", "axis 2: 512 does not broadcast with 128")


def test_gate_of_mismatched_shapes():
    text = edit(zoo("mamba2"), "inputs: [ssm, z]", "inputs: [ssm, dt]")
    e = spec_error(text)
    check(e, at(text, "dt], fn"), "nodes.gated.inputs.z", "does not match x")


def test_wrong_rank():
    text = edit(zoo("chimera"), "[batch, seqlen, variates, d_in]", "[batch, seqlen, d_in]")
    e = spec_error(text)
    check(e, at(text, "encoder], d_state"), "nodes.ssm2d.inputs.x", "expected rank 4, got float32[batch, seqlen, 16]")


def test_embedding_of_floats():
    text = edit(zoo("rir"), "dtype: int64", "dtype: float32")
    e = spec_error(text)
    check(e, at(text, "tokens], num"), "nodes.embedding.inputs.x", "expected integer token ids, got float32")


def test_ssd_heads_do_not_divide_channels():
    text = edit(zoo("mamba2"), "heads: n_heads", "heads: 3")
    e = spec_error(text)
    assert e.field in ("nodes.ssm.inputs.dt", "nodes.ssm.inputs.x")


def test_large_symbolic_shapes_compare_equal():
    # batch**6 overflows the random trial values of dims.equal; the shape still matches itself
    text = edit(TINY, "[batch, seqlen, d]", "[batch, seqlen, batch*batch*batch*batch*batch*batch]")
    text = edit(text, "  - {name: a, op: linear, inputs: [x], out: d}\n",
                "  - {name: a, op: silu, inputs: [x]}\n  - {name: s, op: add, inputs: [a, x]}\n")
    g = load_spec(text.replace("outputs: [a]", "outputs: [s]"))
    assert str(g.types["s"]) == "float32[batch, seqlen, (((((batch * batch) * batch) * batch) * batch) * batch)]"


def test_bad_input_dtype():
    text = edit(TINY, "[batch, seqlen, d]}", "[batch, seqlen, d], dtype: float33}")
    e = spec_error(text)
    check(e, at(text, "float33"), "inputs.x.dtype", "expected one of float32,", suggestion="float32")


def test_rank_too_high():
    text = edit(TINY, "[batch, seqlen, d]", "[" + ", ".join(["1"] * 9) + "]")
    e = spec_error(text)
    check(e, at(text, "[1, 1"), "inputs.x.shape", "rank 9 is more than 8")


# ---- blocks and repeat -------------------------------------------------------------------------

def test_repeat_of_an_unknown_block():
    text = edit(zoo("mamba"), "block: mamba_block,", "block: mamba_blok,")
    e = spec_error(text)
    check(e, at(text, "mamba_blok"), "nodes.layers.block", "unknown block 'mamba_blok'", suggestion="mamba_block")


def test_block_whose_output_cannot_be_chained():
    # the block maps 128 -> 64 features: one copy is fine, two cannot be chained
    text = edit(zoo("mamba"), "out: d_model, bias: false}", "out: 64, bias: false}\n"
                "      - {name: pad, op: linear, inputs: [h], out: 64}")
    text = edit(text, "inputs: [h, out_proj]", "inputs: [pad, out_proj]")
    e = spec_error(text)
    check(e, at(text, "n_layers, inputs"), "nodes.layers.times", "block 'mamba_block' output 0 is "
          "float32[batch, seqlen, 64] but its input is float32[batch, seqlen, 128]", "cannot be chained")
    g = load_spec(edit(text, "n_layers: 2", "n_layers: 1").replace(", tied: embedding", ""))
    assert str(g.types["layers"]) == "float32[batch, seqlen, 64]"


def test_repeat_with_the_wrong_number_of_inputs():
    text = edit(zoo("mamba"), "times: n_layers, inputs: [embedding]", "times: n_layers, inputs: [embedding, embedding]")
    e = spec_error(text)
    assert "block 'mamba_block' takes 1 input(s)" in e.message and e.field == "nodes.layers.inputs"


def test_repeat_times_zero():
    text = edit(zoo("mamba"), "n_layers: 2", "n_layers: 0")
    e = spec_error(text)
    check(e, at(text, "n_layers, inputs"), "nodes.layers.times", "must be >= 1, got 0")


def test_error_inside_a_block_points_into_the_block():
    text = edit(zoo("s4d"), "init: real}", "init: real, d_state: 0}")
    e = spec_error(text)
    assert e.loc.line == at(text, "init: real, d_state: 0")[0]


def test_block_missing_key():
    text = edit(zoo("mamba"), "    inputs: [h]\n", "")
    e = spec_error(text)
    check(e, at(text, "    nodes:")[:1] + (5,), "blocks.mamba_block.inputs", "missing required key")


def test_blocks_not_a_mapping():
    text = edit(zoo("rir"), "inputs:\n  tokens", "blocks: 0\ninputs:\n  tokens")
    e = spec_error(text)
    check(e, at(text, "0\ninputs"), "blocks", "expected a mapping, got an integer")


# ---- the file itself ---------------------------------------------------------------------------

def test_invalid_yaml_syntax():
    text = edit(zoo("mamba"), "  d_state: 16\n", "  d_state: [16\n")
    e = spec_error(text)
    assert e.field == "<yaml>" and "not valid YAML" in e.message
    assert e.loc.line == at(text, "d_conv: 4")[0]  # where the parser noticed the unclosed '['


def test_invalid_yaml_indentation():
    text = "name: x\n  dims: 3\n"
    e = spec_error(text)
    check(e, (2, 7), "<yaml>", "not valid YAML")


def test_non_printable_character():
    e = spec_error("name: tiny\ndims:\n  d: 8\x07\n")
    check(e, (3, 7), "<yaml>", "character 0x7 is not allowed")


@pytest.mark.parametrize("text, got", [("", "nothing (null)"), ("\n# just a comment\n", "nothing (null)"),
                                       ("- a\n- b\n", "a list"), ("42\n", "an integer"), ("hello\n", "a string")])
def test_top_level_not_a_mapping(text, got):
    e = spec_error(text)
    check(e, (1, 1), "<top>", f"expected a mapping, got {got}")


def test_several_documents():
    e = spec_error(TINY + "---\n" + TINY)
    assert e.field == "<yaml>" and "another document" in e.message
    assert e.loc.line == TINY.count("\n") + 1


def test_file_that_does_not_exist(tmp_path):
    path = tmp_path / "nope.yaml"
    e = spec_error(path)
    check(e, (0, 0), "<file>", "no such file", file=str(path))
    e = spec_error(str(path))
    assert e.loc.file == str(path)


def test_errors_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(edit(TINY, "op: linear", "op: lniear"))
    e = spec_error(path)
    check(e, at(path.read_text(), "lniear"), "nodes[0].op", "unknown op", suggestion="linear", file=str(path))


def test_unreadable_file(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00name")
    e = spec_error(path)
    assert e.field in ("<file>", "<yaml>") and e.loc.file == str(path)


def test_python_tags_are_not_constructed():
    e = spec_error("name: !!python/object/apply:os.system [echo pwned]\n")
    assert e.field == "<yaml>" and e.loc.line == 1


def test_loc_str():
    assert str(Loc("a.yaml", 3, 4)) == "a.yaml:3:4"


# ---- the zoo -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ZOO_FILES, ids=[p.stem for p in ZOO_FILES])
def test_zoo_spec_loads_and_verifies(path):
    g = load_spec(path)
    assert g.name == path.stem
    assert g.file == str(path)
    for v in g.outputs:
        assert isinstance(g.types[v], TensorType)
    assert list(g.g.nodes)  # the dataflow graph was built
    assert g.node_kinds()


def test_load_zoo():
    z = load_zoo()
    assert {"mamba", "mamba2", "s4d", "rir", "convssm", "chimera"} <= set(z)


@pytest.mark.parametrize("name, value, want", [
    ("mamba", "lm_head", "float32[batch, seqlen, 256]"),
    ("mamba2", "lm_head", "float32[batch, seqlen, 256]"),
    ("s4d", "decoder", "float32[batch, 10]"),
    ("rir", "head", "float32[batch, 2]"),
    ("chimera", "decoder", "float32[batch, seqlen, variates, 1]"),
    ("convssm", "readout", "float32[batch, seqlen, 10]"),
    ("lcde", "decoder", "float32[batch, seqlen, 4]"),
])
def test_inferred_output_types(name, value, want):
    g = load_spec(zoo_dir() / f"{name}.yaml")
    assert str(g.types[value]) == want


def test_inferred_types_inside_blocks():
    g = load_spec(zoo_dir() / "mamba.yaml")
    body = g.blocks["mamba_block"]
    assert str(body.types["in_proj"]) == "float32[batch, seqlen, 512]"
    assert str(body.types["Bm"]) == "float32[batch, seqlen, 16]"
    assert str(body.types["dt_low"]) == "float32[batch, seqlen, 8]"
    assert str(body.types["ssm"]) == "float32[batch, seqlen, 256]"
    g2 = load_spec(zoo_dir() / "mamba2.yaml")
    assert g2.dims["n_heads"] == 8 and g2.dims["conv_dim"] == 384


def test_final_state_output_type():
    text = edit(zoo("mamba"), "        D: true\n", "        D: true\n        final_state: true\n")
    text = edit(text, "      - {name: out_proj, op: linear, inputs: [ssm]", "      - {name: out_proj, op: linear, inputs: [ssm_0]")
    g = load_spec(text)
    body = g.blocks["mamba_block"]
    assert str(body.types["ssm_1"]) == "float32[batch, 256, 16]"


def test_symbolic_dims():
    g = load_spec(zoo_dir() / "chimera.yaml")
    assert g.symbolic == ("batch", "seqlen", "variates")


# ---- attribute combinations the reference modules cannot build ---------------------------------

@pytest.mark.parametrize("old, new, field, message", [
    ("complex: true", "complex: false", "init", "init 'lin' gives a complex A"),
    ("        d_state: d_state\n", "        d_state: 63\n", "d_state", "must be even with complex and conj_pair"),
])
def test_diagonal_ssm_combinations(old, new, field, message):
    text = edit(zoo("s4d_complex"), old, new)
    e = spec_error(text)
    assert e.field == f"nodes.ssm.{field}" and message in e.message


def test_polar_needs_complex():
    text = edit(zoo("lru_polar"), "complex: true", "complex: false, init: real")
    e = spec_error(text)
    check(e, at(text, "polar}"), "nodes.lru.parameterization", "'polar' needs complex: true")


@pytest.mark.parametrize("spec, anchor, extra", [
    ("mamba", "        D: true\n", "        dt_min: 0.5\n        dt_max: 0.1\n"),
    ("mamba2", "        chunk_size: 64\n", "        dt_min: 0\n"),
])
def test_dt_range(spec, anchor, extra):
    text = edit(zoo(spec), anchor, anchor + extra)
    e = spec_error(text)
    check(e, val(text, "dt_min: " + extra.split("dt_min: ")[1].split("\n")[0]), "nodes.ssm.dt_min",
          "need 0 < dt_min <= dt_max")


def test_dt_limit_range():
    text = edit(zoo("mamba2"), "        chunk_size: 64\n", "        chunk_size: 64\n        dt_limit: [-1.0, 2.0]\n")
    e = spec_error(text)
    check(e, at(text, "[-1.0"), "nodes.ssm.dt_limit", "0 <= lo <= hi")


@pytest.mark.parametrize("old, new, field", [
    ("dim: d_model}", "dim: 0}", "nodes.embedding.dim"),
    ("out: n_classes}", "out: 0}", "nodes.head.out"),
    ("chunk: chunk,", "chunk: 0,", "nodes.encoder.chunk"),
])
def test_zero_sizes(old, new, field):
    text = edit(zoo("rir"), old, new)
    e = spec_error(text)
    check(e, val(text, new.split(",")[0].rstrip("}")), field, "must be >= 1, got 0")


# ---- limits: big but well-formed specs load; hostile ones fail cleanly --------------------------

def _dims_chain(n: int, last: str) -> str:
    return ("name: t\ndims:\n" + "".join(f"  d{i}: d{i + 1}\n" for i in range(n)) + f"  d{n}: {last}\n"
            "inputs:\n  x: {shape: [batch, seqlen, d0]}\nnodes:\n  - {name: a, op: silu, inputs: [x]}\n"
            "outputs: [a]\n")


def test_long_dims_chain_in_reverse_order():
    g = load_spec(_dims_chain(2000, "8"))  # each dim names the next: deeper than Python's recursion limit
    assert g.dims["d0"] == 8


def test_long_dims_cycle():
    e = spec_error(_dims_chain(2000, "d0"))
    check(e, (3, 7), "dims.d0", "cyclic definition: d0 -> d1 -> d2 -> d3 -> ... (1995 more) -> d1999 -> d2000 -> d0")


def test_nested_blocks():
    n = 60
    blocks = ("blocks:\n  b0:\n    inputs: [h]\n    nodes:\n      - {name: s, op: silu, inputs: [h]}\n"
              "    outputs: [s]\n")
    blocks += "".join(f"  b{i}:\n    inputs: [h]\n    nodes:\n      - {{name: r, op: repeat, block: b{i - 1}, "
                      f"times: 2, inputs: [h]}}\n    outputs: [r]\n" for i in range(1, n))
    text = TINY.replace("nodes:\n", blocks + "nodes:\n")
    text = text.replace("{name: a, op: linear, inputs: [x], out: d}", f"{{name: a, op: repeat, block: b{n - 1}, "
                        "times: 2, inputs: [x]}")
    g = load_spec(text)
    assert str(g.types["a"]) == "float32[batch, seqlen, 8]"


def test_block_cannot_repeat_itself():
    text = edit(zoo("mamba"), "      - {name: res, op: add, inputs: [h, out_proj]}\n",
                "      - {name: res, op: add, inputs: [h, out_proj]}\n"
                "      - {name: again, op: repeat, block: mamba_block, times: 1, inputs: [res]}\n")
    e = spec_error(text)
    check(e, at(text, "mamba_block, times: 1"), "nodes.again.block",
          "block 'mamba_block' is this block or one defined after it")


def test_a_key_with_a_newline_gives_a_one_line_error():
    e = spec_error(edit(TINY, "outputs: [a]\n", 'outputs: [a]\n"bad\\nkey": 1\n'))
    assert "\n" not in str(e) and "bad\\nkey" in str(e)


def test_many_nodes_rejected():
    text = edit(TINY, "  - {name: a, op: linear, inputs: [x], out: d}\n",
                "  - 0\n" * 10_001)  # the count is checked before the nodes are read
    e = spec_error(text)
    check(e, (7, 3), "nodes", "at most 10000 nodes")
