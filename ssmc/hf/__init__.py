"""Real models in: transformers / mamba-ssm Mamba and Mamba-2 models on ssmc.

* `accelerate(model)` / `restore(model)`: run a transformers `MambaForCausalLM` /
  `Mamba2ForCausalLM` (or any module holding their mixers) on ssmc's kernels in place, including
  `generate()` (prefill on the sequence kernels, decode on the one-token step kernels).
* `spec_from_config(config)`, `to_ssmc_state_dict(sd, config)`, `from_ssmc_state_dict(sd,
  config)`: the equivalent ssmc spec of a transformers config.json (or a mamba-ssm config) and
  the state-dict renaming both ways (`ssmc import hf` on the command line).

transformers is an optional dependency (`pip install ssmc[hf]`); nothing here imports it until a
function needs it.
"""

from ssmc.hf.accelerated import (accelerate, accelerated_mixers, call_counts, head_calls,
                                  restore)
from ssmc.hf.convert import (
    from_ssmc_state_dict,
    load_config,
    model_config,
    spec_from_config,
    to_ssmc_state_dict,
)

__all__ = ["accelerate", "restore", "accelerated_mixers", "call_counts", "head_calls",
           "spec_from_config", "to_ssmc_state_dict", "from_ssmc_state_dict", "load_config",
           "model_config"]
