"""Training targets: Gaussian heatmaps, tag-loss joint indices, ignore masks (assembled per
sample by `pose.codec.Codec.encode`)."""
