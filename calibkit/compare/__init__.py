"""Run reference and candidate models on the same images and measure how far they drift apart."""
