"""Step-1 flags: upstream's names, types and defaults; dschat's additions marked "(dschat)".

One short function per argument group, so ``--help`` reads by topic. ``parse_train_args`` is main.py's parser,
``add_data_args`` + ``add_tokenizer_args`` are what prepare_data shares with it. Choices live in
``dschat.config``, checks in ``dschat.validation``; the typed config is built from the validated Namespace by
``dschat.config.from_args``. (Over 300 lines only because every flag's help text is here.)
"""

from __future__ import annotations

import argparse

from dschat.config import DTYPES, LOSS_NORMALIZATIONS, LR_SCHEDULERS, PADDING_CHOICES, SAVE_FORMATS
from dschat.utils.data.prompts import PROMPT_TEMPLATES, UPSTREAM

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def str_to_bool(text: str) -> bool:
    """Parse true/false flag values (``--train_on_prompt false``)."""
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_tokenizer_args(parser: argparse.ArgumentParser) -> None:
    """The model path and the tokenizer flags that change the tokenised data."""
    group = parser.add_argument_group("model and tokenizer")
    add = group.add_argument
    add(
        "--model_name_or_path",
        type=str,
        required=True,
        help="A local Hugging Face model directory or a model id from huggingface.co/models.",
    )
    add(
        "--add_eot_token",
        action="store_true",
        help="Add --eot_token to the tokenizer as a special token (as upstream, it is not appended to samples).",
    )
    add("--eot_token", type=str, default="<|endoftext|>", help="The end-of-text special token.")
    add(
        "--trust_remote_code",
        action="store_true",
        help="(dschat) allow model/tokenizer code from the model directory or hub (off by default).",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Upstream's data flags, plus dschat's --prompt_template, --data_weights, --train_on_prompt, --reload_data.

    (Over 50 lines only for its help texts: one flag per call.)
    """
    group = parser.add_argument_group("data")
    add = group.add_argument
    add(
        "--data_path",
        nargs="*",
        default=["Dahoas/rm-static"],
        help="Datasets: upstream hub names (or local save_to_disk copies whose path contains the name), "
        "local/jsonfile, or (dschat) a local .json/.jsonl/.parquet file or a directory of them. Several are blended.",
    )
    add(
        "--data_split",
        type=str,
        default="2,4,4",
        help="Comma-separated weights of the three training phases; phase 1 (SFT) uses the first part. "
        "10,0,0 gives all data to SFT.",
    )
    add(
        "--sft_only_data_path",
        nargs="*",
        default=[],
        help="Datasets used only for SFT (split 10,0,0), appended to --data_path's and reshuffled.",
    )
    add(
        "--data_output_path",
        type=str,
        default="/tmp/data_files/",
        help="Cache directory for split indices and tokenised data (node-local storage is fastest; "
        "dschat also makes shared storage safe).",
    )
    add("--max_seq_len", type=int, default=512, help="Maximum sequence length in tokens.")
    add("--seed", type=int, default=1234, help="Random seed (split, shuffles, model init).")
    add(
        "--prompt_template",
        choices=PROMPT_TEMPLATES,
        default=UPSTREAM,
        help="(dschat) upstream: ' Human: ... Assistant: ...' text as upstream; chat_template: render "
        "conversations with the tokenizer's chat template.",
    )
    add(
        "--data_weights",
        nargs="*",
        type=float,
        default=None,
        help="(dschat) one weight per --data_path entry: resample the train blend to these proportions "
        "(seeded). Default: upstream's plain concatenation.",
    )
    add(
        "--train_on_prompt",
        type=str_to_bool,
        default=True,
        metavar="{true,false}",
        help="true (upstream): loss on every non-pad token, prompt included; (dschat) false: loss on assistant "
        "answers only (every assistant turn of a multi-turn sample).",
    )
    add(
        "--clean_data",
        action="store_true",
        help="(dschat) clean each dataset before the split with python -m dschat.clean's rules (the cleaning "
        "flags below; their settings are part of the cache key). Default off: upstream's data as it is.",
    )
    add(
        "--reload_data",
        action="store_true",
        help="(dschat) rebuild the tokenised cache even if it exists (upstream's reload=True).",
    )


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """How the model is built: dropout, kernels, loss precision, activation checkpointing."""
    group = parser.add_argument_group("model")
    add = group.add_argument
    add(
        "--dropout",
        type=float,
        default=None,
        help="Override the model's dropout, attention_dropout, hidden_dropout, activation_dropout.",
    )
    add("--gradient_checkpointing", action="store_true", help="Enable HF gradient checkpointing.")
    add(
        "--compute_fp32_loss",
        action="store_true",
        help="Compute the loss in fp32 (always so with --lm_loss chunked).",
    )
    add(
        "--lm_loss",
        choices=("chunked", "full"),
        default="chunked",
        help="(dschat) chunked: the LM head and cross-entropy over loss-bearing positions only, a chunk at a time, "
        "never holding the full logits (same loss, a fraction of the memory); full: transformers' loss over every "
        "position's logits (upstream's).",
    )
    add(
        "--activation_memory",
        choices=("lean", "full"),
        default="lean",
        help="(dschat) lean: SiLU-gated MLPs (Llama, Qwen, Mistral, SmolLM) keep their gate and up outputs for "
        "backward and recompute the product, RMSNorms keep their input and scale (same maths, about a quarter "
        "less activation memory); full: autograd's.",
    )
    add(
        "--attn_implementation",
        type=str,
        default=None,
        help="(dschat) attention kernel passed to from_pretrained: eager, sdpa, flash_attention_2 (GPU, needs flash-attn).",
    )
    add(
        "--use_liger_kernel",
        action="store_true",
        help="(dschat) patch the model with Liger's fused kernels (GPU; needs the liger-kernel package).",
    )


def add_batch_args(parser: argparse.ArgumentParser) -> None:
    """Micro-batches, accumulation, padding, length grouping and packing."""
    group = parser.add_argument_group("batching")
    add = group.add_argument
    add("--per_device_train_batch_size", type=int, default=16, help="Micro-batch size per device.")
    add("--per_device_eval_batch_size", type=int, default=16, help="Eval batch size per device.")
    add(
        "--gradient_accumulation_steps",
        type=int,
        default=1,
        help="Micro-batches accumulated per optimizer update.",
    )
    add(
        "--padding",
        choices=PADDING_CHOICES,
        default="auto",
        help="(dschat) free: a micro-batch's samples packed into rows of up to --max_seq_len, positions "
        "restarting and attention block-diagonal, next to no padding (same samples, loss and gradients); longest: pad each batch to its "
        "longest sample; max_length: upstream's padding to --max_seq_len; auto: free where the model's "
        "attention is known to take the block mask, else longest. With dropout, only "
        "max_length draws upstream's dropout masks: use it (or --pad_to_max_len) to replicate a seeded upstream "
        "run bit for bit.",
    )
    add(
        "--pad_to_max_len",
        action="store_true",
        help="(dschat) same as --padding max_length: upstream's tensors, for bit-exact replication of a seeded "
        "upstream run with dropout (slower: every sample is padded to --max_seq_len).",
    )
    add(
        "--group_by_length",
        action="store_true",
        help="(dschat) batches of similar length (seeded megabatch sort, batches shuffled): less padding.",
    )
    add(
        "--packing",
        action="store_true",
        help="(dschat) pack several samples into each --max_seq_len row; attention never crosses samples and "
        "positions restart, so per-sample losses are unchanged.",
    )
    add(
        "--shuffle_each_epoch",
        action="store_true",
        help="(dschat) reshuffle the training data every epoch (upstream repeats the same order).",
    )
    add(
        "--loss_normalization",
        choices=LOSS_NORMALIZATIONS,
        default="micro_batch",
        help="micro_batch (upstream): each micro-batch's loss is the mean over its own loss-bearing tokens, then "
        "DeepSpeed averages micro-batches and ranks, so a token in a short micro-batch weighs more and the "
        "result depends on --per_device_train_batch_size, --gradient_accumulation_steps and the number of "
        "GPUs. (dschat) token: every loss-bearing token of an optimizer step weighs the same (sum of token "
        "losses / the step's tokens over all its micro-batches and ranks), so any split of the same samples "
        "gives the same update; an epoch's last, shorter step ends at the epoch (as the LR schedule counts). "
        "metrics.jsonl's loss is then the token-weighted mean loss of the step so far (its last row: the whole "
        "step's); --print_loss shows each micro-batch's share of it.",
    )


def add_optim_args(parser: argparse.ArgumentParser) -> None:
    """Optimizer and learning-rate schedule (upstream's defaults)."""
    group = parser.add_argument_group("optimizer")
    add = group.add_argument
    add("--learning_rate", type=float, default=1e-3, help="Initial learning rate (after warmup).")
    add("--weight_decay", type=float, default=0.0, help="Weight decay of the decay groups.")
    add("--num_train_epochs", type=int, default=1, help="Passes over the training data.")
    add(
        "--lr_scheduler_type",
        type=str,
        default="cosine",
        choices=LR_SCHEDULERS,
        help="The LR schedule (transformers get_scheduler).",
    )
    add("--num_warmup_steps", type=int, default=0, help="Warmup in optimizer updates.")


def add_lora_args(parser: argparse.ArgumentParser) -> None:
    """LoRA: rank, scope, scaling, dropout, what trains."""
    group = parser.add_argument_group("LoRA")
    add = group.add_argument
    add("--lora_dim", type=int, default=0, help="LoRA rank; > 0 enables LoRA.")
    add(
        "--lora_module_name",
        type=str,
        default="decoder.layers.",
        help="Linear layers whose name contains this get LoRA ((dschat) several substrings: comma-separated).",
    )
    add("--only_optimize_lora", action="store_true", help="Train only the LoRA parameters.")
    add("--lora_learning_rate", type=float, default=5e-4, help="Learning rate of LoRA parameters.")
    add(
        "--lora_alpha",
        type=float,
        default=1.0,
        help="(dschat) LoRA scaling numerator: scaling = lora_alpha / lora_dim (upstream: fixed at 1).",
    )
    add(
        "--lora_dropout",
        type=float,
        default=0.0,
        help="(dschat) dropout on the LoRA branch input (upstream: 0).",
    )


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """DeepSpeed: precision, ZeRO, offload, monitors, the launcher's --local_rank."""
    group = parser.add_argument_group("DeepSpeed")
    add = group.add_argument
    add(
        "--dtype",
        type=str,
        default="fp16",
        choices=DTYPES,
        help="Training precision; fp32 (dschat) is DeepSpeed's plain fp32 path, the one for CPUs.",
    )
    add("--zero_stage", type=int, default=0, help="ZeRO optimization stage (0-3).")
    add("--offload", action="store_true", help="ZeRO-Offload: parameters and optimizer to CPU.")
    add("--enable_tensorboard", action="store_true", help="Enable DeepSpeed's tensorboard monitor.")
    add("--tensorboard_path", type=str, default="step1_tensorboard", help="Tensorboard base dir.")
    add(
        "--ds_config_override",
        type=str,
        default=None,
        help="(dschat) JSON file deep-merged over the built DeepSpeed config (the result is logged).",
    )
    add(
        "--dist_timeout",
        type=float,
        default=10.0,
        help="(dschat) minutes a rank waits for the others in a collective before the run stops, naming the "
        "ranks that did not answer (DeepSpeed's default, 10). Raise it if a rank is legitimately slow: a very "
        "long data build or checkpoint save.",
    )
    # Set by the launcher; the rank actually used comes from the environment (dschat.utils.dist).
    add("--local_rank", type=int, default=-1, help="Set by the deepspeed launcher.")


def add_loop_args(parser: argparse.ArgumentParser) -> None:
    """When the loop stops, evaluates, logs and writes checkpoints."""
    group = parser.add_argument_group("loop, logging and checkpoints")
    add = group.add_argument
    add("--print_loss", action="store_true", help="Print every rank's loss each micro-step.")
    add(
        "--max_steps",
        type=int,
        default=0,
        help="(dschat) stop after this many optimizer updates (0: run all epochs). The LR schedule stays the "
        "full run's, so a short run's losses equal the first steps of the full run.",
    )
    add(
        "--eval_interval",
        type=int,
        default=0,
        help="(dschat) also evaluate every N micro-steps (0: only before training and after each epoch).",
    )
    add("--log_interval", type=int, default=10, help="(dschat) log throughput every N micro-steps.")
    add(
        "--save_interval",
        type=int,
        default=0,
        help="(dschat) write a DeepSpeed checkpoint (model, optimizer, scheduler, RNG, data position) to "
        "<output_dir>/checkpoints every N optimizer updates (0: none; upstream has none).",
    )
    add("--save_total_limit", type=int, default=2, help="(dschat) checkpoints to keep (0: all).")
    add(
        "--max_bad_steps",
        type=int,
        default=0,
        help="(dschat) skip up to N micro-steps whose loss is NaN/inf (0: stop at the first, keeping the last "
        "checkpoint).",
    )


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """Where the run writes, what the final save holds, resuming and dry runs."""
    group = parser.add_argument_group("output and resume")
    add = group.add_argument
    add("--output_dir", type=str, default=None, help="Where to save the model (None: not saved).")
    add(
        "--save_format",
        choices=SAVE_FORMATS,
        default="safetensors",
        help="(dschat) weights file: model.safetensors, or upstream's pytorch_model.bin.",
    )
    add(
        "--save_lora_adapter",
        action="store_true",
        help="(dschat) also write <output_dir>/lora_adapter/ in PEFT's LoRA format (adapter_config.json + "
        "adapter_model.safetensors) for peft.PeftModel.from_pretrained(base, dir). Needs --lora_dim > 0.",
    )
    add(
        "--resume",
        action="store_true",
        help="(dschat) continue from the newest intact checkpoint in --output_dir (each is verified against the "
        "sha256 manifest dschat wrote; damaged ones are passed over). Trust: DeepSpeed's model and optimizer "
        "files are pickles, so resume only from a dir whose writers you trust; dschat refuses files it did "
        "not record.",
    )
    add(
        "--overwrite_output_dir",
        action="store_true",
        help="(dschat) start clean in an --output_dir that holds another run's checkpoints (they and its metrics "
        "are deleted). Without it such a run refuses, so two runs never mix.",
    )
    add(
        "--resume_from",
        type=str,
        default=None,
        help="(dschat) continue from this checkpoint (<output_dir>/checkpoints/step<N>, or a run's dir for its "
        "newest intact one), verified like --resume.",
    )
    add(
        "--dry_run",
        action="store_true",
        help="(dschat) check flags, paths and data, print the plan (batches, steps, ZeRO, memory estimate) "
        "and exit without loading weights or training.",
    )


def add_cleaning_args(parser: argparse.ArgumentParser) -> None:
    """The cleaning rules' flags (used with --clean_data), owned by dschat.clean."""
    from dschat.clean.config import add_clean_args

    add_clean_args(parser)


TRAIN_ARG_GROUPS = (
    add_tokenizer_args,
    add_model_args,
    add_data_args,
    add_cleaning_args,
    add_batch_args,
    add_optim_args,
    add_lora_args,
    add_engine_args,
    add_loop_args,
    add_output_args,
)


def parse_train_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse step-1 flags (upstream's, DeepSpeed's and dschat's)."""
    import deepspeed  # its --deepspeed/--deepspeed_config flags; imported here to keep this module light

    parser = argparse.ArgumentParser(
        description="Finetune a transformers model on a causal language modeling task"
    )
    for add_group in TRAIN_ARG_GROUPS:
        add_group(parser)
    return deepspeed.add_config_arguments(parser).parse_args(argv)
