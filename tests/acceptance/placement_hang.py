"""``cairn worker -m placement_flows -m placement_hang``: run B's code hangs after its signal
(placement_flows.MODE)."""

import placement_flows

placement_flows.MODE = "hang"
