"""Self-contained HTML report (inline CSS and SVG) with a JSON of every number beside it."""
