"""Triton backend: fused forward (forward.py), fused backward (backward.py), tile plans (plan.py), launchers
(launch.py). Nothing here knows about modules; bsconv_fused/ops.py is the only caller."""
