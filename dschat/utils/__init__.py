"""Library parts of dschat: data, model, LoRA, DeepSpeed config, training loop."""
