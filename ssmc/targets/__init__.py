"""Target descriptors (targets/*.yaml) and host detection."""

from ssmc.targets.descriptor import BACKENDS, Target, list_targets, load_target
from ssmc.targets.host import detect_host

__all__ = ["BACKENDS", "Target", "detect_host", "list_targets", "load_target"]
