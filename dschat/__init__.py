"""dschat: DeepSpeed-Chat step 1 (supervised fine-tuning), re-implemented."""

import logging as _logging

__version__ = "0.1.0"


class _NoCpuFallbackWarning(_logging.Filter):
    """Drop DeepSpeed's "Setting accelerator to CPU" warning, printed by every command on a CPU machine.

    On a GPU machine where DeepSpeed fails to find the GPU the run still says so: fp16 (upstream's default) is
    refused on CPU with a one-line error naming the accelerator.
    """

    def filter(self, record: _logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


# DeepSpeed's logger is created on its first import; a filter on the named logger outlives that set-up.
_logging.getLogger("DeepSpeed").addFilter(_NoCpuFallbackWarning())
