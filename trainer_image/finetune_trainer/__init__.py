"""What runs inside every training pod: config → data → model → loop → checkpoints → metrics."""
