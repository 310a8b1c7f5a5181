"""Verification policies: how many drafts each request drafts and verifies.

Each module below registers its policies when imported; a new policy is a
new module plus one import line here.
"""
from scheduler.policies.base import PolicyContext, PolicyStats, VerifyPolicy
from scheduler.policies.registry import OFF, POLICIES, build_policy, policy_names, policy_spec
from scheduler.policies import adaptive, static  # noqa: F401  (registers)
from scheduler.policies.adaptive import AdaptivePolicy
from scheduler.policies.static import StaticPolicy, VerifyAllPolicy

__all__ = ["OFF", "POLICIES", "AdaptivePolicy", "PolicyContext", "PolicyStats", "StaticPolicy",
           "VerifyAllPolicy", "VerifyPolicy", "build_policy", "policy_names", "policy_spec"]
