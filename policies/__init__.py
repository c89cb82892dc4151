"""Policies from the model (and the protocol every policy follows), the model as a reward function, and the safety filters."""

from .foundation import FoundationPolicy, Policy
from .reward import LearnedReward, RewardModel, Score
from .safety import CandidateFilter, CostPredictor, FilterConfig, ModelCostPredictor, NoFilter, SafetyFilter

__all__ = ["CandidateFilter", "CostPredictor", "FilterConfig", "FoundationPolicy", "LearnedReward", "ModelCostPredictor", "NoFilter",
           "Policy", "RewardModel", "SafetyFilter", "Score"]
