"""embodied: robot foundation models in simulation.

The top-level package stays light: importing it (and running ``embodied --help``) loads no
torch, MuJoCo or Zarr. Sub-packages: :mod:`embodied.envs` (MuJoCo tabletop suite),
:mod:`embodied.datasets` (episode store), :mod:`embodied.policies` (policies and filters).
"""

__version__ = "0.1.0"
