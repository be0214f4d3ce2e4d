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
from conftest import CONVERSATIONS
from real import llama_cpp_templates

SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|<｜[^｜<>]{1,40}｜>")
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


# built-in -> (official template it equals, eos, bos, variables the official one is given, how it differs, if at all).
# "pinned:" templates are those llama.cpp's tests/test-chat-template.cpp pins by model name; the others are
# llama.cpp's models/templates. Differences by design:
#   "prompt always": the pinned Llama-3 and Phi-4 templates write the assistant header after every user turn;
#   "eos suffix": ChatGLM3's and GLM-4's templates leave the last answer open; their official fine-tuning code ends
#     the text with eos, as the built-ins do;
#   "no system": the official template refuses a system turn, which the built-in puts in the first user turn;
#   "bos by tokenizer": Gemma 1's template writes no <bos>: its tokenizer adds it, the built-in writes it.
BUILTINS = {
    "qwen": ("Qwen-Qwen2.5-7B-Instruct", "<|im_end|>", None, {}, ""),
    "qwen3": ("Qwen-Qwen3-0.6B", "<|im_end|>", None, {}, ""),
    "qwen3_nothink": ("Qwen-Qwen3-0.6B", "<|im_end|>", None, {"enable_thinking": False}, ""),
    "phi": ("microsoft-Phi-3.5-mini-instruct", "<|endoftext|>", "<s>", {}, ""),
    "llama3_1": ("meta-llama-Llama-3.1-8B-Instruct", "<|eot_id|>", "<|begin_of_text|>", {}, ""),
    "llama3_1 (3.3)": ("meta-llama-Llama-3.3-70B-Instruct", "<|eot_id|>", "<|begin_of_text|>", {}, ""),
    "gemma": ("google-gemma-2-2b-it", "<eos>", "<bos>", {}, "no system"),
    "deepseekr1": ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", {}, ""),
    "deepseekr1 (Qwen distill)": ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "<｜end▁of▁sentence｜>",
                                  "<｜begin▁of▁sentence｜>", {"enable_thinking": True}, ""),  # llama.cpp added the variable
    "llama3": ("pinned:Llama-3", "<|eot_id|>", "<|begin_of_text|>", {}, "prompt always"),
    "phi4": ("pinned:phi-4", "<|im_end|>", None, {}, "prompt always"),
    "chatglm3": ("pinned:ChatGLM3", "</s>", None, {}, "eos suffix"),
    "glm4": ("pinned:ChatGLM4", "<|endoftext|>", None, {}, "eos suffix"),
    "deepseek": ("pinned:DeepSeek-V2", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", {}, ""),
    "gemma (Gemma 1)": ("pinned:google/gemma-7b-it", "<eos>", "<bos>", {}, "no system; bos by tokenizer"),
    "mistral_v1": ("pinned:mistralai/Mistral-7B-Instruct-v0.2 (NOTE: Old pre-v1 without a system prompt)", "</s>", "<s>",
                   {}, "no system"),
    # Mistral's v3 Jinja template drops a system message unless the conversation ends with a user turn; the built-in
    # follows mistral-common (Mistral's reference tokenizer), which puts it in the last user turn: test_mistral_*
    "mistral": ("pinned:Mistral-Large-Instruct-2407 (mistralai 'v3' template; modified to have system prompt at start)",
                "</s>", "<s>", {}, "system: see mistral-common"),
}


@pytest.fixture(scope="module")
def pinned():
    from real import llama_cpp_pinned_templates

    return llama_cpp_pinned_templates()


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_equals_the_official_template(name, official, pinned, tiny_tokenizer):
    """Training texts and generation prompts, with and without a system turn, one and two turns."""
    from ftkit.templates import get_template

    source, eos, bos, kwargs, differs = BUILTINS[name]
    tok = host(tiny_tokenizer, pinned[source[7:]] if source.startswith("pinned:") else official[source])
    tok.add_special_tokens({"eos_token": eos, **({"bos_token": bos} if bos else {})})
    if source == "pinned:ChatGLM3":  # its template builds the role tokens by concatenation; the real tokenizer has them
        tok.add_tokens([f"<|{role}|>" for role in ("system", "user", "assistant", "observation")], special_tokens=True)
    builtin = get_template(name.split()[0], tok)
    for label, conversation in CONVERSATIONS.items():
        has_system = conversation[0]["role"] == "system"
        if has_system and differs.startswith("no system"):
            with pytest.raises(Exception, match="(?i)system role not supported|roles must alternate|Only user and"):
                tok.apply_chat_template(conversation, tokenize=False)
            continue
        asked = conversation[:-1]
        prompt = tok.apply_chat_template(asked, tokenize=False, add_generation_prompt=True, **kwargs)
        assert builtin.render(asked, add_generation_prompt=True).text == \
            (bos + prompt if differs.endswith("bos by tokenizer") else prompt), label
        if has_system and differs.startswith("system"):
            continue
        official_text = tok.apply_chat_template(conversation, tokenize=False, **kwargs)
        mine = builtin.render(conversation)
        if differs == "prompt always":
            official_text = official_text.removesuffix(builtin.header)
        if differs == "eos suffix":
            official_text += eos
        if differs.endswith("bos by tokenizer"):
            official_text = bos + official_text
        assert mine.text == official_text, label
        trained = [mine.text[a:b] for a, b in mine.spans]
        if differs == "eos suffix":  # each answer, then the closing eos
            answers = [m["content"] for m in conversation if m["role"] == "assistant"]
            assert trained == [builtin.assistant.replace("{content}", a) for a in answers] + [eos], label
        elif not differs.startswith("prompt") and (not kwargs or name.startswith("deepseekr1")):
            ref = TokenizerTemplate(tok).render(conversation)  # the built-in trains what `auto` trains on the official
            if builtin.suffix and trained[-1] == builtin.suffix:
                trained = trained[:-1]  # Phi's built-in also trains the text's closing <|endoftext|>
            assert trained == [ref.text[a:b] for a, b in ref.spans], label


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


def test_auto_falls_back_by_family_and_vocabulary(tmp_path):
    """A tokenizer without a chat_template gets its family's built-in; Phi-4 shares model_type phi3 with Phi-3 and is
    told apart by its vocabulary (100,352 tokens against 32,064)."""
    import shutil

    from ftkit.architectures import default_template
    from ftkit.model import load_tokenizer
    from real import real_tokenizer

    assert default_template("phi3", 32064) == "phi" and default_template("phi3", 100352) == "phi4"
    assert default_template("deepseek_v3", 129280) == "deepseek3" and default_template("gemma3_text", 262144) == "gemma3"
    for vocab, expected in (("phi-3", "phi"), ("deepseek-llm", "phi4")):  # deepseek-llm: 102,400 tokens
        folder = tmp_path / vocab
        shutil.copytree(real_tokenizer(vocab), folder)
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        (folder / "config.json").write_text('{"model_type": "phi3"}')
        tok = load_tokenizer(str(folder))
        tok.chat_template = None
        from ftkit.templates import get_template

        assert get_template("auto", tok, "phi3").name == expected, (vocab, len(tok))


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def tool_chat():
    from ftkit.data import Conversation

    return Conversation([
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": '{"temp_c": 22}'},
        {"role": "assistant", "content": "It is 22 degrees in Paris."},
    ], tools=[WEATHER])


@pytest.mark.parametrize("source", ["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "meta-llama-Llama-3.1-8B-Instruct",
                                    "mistralai-Mistral-Nemo-Instruct-2407", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use"])
def test_tool_calls_are_trained_and_tool_results_are_not(source, official, tiny_tokenizer):
    tok = host(tiny_tokenizer, official[source])
    template, chat = TokenizerTemplate(tok), tool_chat()
    r = template.render(chat, tools=chat.tools)
    assert r.text == tok.apply_chat_template(list(chat), tools=chat.tools, tokenize=False)
    call, answer = (r.text[a:b] for a, b in r.spans)
    assert "get_weather" in call and "Paris" in call and call.endswith(template.markers)  # name, arguments, end of turn
    assert "It is 22 degrees in Paris." in answer and answer.endswith(template.markers)  # (Qwen3: a think block first)
    assert not any(s in call + answer for s in ("temp_c", "Weather in Paris?", "Use tools."))


def test_reasoning_is_trained_where_the_template_keeps_it(official, tiny_tokenizer):
    from ftkit.templates import get_template

    history = [{"role": "user", "content": "Hi there"},
               {"role": "assistant", "content": "Hello friend.", "reasoning_content": "A greeting."},
               {"role": "user", "content": "2+2?"}]
    for last in ({"role": "assistant", "content": "4", "reasoning_content": "Add them."},
                 {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"}):  # Qwen3 / R1 data: inline
        conversation = [*history, last]
        # Qwen3's official template keeps the last answer's reasoning and drops earlier ones; the built-in equals it
        tok = host(tiny_tokenizer, official["Qwen-Qwen3-0.6B"])
        auto, builtin = TokenizerTemplate(tok).render(conversation), get_template("qwen3", tok).render(conversation)
        assert builtin.text == auto.text and "A greeting." not in auto.text
        trained = [auto.text[a:b] for a, b in auto.spans]
        assert trained == ["Hello friend.<|im_end|>", "<think>\nAdd them.\n</think>\n\n4<|im_end|>"]
        assert [builtin.text[a:b] for a, b in builtin.spans] == trained
        # R1's official (distill) template drops all reasoning: auto trains the answers it shows; the deepseekr1
        # built-in keeps the last answer's reasoning, after the "<think>\n" its generation prompt already holds
        tok = host(tiny_tokenizer, official["deepseek-ai-DeepSeek-R1-Distill-Llama-8B"])
        tok.add_special_tokens({"eos_token": "<｜end▁of▁sentence｜>"})
        auto = TokenizerTemplate(tok).render(conversation)
        assert "Add them." not in auto.text and auto.text[auto.spans[-1][0]:auto.spans[-1][1]] == "4<｜end▁of▁sentence｜>"
        builtin = get_template("deepseekr1", tok).render(conversation)
        assert builtin.text.endswith("<｜Assistant｜><think>\nAdd them.\n</think>\n\n4<｜end▁of▁sentence｜>")
        assert builtin.text[builtin.spans[-1][0]:builtin.spans[-1][1]] == "Add them.\n</think>\n\n4<｜end▁of▁sentence｜>"
        assert builtin.text[:builtin.spans[-1][0]] == get_template("deepseekr1", tok).render(
            conversation[:-1], add_generation_prompt=True).text


def test_a_run_says_when_its_template_drops_the_reasoning_it_was_given(official, tiny_tokenizer, workdir):
    import json

    import ftkit
    from ftkit.data import encode
    from ftkit.templates import get_template
    from ftkit.training import _reasoning_note
    from conftest import base_config

    convs = [[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning_content": "Add."}]]
    tok = host(tiny_tokenizer, official["deepseek-ai-DeepSeek-R1-Distill-Llama-8B"])
    assert encode(convs, tok, TokenizerTemplate(tok), 4096)[1].reasoning_lost == 1  # R1's official drops it
    assert encode(convs, tok, get_template("deepseekr1", tok), 4096)[1].reasoning_lost == 0
    # tiny's own template (ChatML) renders no reasoning: a run on such data says so before it trains
    (workdir / "r.jsonl").write_text("\n".join(json.dumps({"messages": c}) for c in convs * 8))
    plan = ftkit.plan(base_config(workdir / "run", dataset=str(workdir / "r.jsonl")))
    assert plan.data.stats.reasoning_lost == 8 - len(plan.data.eval)
    assert "reasoning in their final answer that template auto does not render" in _reasoning_note(plan)



@pytest.mark.parametrize("name, source, kwargs", [
    ("qwen", "Qwen-Qwen2.5-7B-Instruct", {}), ("qwen3", "Qwen-Qwen3-0.6B", {}),
    ("qwen3_nothink", "Qwen-Qwen3-0.6B", {"enable_thinking": False})])
def test_qwen_builtins_write_qwens_tool_format(name, source, kwargs, official, tiny_tokenizer):
    """Tools in the system turn, calls after the answer's text, results in one user turn: equal to the official
    template, with and without a system message, two calls answered at once; the calls trained as `auto` trains
    them."""
    from ftkit.data import Conversation
    from ftkit.templates import get_template

    tok = host(tiny_tokenizer, official[source])
    builtin, chat = get_template(name, tok), tool_chat()
    two = Conversation([*list(chat)[1:2], {"role": "assistant", "content": "Checking both.", "tool_calls": [
        chat[2]["tool_calls"][0], {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "{\"temp_c\": 22}"}, {"role": "tool", "content": "{\"temp_c\": 30}"},
        {"role": "assistant", "content": "22 and 30."}], chat.tools)
    for conversation in (chat, Conversation(list(chat)[1:], chat.tools), two):
        mine = builtin.render(conversation, tools=conversation.tools)
        assert mine.text == tok.apply_chat_template(list(conversation), tools=conversation.tools, tokenize=False,
                                                    **kwargs)
        prompt = builtin.render(conversation[:-1], add_generation_prompt=True, tools=conversation.tools).text
        assert prompt == tok.apply_chat_template(list(conversation[:-1]), tools=conversation.tools, tokenize=False,
                                                 add_generation_prompt=True, **kwargs)
        ref = get_template("auto", tok, enable_thinking=kwargs.get("enable_thinking")).render(
            conversation, tools=conversation.tools)
        assert [mine.text[a:b] for a, b in mine.spans] == [ref.text[a:b] for a, b in ref.spans]
