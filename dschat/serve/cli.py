"""Serve a trained model over OpenAI's API, with a chat page at ``/``.

    python -m dschat.serve --path ./output                   # http://127.0.0.1:8000/  (chat page)
    python -m dschat.serve --path ./output/lora_adapter --api_key secret --port 8080

Prompts are rendered in the format the model was trained with (dschat_run.json), as the chatbot renders them.
Needs the serve extra: pip install -e '.[serve]'.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
from pathlib import Path

from dschat import run_dir
from dschat.errors import DschatError
from dschat.utils.data import prompts

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MAX_PORT = 65535


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The server's flags (long only for their help texts)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--path", required=True, help="Output dir of a training run, or its lora_adapter/ dir."
    )
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host", default=LOOPBACK, help="Address to bind (default loopback only; 0.0.0.0 = all)."
    )
    net.add_argument("--port", type=int, default=8000, help="TCP port.")
    net.add_argument(
        "--api_key",
        default=os.environ.get("DSCHAT_API_KEY"),
        help="Require 'Authorization: Bearer <key>' on /v1 routes (default: $DSCHAT_API_KEY, else none).",
    )
    net.add_argument(
        "--served_model_name", default=None, help="Model id in the API (default: the dir's name)."
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--prompt_template",
        choices=prompts.INFERENCE_PROMPT_TEMPLATES,
        default=None,
        help="Default: the format the model was trained with (dschat_run.json; upstream if absent).",
    )
    model.add_argument(
        "--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1..."
    )
    model.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, fp16 on GPU), fp32, bf16, fp16.")
    model.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default).")
    model.add_argument(
        "--trust_remote_code", action="store_true", help="Allow model code from the model dir."
    )
    load = parser.add_argument_group("batching and caps")
    load.add_argument("--max_batch_size", type=int, default=16, help="Most requests generated together.")
    load.add_argument(
        "--max_queue", type=int, default=64, help="Most requests held (queued + running); then 429."
    )
    load.add_argument(
        "--batch_wait_ms",
        type=float,
        default=100.0,
        help="How long a new batch waits for more requests (ms): long enough for the clients of the batch that "
        "just ended to send their next request, so they join instead of forming a second, alternating batch.",
    )
    load.add_argument("--max_messages", type=int, default=64, help="Most messages per chat request.")
    load.add_argument(
        "--max_characters", type=int, default=32_000, help="Most content characters per request."
    )
    load.add_argument(
        "--default_max_tokens", type=int, default=256, help="Answer tokens when a request sets no max_tokens."
    )
    return parser.parse_args(argv)


def validate_args(args: argparse.Namespace) -> None:
    """Every flag problem at once, as one DschatError."""
    problems = []
    if not Path(args.path).is_dir():
        problems.append(f"--path {args.path!r} is not a directory; pass the output dir of a training run")
    if not 0 <= args.port <= MAX_PORT:
        problems.append(f"--port {args.port} must be in 0..{MAX_PORT}")
    for name in ("max_batch_size", "max_queue", "max_messages", "max_characters", "default_max_tokens"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} {getattr(args, name)} must be at least 1")
    if args.batch_wait_ms < 0 or args.threads < 0:
        problems.append("--batch_wait_ms and --threads must be >= 0")
    if problems:
        raise DschatError("; ".join(problems))


def is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return host == "localhost"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    validate_args(args)
    try:
        import uvicorn
    except ImportError:
        raise DschatError("the server needs FastAPI and uvicorn: pip install -e '.[serve]'") from None
    import torch

    from dschat.inference import generation, loading
    from dschat.serve.app import Served, create_app
    from dschat.serve.engine import Engine
    from dschat.serve.protocol import Limits
    from dschat.utils.log import setup_logging

    setup_logging(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not is_loopback(args.host) and not args.api_key:
        logger.warning(
            "binding %s without --api_key: anyone who can reach this port can use the model", args.host
        )
    template = run_dir.trained_prompt_template(args.path, args.prompt_template)
    model, tokenizer = loading.load_model(args.path, args.device, args.dtype, args.trust_remote_code)
    served = Served(
        model_id=args.served_model_name or Path(args.path).resolve().name,
        tokenizer=tokenizer,
        prompt_template=template,
        max_context=loading.max_context(model, tokenizer),
    )
    stop_ids = generation.stop_token_ids(model, tokenizer, template)
    engine = Engine(
        model, tokenizer, stop_ids, args.max_batch_size, args.max_queue, args.batch_wait_ms / 1000
    )
    limits = Limits(args.max_messages, args.max_characters, args.default_max_tokens)
    app = create_app(served, engine, limits, args.api_key)
    logger.info(
        "serving %s prompt_template=%s threads=%d on http://%s:%d/",
        served.model_id,
        template,
        torch.get_num_threads(),
        args.host,
        args.port,
    )
    engine.start()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        engine.stop()
