"""Data pipeline: raw dataset adapters, prompt format, splitting, blending, caching, tokenising."""
