"""Policies from the model (and the protocol every policy follows), the model as a dynamics model and as a reward
function, the planner, and the safety filters."""

from .dynamics import Context, DynamicsModel, Imagined, policy_context, stack_contexts
from .foundation import FoundationPolicy, Policy
from .planner import PLANNERS, PlannerPolicy, register_planner
from .reward import LearnedReward, RewardEnsemble, RewardModel, Score
from .safety import CandidateFilter, CostPredictor, FilterConfig, ModelCostPredictor, NoFilter, SafetyFilter

__all__ = ["CandidateFilter", "Context", "CostPredictor", "DynamicsModel", "FilterConfig", "FoundationPolicy", "Imagined", "LearnedReward",
           "ModelCostPredictor", "NoFilter", "PLANNERS", "PlannerPolicy", "Policy", "RewardEnsemble", "RewardModel", "SafetyFilter", "Score", "policy_context",
           "register_planner", "stack_contexts"]
