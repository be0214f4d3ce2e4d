"""`template: auto` against the official chat templates of ~70 released models (llama.cpp's models/templates, via
tests/real.py): the text is transformers' own render, and the trained spans are each answer with its end-of-turn
marker, also where a template rewrites earlier turns (Qwen3, R1) or leaves the last answer open (GLM-4.6).

Each template is hosted by a copy of tiny's tokenizer given the template's special tokens (a real tokenizer has
them); the text compared is what transformers renders with that tokenizer."""
import copy
import re

import pytest

from ftkit.errors import FtkitError
from ftkit.templates import TokenizerTemplate, _fold_system
from real import llama_cpp_templates

SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|<｜[^｜<>]{1,40}｜>")
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "Low-rank adapters."}],
    "system, two turns": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello friend."},
                          {"role": "user", "content": "And LoRA?"}, {"role": "assistant", "content": "Small matrices."}],
    "two turns": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello friend."},
                  {"role": "user", "content": "And LoRA?"}, {"role": "assistant", "content": "Small matrices."}],
}
USER_TEXTS = ("What is LoRA?", "Hi there", "And LoRA?")
# refused, each with a clear message (the reason is the test's expectation, checked below)
REFUSED = {
    "fireworks-ai-llama-3-firefunction-v2": "cannot render a plain conversation",  # needs its `functions` variable
    "llama-cpp-rwkv-world": "leaves the last answer open",  # "\n\n" ends a turn: no end-of-turn token to learn
    "tencent-Hy3": "leaves the last answer open",  # its turn tokens are built by string concatenation in the template
}


@pytest.fixture(scope="module")
def official():
    return {f.stem: f.read_text(encoding="utf-8") for f in sorted(llama_cpp_templates().glob("*.jinja"))}


def host(tiny_tokenizer, source: str):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": sorted(set(SPECIAL.findall(source)))})
    tok.chat_template = source
    tok.bos_token = tok.bos_token or "<s>"
    return tok


def official_render(tok, template, conversation) -> str:
    """What transformers renders (with the system folded in where the template refuses a system turn), plus the
    marker ftkit appends where the template leaves the last answer open."""
    shown = _fold_system(conversation) if template.fold_system and conversation[0]["role"] == "system" else conversation
    return tok.apply_chat_template(shown, tokenize=False, **template.kwargs) + (
        "" if template.closes_last else template.markers[0])


def check(tok, template) -> None:
    for name, conversation in CONVERSATIONS.items():
        r = template.render(conversation)
        assert r.text == official_render(tok, template, conversation), name
        answers = [m["content"] for m in conversation if m["role"] == "assistant"]
        assert len(r.spans) == len(answers), name
        for (a, b), answer in zip(r.spans, answers):
            trained = r.text[a:b]
            assert answer in trained and not any(u in trained for u in USER_TEXTS), (name, trained)
            assert trained.split(answer, 1)[1].strip() in template.markers, (name, trained, template.markers)


def test_auto_over_the_official_templates(official, tiny_tokenizer):
    passed, refused = [], {}
    for name, source in official.items():
        tok = host(tiny_tokenizer, source)
        try:
            check(tok, TokenizerTemplate(tok))
            passed.append(name)
        except FtkitError as e:
            refused[name] = str(e)
    print(f"\ntemplate: auto masks {len(passed)} of {len(official)} official templates; refused: "
          + "; ".join(f"{k} ({v.split('chat_template ', 1)[-1].split(';')[0]})" for k, v in refused.items()))
    assert len(passed) >= 0.95 * len(official) and len(official) >= 60
    assert refused.keys() == REFUSED.keys(), refused
    for name, why in REFUSED.items():
        assert why in refused[name] and "name a built-in template" in refused[name]


def test_reasoning_templates_train_what_the_model_generates(official, tiny_tokenizer):
    two = CONVERSATIONS["two turns"]

    def spans(name):
        tok = host(tiny_tokenizer, official[name])
        t = TokenizerTemplate(tok)
        r = t.render(two)
        return [r.text[a:b] for a, b in r.spans], r.text, t

    # Qwen3 drops the (empty) reasoning of earlier answers and writes it before the last one: the last answer
    # is trained with its think block, as generated after the prompt; the earlier one as the text shows it
    (first, last), text, _ = spans("Qwen-Qwen3-0.6B")
    assert (first, last) == ("Hello friend.<|im_end|>", "<think>\n\n</think>\n\nSmall matrices.<|im_end|>")
    # DeepSeek-R1's generation prompt opens a think block that the rendered history does not hold
    trained, _, _ = spans("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
    assert trained == ["Hello friend.<｜end▁of▁sentence｜>", "Small matrices.<｜end▁of▁sentence｜>"]
    # Llama 3.1 always opens with its system header and dates
    trained, text, _ = spans("meta-llama-Llama-3.1-8B-Instruct")
    assert "Cutting Knowledge Date" in text and trained == ["Hello friend.<|eot_id|>", "Small matrices.<|eot_id|>"]
    # gpt-oss ends the last answer with <|return|>, earlier ones with <|end|>
    trained, _, t = spans("openai-gpt-oss-120b")
    assert trained[0].endswith("Hello friend.<|end|>") and trained[1].endswith("Small matrices.<|return|>")
    assert t.stop[:2] == ("<|return|>", "<|end|>")
    # GLM-4.6 leaves the last answer open: <|user|> (what ends a turn) is appended and trained
    trained, text, t = spans("GLM-4.6")
    assert not t.closes_last and text.endswith("Small matrices.<|user|>") and trained[1].endswith("<|user|>")


def test_render_with_tools_through_the_official_template(official, tiny_tokenizer, tmp_path):
    import json

    import ftkit

    tok = host(tiny_tokenizer, official["Qwen-Qwen2.5-7B-Instruct"])
    tok.save_pretrained(tmp_path / "qwen2.5")  # a tokenizer-only folder, as render takes it
    (tmp_path / "qwen2.5" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    weather = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    conv = CONVERSATIONS["one turn"]
    seen = ftkit.render(conv, model=str(tmp_path / "qwen2.5"), tools=[weather])
    assert seen.text == tok.apply_chat_template(conv, tools=[weather], tokenize=False)
    assert "get_weather" in seen.text and "# Tools" in seen.text and "You are Qwen, created by Alibaba Cloud" in seen.text
    assert seen.trained_text == "Low-rank adapters.<|im_end|>"


# built-in template -> (official template it equals, eos, bos, what the official one is given)
BUILTINS = {
    "qwen": ("Qwen-Qwen2.5-7B-Instruct", "<|im_end|>", None, {}),
    "qwen3": ("Qwen-Qwen3-0.6B", "<|im_end|>", None, {}),
    "qwen3_nothink": ("Qwen-Qwen3-0.6B", "<|im_end|>", None, {"enable_thinking": False}),
    "phi": ("microsoft-Phi-3.5-mini-instruct", "<|endoftext|>", "<s>", {}),
    "llama3_1": ("meta-llama-Llama-3.1-8B-Instruct", "<|eot_id|>", "<|begin_of_text|>", {}),
    "llama3_1 (3.3)": ("meta-llama-Llama-3.3-70B-Instruct", "<|eot_id|>", "<|begin_of_text|>", {}),
    "gemma": ("google-gemma-2-2b-it", "<eos>", "<bos>", {}),
}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_equals_the_official_template(name, official, tiny_tokenizer):
    """Training texts and generation prompts, with and without a system turn, one and two turns."""
    from ftkit.templates import get_template

    source, eos, bos, kwargs = BUILTINS[name]
    tok = host(tiny_tokenizer, official[source])
    tok.add_special_tokens({"eos_token": eos, **({"bos_token": bos} if bos else {})})
    builtin = get_template(name.split()[0], tok)
    for label, conversation in CONVERSATIONS.items():
        if name == "gemma" and conversation[0]["role"] == "system":
            with pytest.raises(Exception, match="System role not supported"):  # Gemma 2 has none: the built-in
                tok.apply_chat_template(conversation, tokenize=False)  # puts it in the first user turn instead
            continue
        assert builtin.render(conversation).text == tok.apply_chat_template(conversation, tokenize=False, **kwargs), label
        asked = conversation[:-1]
        assert builtin.render(asked, add_generation_prompt=True).text == \
            tok.apply_chat_template(asked, tokenize=False, add_generation_prompt=True, **kwargs), label
        if not kwargs:  # the built-in trains what `auto` trains on the official template
            mine, auto = builtin.render(conversation), TokenizerTemplate(tok).render(conversation)
            trained = [mine.text[a:b] for a, b in mine.spans]
            if builtin.suffix and trained[-1] == builtin.suffix:
                trained = trained[:-1]  # Phi's built-in also trains the text's closing <|endoftext|>
            assert trained == [auto.text[a:b] for a, b in auto.spans], label


def test_enable_thinking_reaches_the_official_template_and_picks_the_builtin(official, tiny_tokenizer, tmp_path):
    import json

    import ftkit
    from ftkit.templates import get_template

    tok = host(tiny_tokenizer, official["Qwen-Qwen3-0.6B"])
    off = get_template("auto", tok, enable_thinking=False)
    builtin = get_template("qwen3", tok, enable_thinking=False)
    assert builtin.name == "qwen3_nothink" and get_template("qwen3_nothink", tok, enable_thinking=True).name == "qwen3"
    for label, conversation in CONVERSATIONS.items():
        asked = conversation[:-1]
        prompt = off.render(asked, add_generation_prompt=True).text
        assert prompt == tok.apply_chat_template(asked, tokenize=False, add_generation_prompt=True,
                                                 enable_thinking=False) and prompt.endswith("<think>\n\n</think>\n\n")
        mine, auto = builtin.render(conversation), off.render(conversation)
        assert mine.text == auto.text, label  # thinking off: the empty think block is the prompt's, not trained
        assert [mine.text[a:b] for a, b in mine.spans] == [auto.text[a:b] for a, b in auto.spans], label
        assert auto.text[auto.spans[-1][0]:auto.spans[-1][1]] == conversation[-1]["content"] + "<|im_end|>"
    tok.save_pretrained(tmp_path / "qwen3")
    (tmp_path / "qwen3" / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    seen = ftkit.render(CONVERSATIONS["one turn"], model=str(tmp_path / "qwen3"), enable_thinking=False)
    assert seen.trained_text == "Low-rank adapters.<|im_end|>"
    assert ftkit.render(CONVERSATIONS["one turn"], model=str(tmp_path / "qwen3")).trained_text == \
        "<think>\n\n</think>\n\nLow-rank adapters.<|im_end|>"  # thinking on (the default): the model writes it
