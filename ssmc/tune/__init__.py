"""Autotuning: search spaces (space), pruning (prune), timing (measure), the cost model for
absent targets (model), Optuna studies (study), records the compiler reads (records) and the
`ssmc tune` command (cli).  Importing this package is cheap: optuna, TVM and Triton are imported
by the modules that need them."""

from ssmc.tune.records import Records, RecordKey, default_records

__all__ = ["RecordKey", "Records", "default_records"]
