"""Stage 6: how many channels each group keeps: uniform ratios fitted to a budget, or PRO."""
