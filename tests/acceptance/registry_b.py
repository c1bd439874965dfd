"""Worker b of the type-registry tests: workflow other_kind, activity act_b."""

from registry_flows import act_b, other_kind

__all__ = ["act_b", "other_kind"]
