"""Each built-in renders its family's published format, character for character.

The expected strings are written out by hand from the families' own documents
(model cards, tokenizer_config.json chat templates, official fine-tuning code),
not produced by ftkit.
"""
import pytest

from ftkit.errors import ConfigError
from ftkit.templates import TEMPLATES, TokenizerTemplate, get_template

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]

EXPECTED = {
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST] 4 </s>",
    "qwen": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n4<|im_end|>\n",
    "mistral": "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] 2+2? [/INST]4</s>",
    "gemma": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
             "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "chatglm3": "[gMASK]sop<|system|>\n Be brief.<|user|>\n Hi<|assistant|>\n Hello!<|user|>\n 2+2?"
                "<|assistant|>\n 4</s>",
    "deepseek": "<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hi\n\nAssistant: Hello!<｜end▁of▁sentence｜>"
                "User: 2+2?\n\nAssistant: 4<｜end▁of▁sentence｜>",
    "phi": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
           "<|user|>\n2+2?<|end|>\n<|assistant|>\n4<|end|>\n<|endoftext|>",
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>\n\n"
              "### Instruction:\n2+2?\n\n### Response:\n4</s>\n\n",
    "default": "System: Be brief.\nHuman: Hi\nAssistant: Hello!</s>\nHuman: 2+2?\nAssistant: 4</s>\n",
    "moss": "Be brief.<|Human|>: Hi<eoh>\n<|MOSS|>: Hello!<eom>\n<|Human|>: 2+2?<eoh>\n<|MOSS|>: 4<eom>\n",
}

GENERATION_PROMPT = {  # a single user turn, ready for the model to answer (no system message)
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatglm3": "[gMASK]sop<|user|>\n Hi<|assistant|>",
    "deepseek": "<｜begin▁of▁sentence｜>User: Hi\n\nAssistant:",
    "alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes the "
              "request.\n\n### Instruction:\nHi\n\n### Response:\n",
    "llama2": "<s>[INST] Hi [/INST]",
    "gemma": "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
}


class EosOnly:
    eos_token = "</s>"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_renders_official_format(name):
    assert get_template(name, EosOnly()).render(CHAT).text == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(GENERATION_PROMPT))
def test_generation_prompt(name):
    rendered = get_template(name, EosOnly()).render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert rendered.text == GENERATION_PROMPT[name] and rendered.spans == []


def test_every_builtin_has_an_expected_string():
    # chatml == qwen without the default system; qwen3, qwen3_nothink and llama3_1 (and qwen's default system and
    # generation prompt) are checked against the official templates in tests/test_real_templates.py
    assert set(TEMPLATES) - set(EXPECTED) == {"chatml", "qwen3", "qwen3_nothink", "llama3_1"}
    chatml = get_template("chatml", EosOnly()).render(CHAT).text
    assert chatml == EXPECTED["qwen"]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_trained_spans_are_the_answers_with_end_of_turn(name):
    t = get_template(name, EosOnly())
    r = t.render(CHAT)
    answers = [r.text[a:b] for a, b in r.spans]
    assert "Hello!" in answers[0] and "4" in answers[1]
    assert not any("Hi" in a or "2+2?" in a or "Be brief" in a for a in answers)
    assert any(stop in "".join(answers) for stop in t.stop), "the end-of-turn marker must be trained"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_jinja_export_matches_render(name, tiny_tokenizer):
    """Merged models carry Template.jinja(); transformers must render it identically."""
    t = get_template(name, tiny_tokenizer)
    tok = tiny_tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = t.jinja()
        for msgs in (CHAT, CHAT[1:3]):
            assert tok.apply_chat_template(msgs, tokenize=False) == t.render(msgs).text
            assert tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True) == \
                t.render(msgs[:-1], add_generation_prompt=True).text
    finally:
        tok.chat_template = saved


def test_auto_uses_the_tokenizers_chat_template(tiny_tokenizer):
    t = get_template("auto", tiny_tokenizer)
    assert isinstance(t, TokenizerTemplate)
    r = t.render(CHAT)
    assert r.text == tiny_tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert [r.text[a:b] for a, b in r.spans] == ["Hello!<|im_end|>", "4<|im_end|>"]  # the newline after: never
    # generated (inference stops at <|im_end|>), so not trained
    assert t.stop[0] == "<|im_end|>"


def test_unknown_template_suggests():
    with pytest.raises(ConfigError, match="did you mean llama3"):
        get_template("llama-3", EosOnly())


def test_render_shows_text_tokens_and_labels_as_training_sees_them(tiny_tokenizer, tmp_path):
    import json

    import ftkit
    from ftkit.data import IGNORE, encode

    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    seen = ftkit.render(conv)
    assert seen.text == tiny_tokenizer.apply_chat_template(conv, tokenize=False)
    (row,), _ = encode([conv], tiny_tokenizer, get_template("auto", tiny_tokenizer), 10**6)
    assert (seen.input_ids, seen.labels) == (row["input_ids"], row["labels"])  # the training path, token for token
    assert tiny_tokenizer.decode([t for t in seen.labels if t != IGNORE]) == seen.trained_text == \
        "Hello!<|im_end|>4<|im_end|>"
    prompt = ftkit.render(conv[:2], add_generation_prompt=True)
    assert prompt.text.endswith("<|im_start|>assistant\n") and set(prompt.labels) == {IGNORE}

    folder = tmp_path / "tokenizer-only"  # a tokenizer and a config.json, no weights
    tiny_tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert ftkit.render(conv, model=str(folder), template="llama3").text.startswith("<|begin_of_text|>")
    with pytest.raises(ConfigError, match="renders no tools; use template: auto"):
        ftkit.render(conv, template="chatml", tools=[{"type": "function", "function": {"name": "f"}}])


def test_a_run_config_carries_enable_thinking_to_its_template():
    import ftkit
    from ftkit.config import RunConfig

    cfg = RunConfig.from_dict({"dataset": "demo", "template": "qwen3", "enable_thinking": False, "max_steps": 1})
    assert ftkit.plan(cfg).template.name == "qwen3_nothink"
    assert ftkit.plan(cfg.to_dict() | {"enable_thinking": None}).template.name == "qwen3"
