"""Chat templates: messages -> the exact text a model family was trained on.

A template renders a conversation to text plus the character spans that are
trained (the assistant turns, each with its end-of-turn marker). Data code
tokenizes the whole text once and labels the tokens inside those spans, so
training sees exactly the tokens that inference sees.

`auto` uses the tokenizer's own Jinja `chat_template`; the built-ins below are
written from each family's published format, and each can also be emitted as
Jinja (`Template.jinja()`), which merged models carry in their tokenizer
config so a plain `transformers` pipeline formats chats the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

from ftkit.errors import ConfigError, DataError


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # trained character ranges [start, end)


@dataclass(frozen=True)
class Template:
    """A built-in template. Formats hold `{content}`; `{eos}` is the tokenizer's eos token."""

    name: str
    user: str
    assistant: str              # trained: the answer and its end-of-turn marker
    header: str = ""            # opens every assistant turn (and the generation prompt); untrained
    system: str = ""            # "" = the family has no system role ...
    system_in_user: str = "{system}\n\n{content}"  # ... so the system text joins the first user turn
    prefix: str = ""            # once, at the start (bos)
    sep: str = ""               # after each answer, untrained
    suffix: str = ""            # after the last answer of a training text; trained
    default_system: str = ""
    stop: tuple[str, ...] = ()  # end-of-turn strings that end generation
    family: str = ""

    def bind(self, tokenizer) -> "Template":
        """Fill `{eos}` with the tokenizer's eos token."""
        eos = getattr(tokenizer, "eos_token", None) or "</s>"
        fill = lambda s: s.replace("{eos}", eos)  # noqa: E731
        return replace(self, user=fill(self.user), assistant=fill(self.assistant), header=fill(self.header),
                       suffix=fill(self.suffix), sep=fill(self.sep), stop=tuple(fill(s) for s in self.stop))

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> Rendered:
        system, turns = _split_system(messages, self.default_system)
        text, spans = self.prefix, []
        if system and self.system:
            text += self.system.replace("{content}", system)
        for i, m in enumerate(turns):
            content = m["content"]
            if m["role"] == "user":
                if i == 0 and system and not self.system:
                    content = self.system_in_user.replace("{system}", system).replace("{content}", content)
                text += self.user.replace("{content}", content)
            else:
                text += self.header
                start = len(text)
                text += self.assistant.replace("{content}", content)
                spans.append((start, len(text)))
                text += self.sep
        if add_generation_prompt:
            text += self.header
        elif self.suffix:
            spans.append((len(text), len(text) + len(self.suffix)))
            text += self.suffix
        return Rendered(text, spans)

    def jinja(self) -> str:
        """The same template as a Jinja chat_template (HF conventions)."""
        q = lambda s: json.dumps(s, ensure_ascii=False)  # noqa: E731  Jinja reads JSON string escapes
        sp, sm = self.system_in_user.split("{system}")
        sm, spost = sm.split("{content}")
        up, upost = self.user.split("{content}")
        ap, apost = self.assistant.split("{content}")
        syspre, syspost = self.system.split("{content}") if self.system else ("", "")
        return (
            "{{- " + q(self.prefix) + " -}}"
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set ns = namespace(system=messages[0]['content'], start=1) -%}"
            "{%- else -%}{%- set ns = namespace(system=" + q(self.default_system) + ", start=0) -%}{%- endif -%}"
            + ("{%- if ns.system -%}{{- " + q(syspre) + " + ns.system + " + q(syspost) + " -}}{%- endif -%}"
               if self.system else "")
            + "{%- for m in messages[ns.start:] -%}"
            "{%- if m['role'] == 'user' -%}"
            + ("{%- if loop.first and ns.system -%}{%- set c = " + q(sp) + " + ns.system + " + q(sm)
               + " + m['content'] + " + q(spost) + " -%}{%- else -%}{%- set c = m['content'] -%}{%- endif -%}"
               if not self.system else "{%- set c = m['content'] -%}")
            + "{{- " + q(up) + " + c + " + q(upost) + " -}}"
            "{%- elif m['role'] == 'assistant' -%}"
            "{{- " + q(self.header) + " + " + q(ap) + " + m['content'] + " + q(apost) + " + " + q(self.sep) + " -}}"
            "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- " + q(self.header) + " -}}"
            "{%- else -%}{{- " + q(self.suffix) + " -}}{%- endif -%}"
        )


class TokenizerTemplate:
    """`auto`: the tokenizer's own chat_template, with trained spans found by rendering prefixes."""

    name = "auto"

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "template: auto needs a tokenizer with a chat_template, and this one has none; "
                f"name a built-in template ({', '.join(TEMPLATES)})")
        self.tokenizer = tokenizer
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        r = self.render(probe)
        tail = r.text[r.spans[0][0]:r.spans[0][1]].split("Hello", 1)[-1].strip()
        eos = tokenizer.eos_token
        self.stop = tuple(s for s in (tail, eos) if s)

    def _apply(self, messages, add_generation_prompt):
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> Rendered:
        text = self._apply(messages, add_generation_prompt)
        spans = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._apply(messages[:k], True)
            upto = self._apply(messages[:k + 1], False)
            if not (text.startswith(before) and text.startswith(upto) and len(upto) > len(before)):
                raise DataError(
                    "template: auto: the tokenizer's chat_template does not render conversations "
                    "prefix by prefix (it rewrites earlier turns), so answers cannot be located; "
                    f"name a built-in template ({', '.join(TEMPLATES)})")
            spans.append((len(before), len(upto)))
        return Rendered(text, spans)

    def jinja(self) -> str:
        return self.tokenizer.chat_template


def _split_system(messages: list[dict], default: str) -> tuple[str, list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return default, messages


_ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                  "Write a response that appropriately completes the request.")

TEMPLATES: dict[str, Template] = {t.name: t for t in [
    Template("default", family="generic (LLaMA-Factory's default)", system="System: {content}\n",
             user="Human: {content}\n", header="Assistant:", assistant=" {content}{eos}", sep="\n",
             stop=("{eos}",)),
    Template("alpaca", family="Alpaca / Stanford instruction format", system="{content}\n\n",
             default_system=_ALPACA_SYSTEM, user="### Instruction:\n{content}\n\n", header="### Response:\n",
             assistant="{content}{eos}", sep="\n\n", stop=("{eos}",)),
    Template("llama2", family="Llama 2 chat", system_in_user="<<SYS>>\n{system}\n<</SYS>>\n\n{content}",
             user="<s>[INST] {content} [/INST]", assistant=" {content} </s>", stop=("</s>",)),
    Template("llama3", family="Llama 3 / 3.1 / 3.2 instruct", prefix="<|begin_of_text|>",
             system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
             user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
             header="<|start_header_id|>assistant<|end_header_id|>\n\n", assistant="{content}<|eot_id|>",
             stop=("<|eot_id|>", "<|end_of_text|>")),
    Template("qwen", family="Qwen 1.5 / 2 / 2.5 (ChatML)", system="<|im_start|>system\n{content}<|im_end|>\n",
             default_system="You are a helpful assistant.", user="<|im_start|>user\n{content}<|im_end|>\n",
             header="<|im_start|>assistant\n", assistant="{content}<|im_end|>", sep="\n",
             stop=("<|im_end|>", "<|endoftext|>")),
    Template("chatml", family="ChatML without a default system (also the tiny model's)",
             system="<|im_start|>system\n{content}<|im_end|>\n", user="<|im_start|>user\n{content}<|im_end|>\n",
             header="<|im_start|>assistant\n", assistant="{content}<|im_end|>", sep="\n",
             stop=("<|im_end|>", "<|endoftext|>")),
    Template("chatglm3", family="ChatGLM3 (official fine-tuning ends the text with eos)", prefix="[gMASK]sop",
             system="<|system|>\n {content}", user="<|user|>\n {content}", header="<|assistant|>",
             assistant="\n {content}", suffix="</s>", stop=("<|user|>", "<|observation|>", "</s>")),
    Template("mistral", family="Mistral / Mixtral instruct", prefix="<s>", user="[INST] {content} [/INST]",
             assistant="{content}</s>", stop=("</s>",)),
    Template("gemma", family="Gemma / Gemma 2 / Gemma 3 instruct", prefix="<bos>",
             user="<start_of_turn>user\n{content}<end_of_turn>\n", header="<start_of_turn>model\n",
             assistant="{content}<end_of_turn>", sep="\n", stop=("<end_of_turn>", "<eos>")),
    Template("deepseek", family="DeepSeek LLM / DeepSeek-MoE chat", prefix="<｜begin▁of▁sentence｜>",
             system="{content}\n\n", user="User: {content}\n\n", header="Assistant:",
             assistant=" {content}<｜end▁of▁sentence｜>", stop=("<｜end▁of▁sentence｜>",)),
    Template("phi", family="Phi-3 / Phi-3.5 instruct", system="<|system|>\n{content}<|end|>\n",
             user="<|user|>\n{content}<|end|>\n", header="<|assistant|>\n", assistant="{content}<|end|>",
             sep="\n", suffix="<|endoftext|>", stop=("<|end|>", "<|endoftext|>")),
    Template("moss", family="MOSS (fnlp/moss-moon-003-sft)", system="{content}",
             user="<|Human|>: {content}<eoh>\n", header="<|MOSS|>:", assistant=" {content}<eom>", sep="\n",
             stop=("<eom>",)),
]}


def single_token_ids(tokenizer, texts) -> list[int]:
    """Ids of the strings that are one token for this tokenizer (end-of-turn markers), in order, once each."""
    ids = []
    for text in texts:
        tok = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tok) == 1 and tok[0] not in ids:
            ids.append(tok[0])
    return ids


def check_template_name(name: str) -> str | None:
    """None if `name` is auto or a built-in, else the problem with a suggestion."""
    if name == "auto" or name in TEMPLATES:
        return None
    import difflib

    near = difflib.get_close_matches(name, list(TEMPLATES), n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    return f"template: {name!r} is not a known template; {hint}choose auto or one of {', '.join(TEMPLATES)}"


def get_template(name: str, tokenizer, model_type: str | None = None):
    """The template to train and chat with: a built-in bound to the tokenizer, or `auto` (the tokenizer's own;
    for a tokenizer without one, the model family's default built-in)."""
    problem = check_template_name(name)
    if problem:
        raise ConfigError(problem)
    if name == "auto":
        from ftkit.architectures import DEFAULT_TEMPLATES

        fallback = DEFAULT_TEMPLATES.get(model_type or "", "auto")
        if getattr(tokenizer, "chat_template", None) or fallback == "auto":
            return TokenizerTemplate(tokenizer)
        name = fallback
    return TEMPLATES[name].bind(tokenizer)

