"""Stage 2: what can be pruned: channel groups, the consumers that read them, and costs."""
