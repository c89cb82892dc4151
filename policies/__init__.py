"""Policies from the model (and the protocol every policy follows), its dynamics view and the planner."""

from .dynamics import Context, DynamicsModel, Imagined, policy_context, stack_contexts
from .foundation import FoundationPolicy, Policy
from .planner import PLANNERS, PlannerPolicy, register_planner

__all__ = ["Context", "DynamicsModel", "FoundationPolicy", "Imagined", "PLANNERS", "PlannerPolicy", "Policy", "policy_context", "register_planner", "stack_contexts"]
