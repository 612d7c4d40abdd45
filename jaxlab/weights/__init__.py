"""Weight-space tools: permutation alignment, mode connectivity, merging, pruning, loss
landscapes."""
