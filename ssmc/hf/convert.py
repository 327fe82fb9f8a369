"""transformers / mamba-ssm configs and checkpoints <-> ssmc specs and parameter names.

`spec_from_config(config)` writes the ssmc spec (YAML text) of the model a config describes:
a transformers `MambaConfig` / `Mamba2Config` (config.json with model_type mamba / mamba2) or a
mamba-ssm `MambaConfig` (config.json with d_model, n_layer, ssm_cfg).  The spec follows the zoo's
ir/mamba.yaml and ir/mamba2.yaml, adjusted so that names and shapes line up with the checkpoint:
the conv bias, the in/out projection biases, the norm epsilons, the tied or untied head, grouped
gated norms (Mamba-2 n_groups > 1), dt limits, LayerNorm (mamba-ssm rms_norm=false).

`to_ssmc_state_dict(sd, config)` renames a checkpoint's tensors to ssmc's names (the same
tensors, not copies); `from_ssmc_state_dict(sd, config, flavor)` goes back.  The only moves:
transformers / mamba-ssm keep dt_proj's bias on the projection (Mamba-1), ssmc keeps it on the
scan (`ssm.delta_bias`, fused into the kernel); Mamba-2's `mixer.norm` (the gated norm) is
ssmc's `gnorm`; A_log / D / dt_bias belong to the `ssm` node.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ssmc.errors import SsmcError
from ssmc.ir.mamba_mixers import indent, mamba1_mixer, mamba2_mixer
from ssmc.ir.mamba_mixers import yaml_float as _f

INF = float("inf")
HF_TYPES = {"mamba": "mamba1", "mamba2": "mamba2"}
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class ImportConfigError(SsmcError):
    """A config or checkpoint that ssmc cannot import."""


def _err(msg: str) -> SsmcError:
    return ImportConfigError(msg)


@dataclass
class ModelConfig:
    """The facts of a Mamba / Mamba-2 LM that the spec and the renaming need."""

    flavor: str                 # "hf" (transformers) or "mamba_ssm"
    kind: str                   # "mamba1" or "mamba2"
    vocab: int
    d_model: int
    n_layers: int
    d_inner: int
    d_state: int
    d_conv: int
    conv_bias: bool = True
    bias: bool = False          # in_proj / out_proj
    norm: str = "rmsnorm"       # block and final norms: rmsnorm or layernorm
    norm_eps: float = 1e-5
    tied: bool = True
    dt_rank: int = 0            # mamba1
    head_dim: int = 0           # mamba2
    n_heads: int = 0
    n_groups: int = 1
    chunk_size: int = 256
    dt_limit: tuple = (0.0, INF)
    gated_norm: bool = True     # mamba2: RMSNorm(y * silu(z)); False: y * silu(z)
    gated_norm_eps: float = 1e-5
    name: str = "model"
    extra: dict = field(default_factory=dict)

    @property
    def conv_dim(self) -> int:
        return self.d_inner if self.kind == "mamba1" else self.d_inner + 2 * self.n_groups * self.d_state


# ------------------------------------------------------------------------------- configs
def load_config(source) -> dict:
    """A config as a dict, from a dict, a transformers PretrainedConfig, a config.json path or a
    checkpoint directory holding config.json."""
    if isinstance(source, dict):
        return dict(source)
    if hasattr(source, "to_dict") and not isinstance(source, (str, Path)):
        return source.to_dict()
    path = Path(source)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise _err(f"{source}: no such config file (expected config.json or a directory holding one)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _err(f"{path}: cannot read the config as JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _err(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _get(cfg: dict, key: str, kind, default=None, *, where="config"):
    """cfg[key] checked to be of `kind` (int / float / bool / str); `default` when absent."""
    if key not in cfg or cfg[key] is None:
        if default is None:
            raise _err(f"{where}: missing required key '{key}'")
        return default
    v = cfg[key]
    if kind is int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _err(f"{where}.{key}: expected a positive integer, got {v!r}")
    elif kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise _err(f"{where}.{key}: expected a positive number, got {v!r}")
        v = float(v)
    elif kind is bool:
        if not isinstance(v, bool):
            raise _err(f"{where}.{key}: expected true or false, got {v!r}")
    elif kind is str:
        if not isinstance(v, str):
            raise _err(f"{where}.{key}: expected a string, got {v!r}")
    return v


def _flavor(cfg: dict) -> str:
    if cfg.get("model_type") in HF_TYPES:
        return "hf"
    if "d_model" in cfg and "n_layer" in cfg:
        return "mamba_ssm"
    mt = cfg.get("model_type")
    if mt is not None:
        raise _err(f"config: model_type {mt!r} is not a Mamba model; ssmc imports transformers "
                   "model_type 'mamba' or 'mamba2', or a mamba-ssm config (d_model, n_layer, ssm_cfg)")
    raise _err("config: neither a transformers Mamba config (model_type 'mamba' / 'mamba2') nor a "
               "mamba-ssm config (keys d_model, n_layer, vocab_size, ssm_cfg)")


def model_config(source) -> ModelConfig:
    """Read and check a config (see load_config for what `source` may be)."""
    cfg = load_config(source)
    flavor = _flavor(cfg)
    mc = _hf_config(cfg) if flavor == "hf" else _mamba_ssm_config(cfg)
    _check(mc)
    return mc


def _dt_rank(v, d_model, where) -> int:
    if v in (None, "auto"):
        return math.ceil(d_model / 16)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _err(f"{where}: expected a positive integer or 'auto', got {v!r}")
    return v


def _number(x):
    """A JSON number, including transformers' encodings of infinity ({"__float__": "Infinity"},
    "inf")."""
    if isinstance(x, dict) and set(x) == {"__float__"}:
        x = x["__float__"]
    if isinstance(x, bool):
        raise ValueError(x)
    return float(x)


def _limit(v, where) -> tuple:
    if v is None:
        return (0.0, INF)
    try:
        lo, hi = (_number(x) for x in v)
    except (TypeError, ValueError):
        raise _err(f"{where}: expected [lo, hi], got {v!r}") from None
    if math.isnan(lo) or math.isnan(hi) or not 0 <= lo <= hi:
        raise _err(f"{where}: expected 0 <= lo <= hi, got {v!r}")
    return (lo, hi)


def _hf_config(cfg: dict) -> ModelConfig:
    kind = HF_TYPES[cfg["model_type"]]
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _err(f"config.hidden_act: ssmc's Mamba conv uses silu, got {act!r}")
    d_model = _get(cfg, "hidden_size", int)
    expand = cfg.get("expand", 2)
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or expand <= 0:
        raise _err(f"config.expand: expected a positive number, got {expand!r}")
    common = dict(
        flavor="hf", kind=kind, vocab=_get(cfg, "vocab_size", int), d_model=d_model,
        n_layers=_get(cfg, "num_hidden_layers", int), d_conv=_get(cfg, "conv_kernel", int, 4),
        conv_bias=_get(cfg, "use_conv_bias", bool, True), bias=_get(cfg, "use_bias", bool, False),
        norm_eps=_get(cfg, "layer_norm_epsilon", float, 1e-5),
        name="hf_" + cfg["model_type"])
    if kind == "mamba1":
        d_inner = _get(cfg, "intermediate_size", int, int(expand * d_model))
        return ModelConfig(**common, d_inner=d_inner, d_state=_get(cfg, "state_size", int, 16),
                           dt_rank=_dt_rank(cfg.get("time_step_rank"), d_model, "config.time_step_rank"),
                           tied=_get(cfg, "tie_word_embeddings", bool, True))
    d_inner = int(expand * d_model)
    n_heads = _get(cfg, "num_heads", int, 128)
    head_dim = _get(cfg, "head_dim", int, 64)
    if n_heads * head_dim != d_inner:
        raise _err(f"config: num_heads * head_dim ({n_heads} * {head_dim}) must equal "
                   f"expand * hidden_size ({d_inner})")
    return ModelConfig(**common, d_inner=d_inner, d_state=_get(cfg, "state_size", int, 128),
                       n_heads=n_heads, head_dim=head_dim, n_groups=_get(cfg, "n_groups", int, 8),
                       chunk_size=_get(cfg, "chunk_size", int, 256),
                       dt_limit=_limit(cfg.get("time_step_limit"), "config.time_step_limit"),
                       gated_norm_eps=_get(cfg, "layer_norm_epsilon", float, 1e-5),
                       tied=_get(cfg, "tie_word_embeddings", bool, False))


def _mamba_ssm_config(cfg: dict) -> ModelConfig:
    ssm = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm, dict):
        raise _err(f"config.ssm_cfg: expected a mapping, got {ssm!r}")
    layer = ssm.get("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise _err(f"config.ssm_cfg.layer: expected Mamba1 or Mamba2, got {layer!r}")
    if cfg.get("d_intermediate", 0):
        raise _err("config.d_intermediate: models with MLP blocks between the mixers are not "
                   "supported (d_intermediate must be 0)")
    if cfg.get("attn_layer_idx"):
        raise _err("config.attn_layer_idx: hybrid models with attention layers are not supported")
    d_model = _get(cfg, "d_model", int)
    vocab = _get(cfg, "vocab_size", int)
    pad = cfg.get("pad_vocab_size_multiple", 8) or 1
    if vocab % pad:
        vocab += pad - vocab % pad
    rms = _get(cfg, "rms_norm", bool, True)
    where = "config.ssm_cfg"
    expand = ssm.get("expand", 2)
    d_inner = int(expand * d_model)
    common = dict(flavor="mamba_ssm", vocab=vocab, d_model=d_model,
                  n_layers=_get(cfg, "n_layer", int), d_conv=_get(ssm, "d_conv", int, 4, where=where),
                  conv_bias=_get(ssm, "conv_bias", bool, True, where=where),
                  bias=_get(ssm, "bias", bool, False, where=where), d_inner=d_inner,
                  norm="rmsnorm" if rms else "layernorm",
                  norm_eps=_get(cfg, "norm_epsilon", float, 1e-5),
                  tied=_get(cfg, "tie_embeddings", bool, True))
    if layer == "Mamba1":
        return ModelConfig(**common, kind="mamba1", name="mamba_ssm_mamba",
                           d_state=_get(ssm, "d_state", int, 16, where=where),
                           dt_rank=_dt_rank(ssm.get("dt_rank"), d_model, f"{where}.dt_rank"))
    if ssm.get("D_has_hdim"):
        raise _err(f"{where}.D_has_hdim: a D per (head, channel) is not supported (ssmc's SSD "
                   "node has one D per head)")
    if ssm.get("d_ssm") not in (None, d_inner):
        raise _err(f"{where}.d_ssm: only d_ssm = expand * d_model ({d_inner}) is supported")
    if ssm.get("norm_before_gate", False):
        raise _err(f"{where}.norm_before_gate: only false (mamba-ssm's default) is supported")
    head_dim = _get(ssm, "headdim", int, 64, where=where)
    if d_inner % head_dim:
        raise _err(f"{where}.headdim ({head_dim}) must divide expand * d_model ({d_inner})")
    return ModelConfig(**common, kind="mamba2", name="mamba_ssm_mamba2",
                       d_state=_get(ssm, "d_state", int, 128, where=where), head_dim=head_dim,
                       n_heads=d_inner // head_dim, n_groups=_get(ssm, "ngroups", int, 1, where=where),
                       chunk_size=_get(ssm, "chunk_size", int, 256, where=where),
                       dt_limit=_limit(ssm.get("dt_limit"), f"{where}.dt_limit"),
                       gated_norm=_get(ssm, "rmsnorm", bool, True, where=where), gated_norm_eps=1e-5)


def _check(mc: ModelConfig) -> None:
    if mc.kind == "mamba2":
        if mc.n_heads % mc.n_groups:
            raise _err(f"config: n_groups ({mc.n_groups}) must divide the number of heads ({mc.n_heads})")
        if mc.d_inner % mc.n_groups:
            raise _err(f"config: n_groups ({mc.n_groups}) must divide the inner width ({mc.d_inner})")


# --------------------------------------------------------------------------------- specs
def spec_from_config(source) -> str:
    """The ssmc spec (YAML text) of the model `source` describes (see load_config)."""
    mc = source if isinstance(source, ModelConfig) else model_config(source)
    return _mamba1_spec(mc) if mc.kind == "mamba1" else _mamba2_spec(mc)


def _head(mc: ModelConfig) -> str:
    if mc.tied:
        return "  - {name: lm_head, op: linear, inputs: [norm_f], out: vocab, bias: false, tied: embedding}\n"
    return "  - {name: lm_head, op: linear, inputs: [norm_f], out: vocab, bias: false}\n"


def _norm(mc: ModelConfig, name: str, src: str) -> str:
    return f"{{name: {name}, op: {mc.norm}, inputs: [{src}], eps: {_f(mc.norm_eps)}}}"


def _mamba1_spec(mc: ModelConfig) -> str:
    return f"""\
# Generated by `ssmc import hf` from a {'transformers' if mc.flavor == 'hf' else 'mamba-ssm'} Mamba config.
name: {mc.name}
description: Mamba-1 LM imported from {'transformers' if mc.flavor == 'hf' else 'mamba-ssm'} ({mc.n_layers} layers, d_model {mc.d_model})
dims:
  vocab: {mc.vocab}
  d_model: {mc.d_model}
  n_layers: {mc.n_layers}
  d_inner: {mc.d_inner}
  d_state: {mc.d_state}
  d_conv: {mc.d_conv}
  dt_rank: {mc.dt_rank}
inputs:
  tokens: {{shape: [batch, seqlen], dtype: int64}}
blocks:
  mamba_block:
    inputs: [h]
    nodes:
      - {_norm(mc, 'norm', 'h')}
{indent(mamba1_mixer("norm", bias=mc.bias, conv_bias=mc.conv_bias), 6)}      - {{name: res, op: add, inputs: [h, out_proj]}}
    outputs: [res]
nodes:
  - {{name: embedding, op: embedding, inputs: [tokens], num: vocab, dim: d_model}}
  - {{name: layers, op: repeat, block: mamba_block, times: n_layers, inputs: [embedding]}}
  - {_norm(mc, 'norm_f', 'layers')}
{_head(mc)}outputs: [lm_head]
"""


def _mamba2_spec(mc: ModelConfig) -> str:
    groups = ", groups: n_groups" if mc.n_groups > 1 else ""
    mixer = mamba2_mixer("norm", bias=mc.bias, conv_bias=mc.conv_bias, chunk_size=mc.chunk_size,
                         dt_limit=mc.dt_limit, norm="gnorm" if mc.gated_norm else None,
                         norm_fields=f", eps: {_f(mc.gated_norm_eps)}{groups}")
    src = "transformers" if mc.flavor == "hf" else "mamba-ssm"
    return f"""\
# Generated by `ssmc import hf` from a {src} Mamba-2 config.
name: {mc.name}
description: Mamba-2 LM imported from {src} ({mc.n_layers} layers, d_model {mc.d_model})
dims:
  vocab: {mc.vocab}
  d_model: {mc.d_model}
  n_layers: {mc.n_layers}
  d_inner: {mc.d_inner}
  head_dim: {mc.head_dim}
  n_heads: d_inner / head_dim
  n_groups: {mc.n_groups}
  d_state: {mc.d_state}
  d_conv: {mc.d_conv}
  conv_dim: d_inner + 2*n_groups*d_state
inputs:
  tokens: {{shape: [batch, seqlen], dtype: int64}}
blocks:
  mamba2_block:
    inputs: [h]
    nodes:
      - {_norm(mc, 'norm', 'h')}
{indent(mixer, 6)}      - {{name: res, op: add, inputs: [h, out_proj]}}
    outputs: [res]
nodes:
  - {{name: embedding, op: embedding, inputs: [tokens], num: vocab, dim: d_model}}
  - {{name: layers, op: repeat, block: mamba2_block, times: n_layers, inputs: [embedding]}}
  - {_norm(mc, 'norm_f', 'layers')}
{_head(mc)}outputs: [lm_head]
"""


# --------------------------------------------------------------------------- state dicts
def _layer_map(mc: ModelConfig) -> list[tuple[str, str]]:
    """(checkpoint name, ssmc name) inside layer i: 'mixer.A_log' -> 'ssm.A_log', ..."""
    pairs = [("norm.weight", "norm.weight")]
    if mc.norm == "layernorm":
        pairs.append(("norm.bias", "norm.bias"))
    proj = ["in_proj", "out_proj"]
    if mc.kind == "mamba1":
        proj.append("x_proj")
    for p in proj:
        pairs.append((f"mixer.{p}.weight", f"{p}.weight"))
        if mc.bias and p != "x_proj":
            pairs.append((f"mixer.{p}.bias", f"{p}.bias"))
    pairs.append(("mixer.conv1d.weight", "conv1d.weight"))
    if mc.conv_bias:
        pairs.append(("mixer.conv1d.bias", "conv1d.bias"))
    pairs += [("mixer.A_log", "ssm.A_log"), ("mixer.D", "ssm.D")]
    if mc.kind == "mamba1":
        pairs += [("mixer.dt_proj.weight", "dt_proj.weight"),
                  ("mixer.dt_proj.bias", "ssm.delta_bias")]
    else:
        pairs.append(("mixer.dt_bias", "ssm.dt_bias"))
        if mc.gated_norm:
            pairs.append(("mixer.norm.weight", "gnorm.weight"))
    return pairs


def _top_map(mc: ModelConfig) -> list[tuple[str, str]]:
    emb = "embeddings" if mc.flavor == "hf" else "embedding"
    pairs = [(f"backbone.{emb}.weight", "embedding.weight"), ("backbone.norm_f.weight", "norm_f.weight")]
    if mc.norm == "layernorm":
        pairs.append(("backbone.norm_f.bias", "norm_f.bias"))
    pairs.append(("lm_head.weight", "lm_head.weight"))
    return pairs


def name_map(config, flavor: str | None = None) -> dict:
    """{checkpoint name: ssmc name} for a config (flavor: 'hf' or 'mamba_ssm'; default the
    config's own)."""
    mc = config if isinstance(config, ModelConfig) else model_config(config)
    if flavor is not None:
        if flavor not in ("hf", "mamba_ssm"):
            raise _err(f"flavor must be 'hf' or 'mamba_ssm', got {flavor!r}")
        mc = ModelConfig(**{**mc.__dict__, "flavor": flavor})
    out = dict(_top_map(mc))
    for i in range(mc.n_layers):
        for src, dst in _layer_map(mc):
            out[f"backbone.layers.{i}.{src}"] = f"layers.{i}.{dst}"
    return out


def _normalise_keys(sd: dict) -> dict:
    """Accept a base model's state dict (no 'backbone.' prefix, no lm_head) and mamba-ssm's
    singular 'embedding'."""
    if any(k.startswith("backbone.") for k in sd):
        return dict(sd)
    return {f"backbone.{k}": v for k, v in sd.items()}


def to_ssmc_state_dict(state_dict: dict, config, *, strict: bool = True) -> dict:
    """A transformers / mamba-ssm state dict -> ssmc's parameter names (same tensor objects).
    A missing lm_head.weight of a tied model is the embedding (tied checkpoints often omit it).
    strict: unknown or missing tensors are errors."""
    mc = config if isinstance(config, ModelConfig) else model_config(config)
    sd = _normalise_keys(state_dict)
    # mamba-ssm calls the embedding 'embedding', transformers 'embeddings' (and loads either)
    if mc.flavor == "hf" and "backbone.embedding.weight" in sd and "backbone.embeddings.weight" not in sd:
        sd["backbone.embeddings.weight"] = sd.pop("backbone.embedding.weight")
    if mc.flavor == "mamba_ssm" and "backbone.embeddings.weight" in sd and "backbone.embedding.weight" not in sd:
        sd["backbone.embedding.weight"] = sd.pop("backbone.embeddings.weight")
    names = name_map(mc)
    emb = next(k for k, v in names.items() if v == "embedding.weight")
    if "lm_head.weight" not in sd and mc.tied and emb in sd:
        sd["lm_head.weight"] = sd[emb]
    missing = [k for k in names if k not in sd]
    unknown = [k for k in sd if k not in names]
    if strict and (missing or unknown):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) ({', '.join(missing[:4])}"
                         f"{', ...' if len(missing) > 4 else ''})")
        if unknown:
            parts.append(f"{len(unknown)} unexpected tensor(s) ({', '.join(unknown[:4])}"
                         f"{', ...' if len(unknown) > 4 else ''})")
        raise _err("state dict does not match the config: " + "; ".join(parts))
    out = {names[k]: v for k, v in sd.items() if k in names}
    _check_shapes(out, mc)
    return out


def from_ssmc_state_dict(state_dict: dict, config, flavor: str | None = None) -> dict:
    """ssmc's parameter names -> a transformers (flavor 'hf') or mamba-ssm ('mamba_ssm') state
    dict (same tensor objects); flavor defaults to the config's own."""
    mc = config if isinstance(config, ModelConfig) else model_config(config)
    inverse = {v: k for k, v in name_map(mc, flavor).items()}
    missing = [k for k in inverse if k not in state_dict]
    if missing:
        raise _err(f"ssmc state dict lacks {len(missing)} tensor(s) of this config "
                   f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
    unknown = [k for k in state_dict if k not in inverse]
    if unknown:
        raise _err(f"ssmc state dict has {len(unknown)} tensor(s) this config does not know "
                   f"({', '.join(unknown[:4])}{', ...' if len(unknown) > 4 else ''})")
    return {inverse[k]: v for k, v in state_dict.items()}


def _check_shapes(sd: dict, mc: ModelConfig) -> None:
    want = {"embedding.weight": (mc.vocab, mc.d_model), "lm_head.weight": (mc.vocab, mc.d_model),
            "norm_f.weight": (mc.d_model,)}
    for i in range(mc.n_layers):
        p = f"layers.{i}."
        want[p + "conv1d.weight"] = (mc.conv_dim, 1, mc.d_conv)
        if mc.kind == "mamba1":
            want[p + "in_proj.weight"] = (2 * mc.d_inner, mc.d_model)
            want[p + "ssm.A_log"] = (mc.d_inner, mc.d_state)
            want[p + "x_proj.weight"] = (mc.dt_rank + 2 * mc.d_state, mc.d_inner)
            want[p + "dt_proj.weight"] = (mc.d_inner, mc.dt_rank)
        else:
            want[p + "in_proj.weight"] = (mc.d_inner + mc.conv_dim + mc.n_heads, mc.d_model)
            want[p + "ssm.A_log"] = (mc.n_heads,)
        want[p + "out_proj.weight"] = (mc.d_model, mc.d_inner)
    for k, shape in want.items():
        if k in sd and tuple(sd[k].shape) != shape:
            raise _err(f"{k}: shape {tuple(sd[k].shape)} does not match the config, which implies {shape}")


# ----------------------------------------------------------------------------- checkpoints
def find_weights(directory) -> Path | None:
    """The checkpoint file of a model directory (safetensors first), or None."""
    d = Path(directory)
    for name in WEIGHT_FILES:
        if (d / name).is_file():
            return d / name
    return None


def load_state_dict(path) -> dict:
    """A checkpoint file: .safetensors, a torch pickle (.bin / .pt / .pth), or a sharded
    checkpoint's .index.json."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise _err(f"{path}: no such checkpoint file")
    if p.name.endswith(".index.json"):
        try:
            index = json.loads(p.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _err(f"{p}: not a sharded-checkpoint index ({e})") from None
        out = {}
        for shard in sorted(set(index.values())):
            out.update(load_state_dict(p.parent / shard))
        return out
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file
        raise _err(f"{p}: cannot read the checkpoint: {e}") from None


def save_state_dict(sd: dict, path) -> None:
    """.safetensors when the name says so, else torch.save.  Tied tensors are saved once per
    name (safetensors refuses shared storage, so those are cloned)."""
    import torch

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        seen, out = set(), {}
        for k, v in sd.items():
            v = v.detach()
            key = (v.data_ptr(), tuple(v.shape))
            out[k] = v.clone().contiguous() if key in seen else v.contiguous()
            seen.add(key)
        save_file(out, str(p))
    else:
        torch.save({k: v.detach() for k, v in sd.items()}, str(p))
