"""Policies from the model (and the protocol every policy follows), and the safety filters."""

from .foundation import FoundationPolicy, Policy
from .safety import CandidateFilter, CostPredictor, FilterConfig, ModelCostPredictor, NoFilter, SafetyFilter

__all__ = ["CandidateFilter", "CostPredictor", "FilterConfig", "FoundationPolicy", "ModelCostPredictor", "NoFilter", "Policy", "SafetyFilter"]
