"""Training targets: Gaussian heatmaps, tag-loss joint indices, ignore masks."""
