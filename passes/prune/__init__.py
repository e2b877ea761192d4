"""Pruning: structured channel pruning, unstructured magnitude pruning and N:M (2:4) sparsity.

One module per job: :mod:`.probe` (tensor shapes from one run), :mod:`.atoms` and :mod:`.analysis`
+ :mod:`.rules` (channel group analysis), :mod:`.importance` (criteria), :mod:`.channel_rewrite`,
:mod:`.channel` (``prune_channels``), :mod:`.unstructured` (magnitude), :mod:`.nm` (N:M and its
checker), :mod:`.layers` (weighted layers, first/last, skip lists) and :mod:`.prune_pass`, the pass.
"""

from graphopt.passes.prune.prune_pass import PruneOptions, PrunePass

__all__ = ["PruneOptions", "PrunePass"]
