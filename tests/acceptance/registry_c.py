"""Worker c of the type-registry tests: activity act_c only."""

from registry_flows import act_c

__all__ = ["act_c"]
