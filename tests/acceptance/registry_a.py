"""Worker a of the type-registry tests: workflows split and needs_c, activity act_a."""

from registry_flows import act_a, needs_c, split

__all__ = ["act_a", "needs_c", "split"]
