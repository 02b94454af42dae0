"""Augmentation and the geometric transforms shared by training, `check_scales` and decoding."""
