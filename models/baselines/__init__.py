"""Baseline policies, measured beside the learned filters under the same interface: no
filtering, fixed stride (more to come: frame difference, motion). None of them needs TensorFlow."""
