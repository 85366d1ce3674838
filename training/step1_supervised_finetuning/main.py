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

from transformers import AutoModelForCausalLM

from dschat import config, run_dir
from dschat.errors import run_cli
from dschat.flags import parse_train_args
from dschat.utils import checkpoint, dist, optim, ownership, save, train
from dschat.utils.data.data_utils import prepare_datasets
from dschat.utils.ds_utils import train_ds_config
from dschat.utils.loaders import batch_shape, create_dataloaders
from dschat.utils.log import setup_logging
from dschat.utils.model.model_utils import build_model, load_hf_tokenizer
from dschat.utils.module.lora import apply_lora
from dschat.utils.plan import log_plan
from dschat.utils.seed import set_random_seed
from dschat.validation import validate_train_args

logger = logging.getLogger("dschat.step1")


def main(argv: list[str] | None = None) -> None:
    args = parse_train_args(argv)
    accel = dist.accelerator()
    validate_train_args(args, accel.device_name(), accel.is_fp16_supported(), accel.is_bf16_supported())
    cfg = config.from_args(args)
    device = dist.init_distributed(cfg.engine.dist_timeout)
    setup_logging()
    with dist.collective_faults(cfg.engine.dist_timeout):
        train_and_save(cfg, device)


def train_and_save(cfg: config.TrainConfig, device) -> None:
    """Every rank: resume point, data, engine, the loop, the final save."""
    resume_dir = checkpoint.resolve_resume_path(cfg.output)
    ds_config = train_ds_config(cfg.engine, cfg.batch, dist.get_world_size())
    set_random_seed(cfg.data.seed)
    dist.barrier()

    tokenizer = load_hf_tokenizer(
        cfg.model.model_name_or_path, True, cfg.model.added_special_token, cfg.model.trust_remote_code
    )
    if cfg.output.dry_run:
        log_plan(cfg, tokenizer, dist.get_world_size())
        return
    lock = ownership.claim_output_dir(
        cfg.output.output_dir, cfg.output.overwrite_output_dir, resume_dir is not None
    )
    model = build_model(AutoModelForCausalLM, cfg.model, tokenizer, ds_config)
    apply_lora(model, cfg.lora)
    padding = batch_shape(model, cfg)

    train_dataset, eval_dataset = prepare_datasets(cfg.data, tokenizer)
    train_loader, eval_loader = create_dataloaders(
        train_dataset, eval_dataset, tokenizer, model, cfg, padding
    )

    groups = optim.get_optimizer_grouped_parameters(
        model, cfg.optim.weight_decay, cfg.lora.lora_learning_rate
    )
    optimizer = optim.create_optimizer(groups, cfg.optim.learning_rate, cfg.engine.offload)
    scheduler = optim.schedule_for_run(
        optimizer, cfg.optim, len(train_loader), cfg.batch.gradient_accumulation_steps
    )
    data_digest = f"{train_dataset.samples.digest()[:16]}-{eval_dataset.samples.digest()[:16]}"
    fingerprint, shape = cfg.fingerprint(dist.get_world_size(), data_digest), cfg.shape(dist.get_world_size())
    resume = checkpoint.prepare_resume(resume_dir, fingerprint, shape, cfg.batch.group_by_length, ds_config)
    engine = train.create_engine(model, optimizer, scheduler, ds_config, cfg.model.gradient_checkpointing)
    state = checkpoint.start_state(engine, resume, fingerprint, shape)

    outcome = train.train(engine, train_loader, eval_loader, cfg, model.config, device, state, resume_dir)
    if outcome is train.Outcome.INTERRUPTED:
        logger.info("stopped cleanly; continue with the same command plus --resume")
        return
    if cfg.output.output_dir:
        logger.info("saving the final model ...")
        info = run_dir.run_info(cfg.data.prompt_template, cfg.flags())
        save.save_final_model(
            engine, tokenizer, cfg.output, cfg.lora, cfg.engine.zero_stage, cfg.model.model_name_or_path, info
        )
    del lock  # held until here: the output dir belonged to this run for its whole life


if __name__ == "__main__":
    sys.exit(run_cli(main))
