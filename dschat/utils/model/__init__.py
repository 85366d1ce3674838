"""Tokenizer and model loading."""
