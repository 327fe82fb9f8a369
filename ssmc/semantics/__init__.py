"""The eager PyTorch meaning of every op: the oracle every kernel is tested against."""
