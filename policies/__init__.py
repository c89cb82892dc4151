"""Policies from the model (and the protocol every policy follows)."""

from .foundation import FoundationPolicy, Policy

__all__ = ["FoundationPolicy", "Policy"]
