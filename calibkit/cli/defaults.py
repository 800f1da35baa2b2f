"""Defaults the command line shares between its parser and its commands."""

INFERENCE_BATCH_SIZE = 4


# The demo ranks layer sensitivity and fits this budget (top-1 points), to show the mixed-precision answer.
DEMO_BUDGET = 0.5
