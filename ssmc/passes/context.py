"""What every pass may read: the target descriptor, the shape bucket, the tuned records."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PassContext:
    target: object  # ssmc.targets.Target
    bindings: dict = field(default_factory=lambda: {"batch": 2, "seqlen": 1024})
    records: object = None  # ssmc.tune.records.Records or None
    dtype: str = "float32"

    @property
    def backend(self) -> str:
        return self.target.backend
