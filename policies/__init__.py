"""Policies from the model (and the protocol every policy follows), and the model as a reward function."""

from .foundation import FoundationPolicy, Policy
from .reward import LearnedReward, RewardModel, Score

__all__ = ["FoundationPolicy", "LearnedReward", "Policy", "RewardModel", "Score"]
