"""finetune_trainer: the workload of a FineTuneJob (trainer image and `finetune run`).

Modules: data (read, validate, label-map, tokenise), modeling (model/tokenizer/precision),
lora (peft adapters), qat (torchao int8 QAT), training (TrainingArguments, collators,
resume), evaluation (metrics, plots, BLEU), report (reporter + sinks), run (entry
points), predict (load a finished run), errors (UserError subclasses).
"""

import logging as _logging
import warnings as _warnings

# transformers and peft import torchao when it is installed; on import it logs a warning
# per GPU-only kernel library it cannot load (on CPU: all of them) and torch logs one per
# torchao enum it registers. Neither concerns the user; real errors still get through.
# bitsandbytes (imported by peft) warns on CPUs with AVX512-BF16 that an optional kernel
# package is missing: nothing the user asked for.
for _name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)


# peft calls a transformers method that transformers 5 deprecates; not the user's concern.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
