"""QLoRA: the frozen base model loaded quantised by bitsandbytes (nf4, fp4 or int8),
LoRA adapters trained on it (peft's k-bit preparation), the adapter alone saved.

bitsandbytes' 4-bit kernels run on CUDA and, since 0.48, on the CPU (at hidden size 256
or more; smaller layers fail inside its CPU kernel). The compute dtype follows the
run's precision: bf16 where the GPU has it, fp16 on other GPUs, fp32 on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from finetune_trainer.modeling import PrecisionChoice


def quantization_config(mode: str, precision: PrecisionChoice) -> Any:
    """transformers' BitsAndBytesConfig for lora.quantizeBase."""
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    dtype = torch.bfloat16 if precision.bf16 else torch.float16 if precision.fp16 else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=mode,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=mode == "nf4",
    )


def prepare(model: Any, gradient_checkpointing: bool) -> Any:
    """peft's preparation of a k-bit model for training (norms in fp32, input grads)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
