"""What must hold after bench/gpu_check.py's runs: each check is {"name", "ok": True/False/None, "detail"}.

ok None means the check could not run here (a package not installed), and says why; it is not a pass.
Losses are compared step by step: within 1e-4 in fp32, within a relative 2e-2 (fp16) or 3e-2 (bf16), the
rounding of the half-precision formats over a few optimizer steps.
"""

from __future__ import annotations

import math
from pathlib import Path

from gpu_cases import CKPT, FLASH, LIGER, OFFLOAD, ON_CPU, ON_DEVICE, PACKED, PADDED, label

ABS_TOLERANCE = {"fp32": 1e-4}
REL_TOLERANCE = {"fp16": 2e-2, "bf16": 3e-2}
PROBE_IDS = [[1, 5, 9, 17, 33, 65, 129, 200, 7, 3, 2, 11]]


def functional_checks(profile, functional: list[dict]) -> list[dict]:
    by = {r["name"]: r for r in functional}
    h, b = profile.fp16, profile.bf16

    def run(model, dtype, zero, extra=""):
        return by[label(model, dtype, zero, extra)]

    opt = [run("opt", h, zero) for zero in (0, 2, 3)]
    llama = [run("llama", b, zero) for zero in (2, 3)]
    return [
        agree("fp32: the accelerator's losses = the CPU's", run("tiny", "fp32", 0, ON_DEVICE), run("tiny", "fp32", 0, ON_CPU)),
        *(trains(r) for r in [*opt, run("opt", h, 3, OFFLOAD), *llama, run("llama", b, 2, CKPT)]),
        finite(run("opt", h, 3, " + LoRA")),
        agree(f"opt {h}: ZeRO 0 = ZeRO 2 = ZeRO 3", *opt),
        agree(f"llama {b}: ZeRO 2 = ZeRO 3", *llama),
        agree(f"opt {h} ZeRO 3: --offload = on the device", opt[2], run("opt", h, 3, OFFLOAD)),
        agree(f"llama {b}: --gradient_checkpointing = without", llama[0], run("llama", b, 2, CKPT)),
        agree("packed rows = padded rows (same samples per micro-batch, sdpa, fp32)",
              run("llama", "fp32", 2, PADDED), run("llama", "fp32", 2, PACKED)),
        agree(f"llama {b}: packed rows on flash-attention varlen = padded rows on sdpa", llama[0], run("llama", b, 2, FLASH)),
        agree(f"llama {b}: Liger kernels = plain", llama[0], run("llama", b, 2, LIGER)),
        reloads(opt[2]),
        lora_adapter(run("opt", h, 3, " + LoRA")),
    ]  # fmt: skip


def check(name: str, ok: bool | None, detail: str) -> dict:
    return {"name": name, "ok": ok, "detail": detail}


def unusable(name: str, runs: list[dict]) -> dict | None:
    """The check's result when one of its runs failed (False) or was skipped (None); else None."""
    for run in runs:
        if run["status"] == "failed":
            return check(name, False, f"{run['name']} failed: {run['reason']}")
    for run in runs:
        if run["status"] == "skipped":
            return check(name, None, f"{run['name']} skipped: {run['reason']}")
    return None


def close(a: float, b: float, dtype: str) -> bool:
    if dtype in ABS_TOLERANCE:
        return abs(a - b) <= ABS_TOLERANCE[dtype]
    return abs(a - b) <= REL_TOLERANCE[dtype] * max(abs(a), abs(b))


def agree(name: str, reference: dict, *others: dict) -> dict:
    """Every run's per-step losses equal the reference's, within the looser dtype's tolerance."""
    if (bad := unusable(name, [reference, *others])) is not None:
        return bad
    dtype = max((r["dtype"] for r in (reference, *others)), key=lambda d: REL_TOLERANCE.get(d, 0.0))
    worst, where = 0.0, ""
    for other in others:
        if len(other["losses"]) != len(reference["losses"]):
            return check(
                name,
                False,
                f"{other['name']} ran {len(other['losses'])} steps, not {len(reference['losses'])}",
            )
        for step, (a, b) in enumerate(zip(reference["losses"], other["losses"]), start=1):
            if not close(a, b, dtype):
                return check(name, False, f"step {step}: {a:.6f} vs {b:.6f} ({other['name']})")
            if abs(a - b) >= worst:
                worst, where = abs(a - b), f"step {step}"
    limit = f"{ABS_TOLERANCE[dtype]:g}" if dtype in ABS_TOLERANCE else f"{REL_TOLERANCE[dtype]:g} relative"
    return check(
        name,
        True,
        f"{len(reference['losses'])} steps; largest difference {worst:.2e} at {where} (limit {limit})",
    )


def finite(run: dict) -> dict:
    name = f"{run['name']}: losses finite"
    if (bad := unusable(name, [run])) is not None:
        return bad
    ok = all(math.isfinite(x) for x in run["losses"])
    return check(name, ok, f"{len(run['losses'])} steps, last {run['losses'][-1]:.4f}")


def trains(run: dict) -> dict:
    """Finite, and the last two steps' mean loss below the first two's (a learning rate of 1e-3 from random init)."""
    name = f"{run['name']}: losses finite and decreasing"
    if (bad := unusable(name, [run])) is not None:
        return bad
    losses = run["losses"]
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    ok = all(math.isfinite(x) for x in losses) and last < first
    return check(name, ok, f"first two {first:.4f}, last two {last:.4f}")


def reloads(run: dict) -> dict:
    """The final save reloads with transformers: every weight present and finite, and training changed them."""
    import torch
    from transformers import AutoModelForCausalLM

    name = f"{run['name']}: the saved model reloads, complete and trained"
    if (bad := unusable(name, [run])) is not None:
        return bad
    saved = AutoModelForCausalLM.from_pretrained(run["out"], dtype=torch.float32)
    initial = AutoModelForCausalLM.from_pretrained(run["model_dir"], dtype=torch.float32)
    ours, theirs = saved.state_dict(), initial.state_dict()
    missing = sorted(set(theirs) - set(ours))
    if missing:
        return check(name, False, f"{len(missing)} weights missing, e.g. {missing[0]}")
    if not all(torch.isfinite(t).all() for t in ours.values()):
        return check(name, False, "non-finite weights in the save")
    changed = sum(not torch.equal(ours[k].to(theirs[k].dtype), theirs[k]) for k in theirs)
    return check(name, changed > len(theirs) // 2, f"{changed} of {len(theirs)} tensors changed by training")


def lora_adapter(run: dict) -> dict:
    """--save_lora_adapter wrote a non-empty adapter that peft loads onto the base model, giving the fused save's
    logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    name = f"{run['name']}: the adapter loads with peft and equals the fused save"
    if (bad := unusable(name, [run])) is not None:
        return bad
    adapter = Path(run["out"]) / "lora_adapter"
    if not adapter.is_dir():
        return check(name, False, f"no {adapter.name} folder in the output")
    base = AutoModelForCausalLM.from_pretrained(run["model_dir"], dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    fused = AutoModelForCausalLM.from_pretrained(run["out"], dtype=torch.float32).eval()
    ids = torch.tensor(PROBE_IDS)
    with torch.no_grad():
        diff = (peft_model(ids).logits - fused(ids).logits).abs().max().item()
    trained = sum(bool(p.abs().sum() > 0) for p in lora_b)
    ok = trained == len(lora_b) > 0 and diff < 5e-2
    return check(name, ok, f"{trained} of {len(lora_b)} lora_B trained; max logit difference {diff:.2e}")


def tool_check(tool: dict) -> dict:
    name = f"{tool['name']} on the ZeRO 3 save"
    if tool["status"] != "ok":
        return check(name, None if tool["status"] == "skipped" else False, tool.get("reason", ""))
    if tool["name"].startswith("chatbot"):
        answers = tool["stdout"].splitlines()
        return check(name, len(answers) == 2, f"{len(answers)} answer lines for 2 piped questions")
    if tool["name"] == "evaluation":
        model = tool["report"]["models"][0]
        ok = math.isfinite(model["ppl"])
        return check(
            name,
            ok,
            f"ppl {model['ppl']:.1f}, BLEU {model['bleu']:.2f}, {model['tokens_per_second']:.0f} tok/s",
        )
    failed = [
        line for line in tool["stdout"].splitlines() if line.startswith("clients=") and "failed=0" not in line
    ]
    return check(name, not failed, failed[0] if failed else "every request answered")
