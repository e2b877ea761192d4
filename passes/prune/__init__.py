"""Pruning: structured channel pruning, unstructured magnitude pruning and N:M (2:4) sparsity.

One module per job: :mod:`.probe` (tensor shapes from probe runs), :mod:`.atoms`, :mod:`.analysis`,
:mod:`.rules` and :mod:`.shape_values` (channel group analysis), :mod:`.importance` (criteria), :mod:`.channel_rewrite`,
:mod:`.channel` (``prune_channels``), :mod:`.unstructured` (magnitude), :mod:`.nm` (N:M and its
checker), :mod:`.layers` (weighted layers, first/last, skip lists) and :mod:`.prune_pass`, the pass.
"""

from graphopt.passes.prune.prune_pass import PruneOptions, PrunePass

__all__ = ["PruneOptions", "PrunePass"]
