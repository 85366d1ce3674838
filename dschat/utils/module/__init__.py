"""Model modules (LoRA)."""
