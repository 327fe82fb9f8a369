"""Every op kind of the IR, by its spec name."""

from ssmc.ir.ops.base import Op, ShapeError  # noqa: F401
from ssmc.ir.ops import glue, ssm  # noqa: F401

OPS: dict = {}
for _mod in (glue, ssm):
    for _cls in vars(_mod).values():
        if isinstance(_cls, type) and issubclass(_cls, Op) and _cls.OP:
            OPS[_cls.OP] = _cls

SSM_OPS = tuple(k for k, c in OPS.items() if c.ALGORITHMS)
