"""Chat SFT on a tiny random Llama: the exact loss mask, lossTokens/totalTokens against
an independent count, every chat format, the template gate, the saved template and
predict's chat prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeJob, write_rows

from support.tiny_models import (
    CHAT_TEMPLATE,
    CHAT_TEMPLATE_NO_MARKERS,
    QA,
    chat_rows,
    tiny_llama,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def chat_data(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "chat.jsonl", chat_rows(24))


def _chat_job(make_job: MakeJob, model: Path, train: Path, **spec: Any) -> Any:
    dataset = {"format": spec.pop("format", "messages")}
    return make_job(
        task="causal-lm",
        model_path=model,
        train=train,
        dataset=dataset,
        hyperparameters={"epochs": 1, "batchSize": 4, "maxLength": 64},
        **spec,
    )


def _recipe(job: Any, model: Path) -> Any:
    from transformers import AutoTokenizer

    from finetune_trainer.tasks import recipe_for

    recipe = recipe_for(job.spec)
    tokenizer = AutoTokenizer.from_pretrained(model)
    recipe.check_tokenizer(tokenizer, str(model))
    return recipe, tokenizer


def _tokenized(recipe: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> Any:
    import datasets

    from finetune_trainer.data import Table

    return recipe.tokenize(Table(datasets.Dataset.from_list(rows), "t.jsonl"), tokenizer, 64)


def test_exact_label_mask_of_a_two_turn_conversation(
    llama_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    """Only the assistants' words and the end-of-turn token after each are trained."""
    recipe, tokenizer = _recipe(_chat_job(make_job, llama_dir, tmp_path / "c.jsonl"), llama_dir)
    row = _tokenized(recipe, tokenizer, chat_rows(1))[0]
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    trained = [t if label != -100 else None for t, label in zip(tokens, row["labels"], strict=True)]
    (q1, a1), (q2, a2) = QA[0], QA[1]

    def user(text: str) -> list[str | None]:
        return [None] * (len(text.split()) + 3)  # <|im_start|> user ... <|im_end|>

    def assistant(text: str) -> list[str | None]:
        return [None, None, *text.split(), "<|im_end|>"]  # <|im_start|> assistant

    assert trained == user(q1) + assistant(a1) + user(q2) + assistant(a2)
    assert row["labels"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_messages_run_counts_the_assistant_share(
    llama_dir: Path, make_job: MakeJob, chat_data: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from finetune_trainer.run import run

    job = _chat_job(make_job, llama_dir, chat_data, lora={"rank": 4})
    out = tmp_path / "out"
    metrics = run(job, spec_dir=None, output_dir=out)
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Succeeded"
    # Independently: the template's own assistant mask over the training rows of the run.
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    masks = [
        tokenizer.apply_chat_template(
            r["messages"], return_dict=True, return_assistant_tokens_mask=True
        )["assistant_masks"]
        for r in chat_rows(24)
    ]
    assert len({len(m) for m in masks}) == 1  # every row has one shape: any split has its share
    share = sum(masks[0]) / len(masks[0])
    assert metrics["lossTokens"] / metrics["totalTokens"] == pytest.approx(share)
    assert state["metrics"]["lossTokens"] == metrics["lossTokens"]
    assert metrics["totalTokens"] % len(masks[0]) == 0
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    info = json.loads((out / "run.json").read_text())
    assert info["chatTemplate"] == "chat_template.jinja" and info["loss"] == "assistant"


def test_predict_wraps_the_prompt_as_a_user_turn(
    llama_dir: Path, make_job: MakeJob, chat_data: Path, tmp_path: Path
) -> None:
    from finetune_trainer.evaluation import generate
    from finetune_trainer.predict import load_run, predict
    from finetune_trainer.run import run

    out = tmp_path / "out"
    run(_chat_job(make_job, llama_dir, chat_data), spec_dir=None, output_dir=out)
    answer = predict(out, ["what color is the sky ?"], max_new_tokens=6)
    _, model, tokenizer = load_run(out)
    prompt = "<|im_start|>user\nwhat color is the sky ?<|im_end|><|im_start|>assistant\n"
    expected = generate(
        model, tokenizer, [prompt], max_new_tokens=6, max_length=64, add_special_tokens=False
    )
    assert answer == expected


@pytest.mark.parametrize(
    ("fmt", "row", "messages"),
    [
        (
            "prompt-completion",
            {"prompt": "what color is the sky ?", "completion": "the sky is blue ."},
            [("user", "what color is the sky ?"), ("assistant", "the sky is blue .")],
        ),
        (
            "alpaca",
            {"instruction": "what color is the sky ?", "input": "the sun", "output": "blue ."},
            [("user", "what color is the sky ?\n\nthe sun"), ("assistant", "blue .")],
        ),
        (
            "sharegpt",
            {
                "conversations": [
                    {"from": "system", "value": "the"},
                    {"from": "human", "value": "what color is the sky ?"},
                    {"from": "gpt", "value": "the sky is blue ."},
                ]
            },
            [
                ("system", "the"),
                ("user", "what color is the sky ?"),
                ("assistant", "the sky is blue ."),
            ],
        ),
    ],
)
def test_every_format_becomes_messages(fmt: str, row: dict[str, Any], messages: list[Any]) -> None:
    from finetune_api.models import DataFormat
    from finetune_trainer.tasks.chat_sft import to_messages

    got = to_messages(row, DataFormat(fmt))
    assert [(m["role"], m["content"]) for m in got] == messages


def test_completion_loss_trains_only_the_last_turn(
    llama_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    """prompt-completion defaults to loss completion: the prompt is never trained."""
    job = _chat_job(make_job, llama_dir, tmp_path / "c.jsonl", format="prompt-completion")
    recipe, tokenizer = _recipe(job, llama_dir)
    assert recipe.loss == "completion"
    row = _tokenized(recipe, tokenizer, [{"prompt": QA[0][0], "completion": QA[0][1]}])[0]
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    trained = [t for t, label in zip(tokens, row["labels"], strict=True) if label != -100]
    assert trained == [*QA[0][1].split(), "<|im_end|>"]


def _refused(run_dir: Path) -> dict[str, Any]:
    state = json.loads((run_dir / "metrics.json").read_text())
    assert state["phase"] == "Failed" and state["reason"] == "ChatTemplate"
    assert state["progress"]["step"] == 0
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    return state


def test_a_template_without_generation_markers_is_refused_before_training(
    make_job: MakeJob, chat_data: Path, tmp_path: Path
) -> None:
    from finetune_trainer.errors import ChatTemplateError
    from finetune_trainer.run import run

    model = tiny_llama(tmp_path / "no-markers", chat_template=CHAT_TEMPLATE_NO_MARKERS)
    out = tmp_path / "out"
    with pytest.raises(ChatTemplateError, match=r"chat template of model .*no-markers.* markers"):
        run(_chat_job(make_job, model, chat_data), spec_dir=None, output_dir=out)
    assert "generation" in _refused(out)["message"]


def test_cli_refuses_with_one_error_line(
    make_job: MakeJob, chat_data: Path, tmp_path: Path
) -> None:
    import yaml
    from typer.testing import CliRunner

    from finetune_cli.app import app

    model = tiny_llama(tmp_path / "no-markers", chat_template=CHAT_TEMPLATE_NO_MARKERS)
    job = _chat_job(make_job, model, chat_data)
    doc = job.model_dump(by_alias=True, mode="json", exclude_none=True)
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["run", str(path), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-markers" in errors[0] and "Traceback" not in result.output


def test_an_untrained_end_of_turn_is_refused(
    make_job: MakeJob, chat_data: Path, tmp_path: Path
) -> None:
    """Markers that leave <|im_end|> outside: the model would never learn to stop."""
    from finetune_trainer.errors import ChatTemplateError
    from finetune_trainer.run import run

    template = CHAT_TEMPLATE.replace(
        "{{ m['content'] }}<|im_end|>{% endgeneration %}",
        "{{ m['content'] }}{% endgeneration %}<|im_end|>",
    )
    assert template != CHAT_TEMPLATE
    model = tiny_llama(tmp_path / "eot", chat_template=template)
    out = tmp_path / "out"
    with pytest.raises(ChatTemplateError, match="end-of-turn token is not trained"):
        run(_chat_job(make_job, model, chat_data), spec_dir=None, output_dir=out)
    _refused(out)


def test_a_generation_prompt_that_is_not_a_prefix_is_refused(
    make_job: MakeJob, chat_data: Path, tmp_path: Path
) -> None:
    from finetune_trainer.errors import ChatTemplateError
    from finetune_trainer.run import run

    template = CHAT_TEMPLATE.replace(
        "'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\nokay '"
    )
    assert template != CHAT_TEMPLATE
    out = tmp_path / "out"
    job = _chat_job(make_job, tiny_llama(tmp_path / "m"), chat_data, chatTemplate=template)
    with pytest.raises(ChatTemplateError, match="not a prefix"):
        run(job, spec_dir=None, output_dir=out)
    _refused(out)


def test_a_base_model_needs_a_template_and_chatml_adds_its_tokens(
    make_job: MakeJob, tmp_path: Path
) -> None:
    """gpt2-like base: no template (refused, naming chatTemplate); with chatml the tokens
    <|im_start|>/<|im_end|> are added, trained through LoRA, and predict reloads them."""
    from finetune_trainer.errors import ChatTemplateError
    from finetune_trainer.predict import predict
    from finetune_trainer.run import run
    from support.tiny_models import tiny_gpt2

    base = tiny_gpt2(tmp_path / "gpt2")
    rows = [{"messages": r["messages"][:2]} for r in chat_rows(16)]
    data = write_rows(tmp_path / "c.jsonl", rows)
    with pytest.raises(ChatTemplateError, match=r"spec\.chatTemplate"):
        run(_chat_job(make_job, base, data), spec_dir=None, output_dir=tmp_path / "a")
    out = tmp_path / "b"
    job = _chat_job(make_job, base, data, chatTemplate="chatml", lora={"rank": 4})
    metrics = run(job, spec_dir=None, output_dir=out)
    assert metrics["lossTokens"] > 0
    assert len(predict(out, ["what color is the sky ?"], max_new_tokens=3)) == 1
