"""Where the data directories (ir/, schedules/, targets/) live: the source checkout when running
from one, else the copies shipped inside the wheel under ssmc/_data/."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    shipped = _PKG / "_data" / name
    if shipped.is_dir():
        return shipped
    return _PKG.parent / name


def zoo_dir() -> Path:
    return data_dir("ir")


def targets_dir() -> Path:
    return data_dir("targets")


def schedules_dir() -> Path:
    return data_dir("schedules")
