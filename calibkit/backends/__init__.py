"""Execution backends behind one small interface: ``load(model_path, precision) -> Session``."""

from calibkit.backends.base import Session, available_backends, load, require

__all__ = ["Session", "available_backends", "load", "require"]
