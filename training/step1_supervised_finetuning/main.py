#!/usr/bin/env python
"""Step 1 of DeepSpeed-Chat: supervised fine-tuning of a causal LM on prompt + answer text.

Launch like upstream (one process per device):
    deepspeed main.py --model_name_or_path facebook/opt-1.3b --data_path Dahoas/rm-static --zero_stage 2 ...
or as one process without the launcher (a laptop, a CPU box):
    python main.py --model_name_or_path ./my-model --data_path data.jsonl --data_split 10,0,0 --dtype fp32
"""

from __future__ import annotations

import logging
import sys

from deepspeed.accelerator import get_accelerator
from transformers import AutoModelForCausalLM

from dschat.errors import run_cli
from dschat.utils import checkpoint, dist, optim, save, train
from dschat.utils.data.data_utils import create_phase1_datasets
from dschat.utils.loaders import create_dataloaders
from dschat.utils.log import setup_logging
from dschat.utils.model.model_utils import (
    apply_liger_kernel,
    causal_lm_model_to_fp32_loss,
    create_hf_model,
    load_hf_tokenizer,
)
from dschat.utils.module.lora import apply_lora
from dschat.utils.plan import log_plan
from dschat.utils.seed import set_random_seed
from dschat.utils.train_args import parse_args, run_info, train_ds_config, validate_args

logger = logging.getLogger("dschat.step1")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accel = get_accelerator()
    validate_args(args, accel.device_name(), accel.is_fp16_supported(), accel.is_bf16_supported())
    resume_dir = checkpoint.resolve_resume_path(args)
    device = dist.init_distributed(args.local_rank)
    setup_logging()
    ds_config = train_ds_config(args, dist.get_world_size())
    set_random_seed(args.seed)
    dist.barrier()

    eot = args.eot_token if args.add_eot_token else None
    tokenizer = load_hf_tokenizer(args.model_name_or_path, True, eot, args.trust_remote_code)
    if args.dry_run:
        log_plan(args, tokenizer, dist.get_world_size())
        return
    model = create_hf_model(
        AutoModelForCausalLM, args.model_name_or_path, tokenizer, ds_config, dropout=args.dropout,
        trust_remote_code=args.trust_remote_code, attn_implementation=args.attn_implementation,
    )  # fmt: skip
    if args.use_liger_kernel:
        apply_liger_kernel(model)
    if args.compute_fp32_loss:
        causal_lm_model_to_fp32_loss(model)
    apply_lora(model, args)

    train_dataset, eval_dataset = create_phase1_datasets(args, tokenizer)
    train_loader, eval_loader = create_dataloaders(train_dataset, eval_dataset, tokenizer, model, args)

    groups = optim.get_optimizer_grouped_parameters(model, args.weight_decay, args.lora_learning_rate)
    optimizer = optim.create_optimizer(groups, args.learning_rate, args.offload)
    updates = optim.num_update_steps(
        len(train_loader), args.gradient_accumulation_steps, args.num_train_epochs
    )
    scheduler = optim.create_lr_scheduler(optimizer, args.lr_scheduler_type, args.num_warmup_steps, updates)
    engine = train.create_engine(model, optimizer, scheduler, ds_config, args)
    state = checkpoint.start_state(engine, resume_dir, args)

    outcome = train.train(engine, train_loader, eval_loader, args, model.config, device, state, resume_dir)
    if outcome == "interrupted":
        logger.info("stopped cleanly; continue with the same command plus --resume")
        return
    if args.output_dir:
        logger.info("saving the final model ...")
        save.save_final_model(engine, tokenizer, args, run_info(args))


if __name__ == "__main__":
    sys.exit(run_cli(main))
