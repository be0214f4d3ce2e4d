"""Built-in templates: the official renders of models whose template is not in the fetched corpus, spans, Jinja
export, `auto` on tiny's tokenizer, and `ftkit.render`.

Built-ins with an official template in llama.cpp's corpus (qwen, qwen3, qwen3_nothink, llama3, llama3_1, phi, phi4,
gemma, mistral, mistral_v1, deepseek, deepseekr1, chatglm3, glm4) are compared with transformers' render of it in
tests/test_real_templates.py, and `mistral` with Mistral's reference tokenizer in tests/test_real_mistral.py. The
strings below are transformers' renders (transformers 5.24) of the official chat_template of the model named, read
from the copy named; none is written from memory.
"""
import pytest

from conftest import CONVERSATIONS
from ftkit.errors import ConfigError
from ftkit.templates import TEMPLATES, TokenizerTemplate, get_template

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]

# built-in -> (official template and where it was read, eos, {conversation: (training text, generation prompt)})
OFFICIAL = {
    "llama2": (
        "meta-llama/Llama-2-7b/13b-chat-hf tokenizer_config.json chat_template, quoted verbatim (and labelled with "
        "the model) in several public repositories found by code search", "</s>", {
            "one turn": ("<s>[INST] What is LoRA? [/INST] Low-rank adapters. </s>", "<s>[INST] What is LoRA? [/INST]"),
            "system, two turns": (
                "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello friend. </s><s>[INST] And LoRA? "
                "[/INST] Small matrices. </s>",
                "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello friend. </s><s>[INST] And LoRA? "
                "[/INST]"),
            "two turns": ("<s>[INST] Hi there [/INST] Hello friend. </s><s>[INST] And LoRA? [/INST] Small matrices. </s>",
                          "<s>[INST] Hi there [/INST] Hello friend. </s><s>[INST] And LoRA? [/INST]")}),
    "gemma3": (
        "google/gemma-3-*-it chat_template (its text part), as quoted in public repositories found by code search "
        "(one sets it on ggml-org/gemma-3-270m-GGUF)", "<eos>", {
            "one turn": ("<bos><start_of_turn>user\nWhat is LoRA?<end_of_turn>\n<start_of_turn>model\nLow-rank "
                         "adapters.<end_of_turn>\n",
                         "<bos><start_of_turn>user\nWhat is LoRA?<end_of_turn>\n<start_of_turn>model\n"),
            "system, two turns": (
                "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello friend."
                "<end_of_turn>\n<start_of_turn>user\nAnd LoRA?<end_of_turn>\n<start_of_turn>model\nSmall matrices."
                "<end_of_turn>\n",
                "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello friend."
                "<end_of_turn>\n<start_of_turn>user\nAnd LoRA?<end_of_turn>\n<start_of_turn>model\n"),
            "two turns": (
                "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello friend.<end_of_turn>\n"
                "<start_of_turn>user\nAnd LoRA?<end_of_turn>\n<start_of_turn>model\nSmall matrices.<end_of_turn>\n",
                "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello friend.<end_of_turn>\n"
                "<start_of_turn>user\nAnd LoRA?<end_of_turn>\n<start_of_turn>model\n")}),
    # The official template writes 8 spaces before <bos> when there is a system message (unstripped indentation
    # in its Jinja); the built-in does not: the test strips them.
    "deepseek3": (
        "deepseek-ai/DeepSeek-V3 tokenizer_config.json chat_template, as quoted in the Berkeley Function Calling "
        "Leaderboard's bfcl/model_handler/oss_model/deepseek_coder.py", "<｜end▁of▁sentence｜>", {
            "one turn": ("<｜begin▁of▁sentence｜><｜User｜>What is LoRA?<｜Assistant｜>Low-rank adapters.<｜end▁of▁sentence｜>",
                         "<｜begin▁of▁sentence｜><｜User｜>What is LoRA?<｜Assistant｜>"),
            "system, two turns": (
                "        <｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi there<｜Assistant｜>Hello friend.<｜end▁of▁sentence｜>"
                "<｜User｜>And LoRA?<｜Assistant｜>Small matrices.<｜end▁of▁sentence｜>",
                "        <｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi there<｜Assistant｜>Hello friend.<｜end▁of▁sentence｜>"
                "<｜User｜>And LoRA?<｜Assistant｜>"),
            "two turns": (
                "<｜begin▁of▁sentence｜><｜User｜>Hi there<｜Assistant｜>Hello friend.<｜end▁of▁sentence｜><｜User｜>And LoRA?"
                "<｜Assistant｜>Small matrices.<｜end▁of▁sentence｜>",
                "<｜begin▁of▁sentence｜><｜User｜>Hi there<｜Assistant｜>Hello friend.<｜end▁of▁sentence｜><｜User｜>And LoRA?"
                "<｜Assistant｜>")}),
}

class Eos:
    def __init__(self, eos="</s>"):
        self.eos_token = eos


@pytest.mark.parametrize("name, label", [(n, c) for n in sorted(OFFICIAL) for c in CONVERSATIONS])
def test_builtin_renders_the_official_template(name, label):
    _, eos, renders = OFFICIAL[name]
    text, prompt = (r.lstrip(" ") for r in renders[label])
    template, conversation = get_template(name, Eos(eos)), CONVERSATIONS[label]
    mine = template.render(conversation)
    assert mine.text == text
    assert template.render(conversation[:-1], add_generation_prompt=True).text == prompt
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    assert [mine.text[a:b].strip() for a, b in mine.spans] == [template.assistant.replace("{content}", a).strip()
                                                              for a in answers]


def test_moss_renders_as_moss_readme_prompts_it():
    """OpenMOSS/MOSS README.md, "使用示例": query = meta_instruction + "<|Human|>: 你好<eoh>\\n<|MOSS|>:"; the next
    turn's query = tokenizer.decode(outputs[0]) + "\\n<|Human|>: 推荐五部科幻电影<eoh>\\n<|MOSS|>:", the output ending
    with MOSS's eos, <eom> (its meta instruction ends with a newline); its SFT data (moss-003-sft-data) writes each
    answer as "<|MOSS|>: ...<eom>\\n", with the space."""
    meta, answer = "You are an AI assistant whose name is MOSS.\n", "您好！我是MOSS，有什么我可以帮助您的吗？"
    chat = [{"role": "system", "content": meta}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": answer}, {"role": "user", "content": "推荐五部科幻电影"}]
    first = meta + "<|Human|>: 你好<eoh>\n<|MOSS|>:"
    moss = get_template("moss", Eos("<eom>"))
    assert moss.render(chat[:2], add_generation_prompt=True).text == first
    assert moss.render(chat, add_generation_prompt=True).text == \
        first + " " + answer + "<eom>" + "\n<|Human|>: 推荐五部科幻电影<eoh>\n<|MOSS|>:"


def test_every_builtin_is_checked_against_its_official_template():
    from test_llama_factory import SAME_AS_LLAMA_FACTORY
    from test_real_templates import BUILTINS

    checked = {n.split()[0] for n in BUILTINS} | set(OFFICIAL) | SAME_AS_LLAMA_FACTORY | {"moss"}
    assert set(TEMPLATES) - checked == set()
    assert get_template("chatml", Eos()).render(CHAT).text == get_template("qwen", Eos()).render(CHAT).text


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_trained_spans_are_the_answers_with_end_of_turn(name):
    t = get_template(name, Eos())
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
        thought = [*CHAT[:4], {"role": "assistant", "content": "<think>\nSum.\n</think>\n\n4"}]  # reasoning inline
        given = [*CHAT[:2], {**CHAT[2], "reasoning_content": "Greet."}, CHAT[3],
                 {"role": "assistant", "content": "4", "reasoning_content": "Add."}]
        for msgs in (CHAT, CHAT[1:3], thought, given):
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
        get_template("llama-3", Eos())


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
    with_tools = ftkit.render(conv, template="llama3", tools=[{"type": "function", "function": {"name": "f"}}])
    assert "Be brief.You have access to the following tools:\n> Tool Name: f\n" in with_tools.text  # the default format


def test_a_run_config_carries_enable_thinking_to_its_template():
    import ftkit
    from ftkit.config import RunConfig

    cfg = RunConfig.from_dict({"dataset": "demo", "template": "qwen3", "enable_thinking": False, "max_steps": 1})
    assert ftkit.plan(cfg).template.name == "qwen3_nothink"
    assert ftkit.plan(cfg.to_dict() | {"enable_thinking": None}).template.name == "qwen3"


@pytest.mark.parametrize("name", sorted(n for n, t in TEMPLATES.items() if t.tool_format))
def test_jinja_export_renders_tools_like_the_builtin(name, tiny_tokenizer):
    from test_real_templates import tool_chat

    t, tok, chat = get_template(name, tiny_tokenizer), tiny_tokenizer, tool_chat()
    saved = tok.chat_template
    try:
        tok.chat_template = t.jinja()
        for msgs in (list(chat), list(chat)[1:]):
            for tools in (chat.tools, None):
                assert tok.apply_chat_template(msgs, tools=tools, tokenize=False) == t.render(msgs, tools=tools).text
    finally:
        tok.chat_template = saved
