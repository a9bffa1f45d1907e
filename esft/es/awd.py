"""Temporary alias while other modules move to esft.core.awd (removed by the layout refactor)."""
from esft.core.awd import ANCHORS, AWD_KINDS, apply_awd, validate_awd  # noqa: F401
