"""Inference: load a trained model, chat with it, generate in batches and measure it."""
