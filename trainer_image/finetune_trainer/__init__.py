"""finetune_trainer: the workload of a FineTuneJob (trainer image and `finetune run`).

Modules: data (read, validate, label-map, tokenise), modeling (model/tokenizer/precision),
lora (peft adapters), qat (torchao int8 QAT), training (TrainingArguments, collators,
resume), evaluation (metrics, plots, BLEU), report (reporter + sinks), run (entry
points), predict (load a finished run), errors (UserError subclasses).
"""
