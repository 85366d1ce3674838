"""dschat: DeepSpeed-Chat step 1 (supervised fine-tuning), re-implemented."""

__version__ = "0.1.0"
