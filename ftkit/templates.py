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
import os
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
    think: str = ""             # "<think>\n{reasoning}\n</think>\n\n": written before each answer after the last user
    think_always: bool = False  # turn, even with no reasoning (Qwen3's empty block); earlier answers lose theirs
    prompt_think: str = ""      # ends the generation prompt (R1: "<think>\n"); an answer starting with it trains after it
    system_last: bool = False   # a family without a system role takes it in the last user turn (Mistral v0.3)
    always_system: bool = False  # the system turn is written even when empty (Llama 3.1's dated header)
    tool_format: str = "default"  # "qwen": tools, calls and results as Qwen2.5/Qwen3's templates write them;
    # "default": LLaMA-Factory's default tool format (tools listed after the system text, calls as "Action: NAME" /
    # "Action Input: ARGS"), for the families whose built-in does not write their own
    tool: str = ""              # a turn of tool results; "" = a user turn

    def bind(self, tokenizer) -> "Template":
        """Fill `{eos}` with the tokenizer's eos token."""
        eos = getattr(tokenizer, "eos_token", None) or "</s>"
        fill = lambda s: s.replace("{eos}", eos)  # noqa: E731
        return replace(self, user=fill(self.user), tool=fill(self.tool), assistant=fill(self.assistant), header=fill(self.header),
                       suffix=fill(self.suffix), sep=fill(self.sep), stop=tuple(fill(s) for s in self.stop),
                       prefix=fill(self.prefix), system=fill(self.system))

    def render(self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> Rendered:
        qwen = self.tool_format == "qwen"
        system, turns = _split_system(messages, self.default_system)
        text, spans = self.prefix, []
        if tools and not qwen:
            system += _default_tools(tools)  # as LLaMA-Factory joins them: right after the system text
        if tools and qwen:
            text += self.system.replace("{content}", (system + "\n\n" if system else "") + _qwen_tools(tools))
        elif (system or self.always_system) and self.system:
            text += self.system.replace("{content}", system)
        users = [i for i, m in enumerate(turns) if m["role"] == "user"]
        last_user = users[-1] if users else -1
        folded = (last_user if self.system_last else users[0]) if users and system and not self.system else None
        for i, m in enumerate(turns):
            if m["role"] == "tool":  # results, untrained: consecutive ones share one user turn, as Qwen writes them
                if i == 0 or turns[i - 1]["role"] != "tool":
                    results = [r["content"] for r in _run_of_tools(turns, i)]
                    wrap = "<tool_response>\n{}\n</tool_response>" if qwen else "{}"
                    text += (self.tool or self.user).replace("{content}", "\n".join(wrap.format(r) for r in results))
                continue
            if m["role"] == "user":
                content = m["content"]
                if i == folded:
                    content = self.system_in_user.replace("{system}", system).replace("{content}", content)
                text += self.user.replace("{content}", content)
                continue
            reasoning, answer = split_reasoning(m)
            if m.get("tool_calls"):
                calls = (_qwen_calls if qwen else _default_calls)(m["tool_calls"])
                answer = (answer + calls) if answer else calls[1:]
            block = ""
            if self.think and i > last_user and (reasoning or (self.think_always and i == len(turns) - 1)):
                block = self.think.replace("{reasoning}", reasoning)
            text += self.header
            body = block + self.assistant.replace("{content}", answer)
            start = len(text) + (len(self.prompt_think) if self.prompt_think and body.startswith(self.prompt_think)
                                 else 0)  # what the generation prompt already holds is not trained
            text += body
            spans.append((start, len(text)))
            text += self.sep
        if add_generation_prompt:
            text += self.header + self.prompt_think
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
        tp, tpost = self.think.split("{reasoning}") if self.think else ("", "")
        fold_at = "users.last" if self.system_last else "users.first"
        tools_pre, tools_post = _QWEN_TOOLS.format(tools="\0").split("\0")
        plain_system = ("if ns.system or " + ("true" if self.always_system else "false") + " -%}{{- " + q(syspre)
                        + " + ns.system + " + q(syspost) + " -}}")
        system_turn = "" if not self.system else "{%- " + plain_system + "{%- endif -%}"
        qwen = self.tool_format == "qwen"
        if qwen:  # the system turn carries the tool list when there are tools
            system_turn = (
                "{%- if tools -%}{%- set t = namespace(list='') -%}{%- for tool in tools -%}"
                "{%- set t.list = t.list + '\\n' + (tool | tojson) -%}{%- endfor -%}"
                "{{- " + q(syspre) + " + (ns.system + '\\n\\n' if ns.system else '') + " + q(tools_pre) + " + t.list + "
                + q(tools_post) + " + " + q(syspost) + " -}}{%- el" + plain_system + "{%- endif -%}")
        else:  # the default format: the tool list follows the system text, wherever the template puts that
            system_turn = _DEFAULT_TOOLS_JINJA.format(*map(q, _DEFAULT_TOOLS.format(tools="\0", names="\0")
                                                             .split("\0"))) + system_turn
        tool_pre, tool_post = (self.tool or self.user).split("{content}")
        result = "'<tool_response>\\n' + m['content'] + '\\n</tool_response>'" if qwen else "m['content']"
        tool_turns = (  # results share one user turn; calls follow the answer's text
            "{%- elif m['role'] == 'tool' -%}{%- set turns = messages[ns.start:] -%}"
            "{%- if loop.first or turns[loop.index0 - 1]['role'] != 'tool' -%}{{- " + q(tool_pre) + " -}}{%- else -%}"
            "{{- '\\n' -}}{%- endif -%}{{- " + result + " -}}"
            "{%- if loop.last or turns[loop.index0 + 1]['role'] != 'tool' -%}{{- " + q(tool_post) + " -}}{%- endif -%}")
        tool_calls = (
            "{%- if m['tool_calls'] -%}{%- set k = namespace(calls='') -%}{%- for call in m['tool_calls'] -%}"
            "{%- set f = call['function'] if call['function'] is defined else call -%}"
            + ("{%- set k.calls = k.calls + '\\n<tool_call>\\n{\"name\": \"' + f['name'] + '\", \"arguments\": ' + "
               "(f['arguments'] if f['arguments'] is string else f['arguments'] | tojson) + '}\\n</tool_call>' -%}"
               if qwen else
               "{%- set k.calls = k.calls + '\\nAction: ' + f['name'] + '\\nAction Input: ' + "
               "(f['arguments'] if f['arguments'] is string else f['arguments'] | tojson) -%}") +
            "{%- endfor -%}{%- set c = c + k.calls if c else k.calls[1:] -%}{%- endif -%}")
        return (
            "{{- " + q(self.prefix) + " -}}"
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set ns = namespace(system=messages[0]['content'], start=1) -%}"
            "{%- else -%}{%- set ns = namespace(system=" + q(self.default_system) + ", start=0) -%}{%- endif -%}"
            + system_turn
            + "{%- set users = namespace(first=-1, last=-1) -%}"
            "{%- for m in messages[ns.start:] -%}{%- if m['role'] == 'user' -%}{%- set users.last = loop.index0 -%}"
            "{%- if users.first < 0 -%}{%- set users.first = loop.index0 -%}{%- endif -%}{%- endif -%}{%- endfor -%}"
            "{%- for m in messages[ns.start:] -%}"
            "{%- if m['role'] == 'user' -%}"
            + ("{%- if loop.index0 == " + fold_at + " and ns.system -%}{%- set c = " + q(sp) + " + ns.system + "
               + q(sm) + " + m['content'] + " + q(spost) + " -%}{%- else -%}{%- set c = m['content'] -%}{%- endif -%}"
               if not self.system else "{%- set c = m['content'] -%}")
            + "{{- " + q(up) + " + c + " + q(upost) + " -}}"
            + tool_turns
            + "{%- elif m['role'] == 'assistant' -%}"
            "{%- set c = m['content'] -%}"
            "{%- if m['reasoning_content'] is string -%}{%- set r = m['reasoning_content'].strip('\\n') -%}"
            "{%- elif '</think>' in c -%}{%- set r = c.split('</think>')[0].rstrip('\\n').split('<think>')[-1]"
            ".strip('\\n') -%}{%- set c = c.split('</think>')[-1].lstrip('\\n') -%}"
            "{%- else -%}{%- set r = '' -%}{%- endif -%}"
            + tool_calls
            + "{{- " + q(self.header) + " -}}"
            + ("{%- if loop.index0 > users.last and (r or " + ("loop.last" if self.think_always else "false") + ") -%}"
               "{{- " + q(tp) + " + r + " + q(tpost) + " -}}{%- endif -%}" if self.think else "")
            + "{{- " + q(ap) + " + c + " + q(apost) + " + " + q(self.sep) + " -}}"
            "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- " + q(self.header + self.prompt_think) + " -}}"
            "{%- else -%}{{- " + q(self.suffix) + " -}}{%- endif -%}"
        )


_QWEN_TOOLS = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
               "function signatures within <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\nFor each function "
               "call, return a json object with function name and arguments within <tool_call></tool_call> XML "
               "tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>")


def _qwen_tools(tools: list[dict]) -> str:
    """The tool list of Qwen2.5/Qwen3's system turn (each tool as transformers' `tojson` writes it)."""
    return _QWEN_TOOLS.format(tools="".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools))


def _qwen_calls(calls: list[dict]) -> str:
    """An answer's tool calls as Qwen writes them, each opened by a newline."""
    out = ""
    for call in calls:
        f = call.get("function", call)
        args = f.get("arguments", {})
        out += ('\n<tool_call>\n{"name": "' + f["name"] + '", "arguments": '
                + (args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)) + "}\n</tool_call>")
    return out


_DEFAULT_TOOLS = ("You have access to the following tools:\n{tools}Use the following format if using a tool:\n```\n"
                  "Action: tool name (one of [{names}])\nAction Input: the input to the tool, in a JSON format "
                  "representing the kwargs (e.g. ```{{\"input\": \"hello world\", \"num_beams\": 5}}```)\n```\n")


def _function(tool: dict) -> dict:
    return tool.get("function", {}) if tool.get("type") == "function" else tool


_DEFAULT_TOOLS_JINJA = (  # _default_tools in Jinja: {0}, {1}, {2} are the text around the tool list and names
    "{{%- if tools -%}}{{%- set t = namespace(text='', names='') -%}}{{%- for tool in tools -%}}"
    "{{%- set f = tool.get('function', {{}}) if tool.get('type') == 'function' else tool -%}}"
    "{{%- set params = f.get('parameters') or {{}} -%}}{{%- set required = params.get('required') or [] -%}}"
    "{{%- set a = namespace(text='') -%}}{{%- for name, arg in (params.get('properties') or {{}}).items() -%}}"
    "{{%- set a.text = a.text + '  - ' + name + ' (' + arg.get('type', '') + (', required' if name in required "
    "else '') + '): ' + arg.get('description', '') + ((', should be one of [' + (arg['enum'] | join(', ')) + ']') "
    "if arg.get('enum') else '') + ((', where each item should be ' + arg['items'].get('type', '')) if "
    "arg.get('items') else '') + '\\n' -%}}{{%- endfor -%}}"
    "{{%- set t.text = t.text + '> Tool Name: ' + f['name'] + '\\nTool Description: ' + f.get('description', '') + "
    "'\\nTool Args:\\n' + a.text + '\\n' -%}}"
    "{{%- set t.names = t.names + (', ' if not loop.first else '') + f['name'] -%}}{{%- endfor -%}}"
    "{{%- set ns.system = ns.system + {0} + t.text + {1} + t.names + {2} -%}}{{%- endif -%}}")


def _default_tools(tools: list[dict]) -> str:
    """The tool list of LLaMA-Factory's default tool format: each tool's name, description and arguments (type,
    required, allowed values, item type), then how to call one."""
    listed = ""
    for tool in map(_function, tools):
        parameters = tool.get("parameters") or {}
        args = ""
        for name, arg in (parameters.get("properties") or {}).items():
            notes = ", required" if name in (parameters.get("required") or []) else ""
            enum = f", should be one of [{', '.join(arg['enum'])}]" if arg.get("enum") else ""
            items = f", where each item should be {arg['items'].get('type', '')}" if arg.get("items") else ""
            args += f"  - {name} ({arg.get('type', '')}{notes}): {arg.get('description', '')}{enum}{items}\n"
        listed += (f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\n"
                   f"Tool Args:\n{args}\n")
    return _DEFAULT_TOOLS.format(tools=listed, names=", ".join(_function(t)["name"] for t in tools))


def _default_calls(calls: list[dict]) -> str:
    """An answer's tool calls in LLaMA-Factory's default format, each opened by a newline."""
    out = ""
    for call in calls:
        f = call.get("function", call)
        args = f.get("arguments", {})
        out += f"\nAction: {f['name']}\nAction Input: " + (args if isinstance(args, str) else
                                                             json.dumps(args, ensure_ascii=False))
    return out


def _run_of_tools(turns: list[dict], i: int) -> list[dict]:
    run = []
    while i < len(turns) and turns[i]["role"] == "tool":
        run.append(turns[i])
        i += 1
    return run


def split_reasoning(message: dict) -> tuple[str, str]:
    """(reasoning, answer) of an assistant message: its `reasoning_content`, or a `<think>...</think>` block at the
    start of its content, split as the official Qwen3 template splits it."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        return reasoning.strip("\n"), content
    if "</think>" in content:
        parts = content.split("</think>")
        return parts[0].rstrip("\n").split("<think>")[-1].strip("\n"), parts[-1].lstrip("\n")
    return "", content


class TokenizerTemplate:
    """`auto`: the tokenizer's own chat_template, rendered by transformers; the trained spans are found in the
    rendered text itself, so templates that rewrite earlier turns (Qwen3 drops the reasoning of earlier answers)
    or open a think block in their generation prompt (DeepSeek-R1) are masked correctly.

    Each assistant answer is located after the message before it; its span starts where the generation prompt
    for it ends when the text begins with that prompt (so a think block the template writes before the final
    answer is trained, as the model generates it), else at the answer itself; it ends after the end-of-turn
    marker that follows the answer. A template that does not close the last answer (it leaves it open for
    continuation) gets the marker appended to training texts, so the model still learns to stop."""

    name = "auto"
    PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]

    def __init__(self, tokenizer, options: dict | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "template: auto needs a tokenizer with a chat_template, and this one has none; "
                f"name a built-in template ({', '.join(TEMPLATES)})")
        self.tokenizer = tokenizer
        self.options = dict(options or {})  # template variables of the run (enable_thinking)
        self.kwargs: dict = dict(self.options)
        self.fold_system = False
        self.specials = sorted((t for t in {*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()} if t),
                               key=len, reverse=True)  # longest first: a token is matched whole
        self.markers, self.closes_last = self._end_of_turn()
        eos = tokenizer.eos_token
        self.stop = tuple(dict.fromkeys(s for s in (*self.markers, eos) if s))

    def _apply(self, messages, add_generation_prompt):
        if self.fold_system and messages and messages[0]["role"] == "system":
            messages = _fold_system(messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **self.kwargs)

    def _refuse(self, why: str) -> DataError:
        return DataError(f"template: auto: the tokenizer's chat_template {why}; name a built-in template "
                         f"({', '.join(TEMPLATES)})")

    def _probe(self, messages) -> str:
        """Render a probe conversation; a template written for tool use may need `tools` given (empty), and one
        that refuses a system turn (Gemma 2) gets the system text at the start of the first user turn."""
        for extra, self.fold_system in (({}, False), ({"tools": []}, False), ({}, True), ({"tools": []}, True)):
            self.kwargs = {**self.options, **extra}
            try:
                return self._apply(messages, False)
            except Exception as e:  # noqa: BLE001 - a template may raise anything on a plain conversation
                error = e
        raise self._refuse(f"cannot render a plain conversation ({type(error).__name__}: {error})") from None

    def _end_of_turn(self) -> tuple[tuple[str, ...], bool]:
        """The markers that end an answer, read off a render with a system turn and two answers: what follows the
        last answer, and what follows an earlier one (where the template ends the two differently); for a
        template that leaves the last answer open, the special token that follows an earlier one."""
        text = self._probe([{"role": "system", "content": "Be brief."}, *self.PROBE])
        first, last = text.find("Hello"), text.rfind("Ciao")
        if first < 0 or last < 0:
            raise self._refuse("does not show the answers of a plain conversation")
        after_first, after_last = text[first + len("Hello"):].lstrip(), text[last + len("Ciao"):].strip()
        specials = self.specials

        def first_token(s: str) -> str:
            return next((t for t in specials if s.startswith(t)), "")

        def lead(s: str) -> str:  # the special tokens that s starts with, one after another
            run = ""
            while tok := next((t for t in specials if s.startswith(run + t)), None):
                run += tok
            return run

        # the special token that opens a turn (<|im_start|>, <|start|>, <|START_OF_TURN_TOKEN|>) begins the next
        # turn, not the end of this one: a marker stops before it. The generation prompt shows it: it opens the
        # assistant's turn.
        asked = [{"role": "system", "content": "Be brief."}, self.PROBE[0]]
        plain, prompt = self._apply(asked, False), self._apply(asked, True)
        opener = first_token(prompt[len(plain):].lstrip()) if prompt.startswith(plain) else ""

        def closing(run: str) -> str:
            cut = run.find(opener, 1) if opener else -1
            return run[:cut] if cut > 0 else run

        shared = closing(lead(os.path.commonprefix([after_first, after_last])))
        if shared:  # the same marker ends every answer
            return (shared,), True
        if after_last:  # the last answer ends otherwise than the earlier ones (gpt-oss: <|return|>, <|end|>)
            earlier = first_token(after_first) or (after_last if after_first.startswith(after_last) else "")
            return tuple(dict.fromkeys(m for m in (closing(lead(after_last)) or after_last, earlier) if m)), True
        if not first_token(after_first):
            raise self._refuse("leaves the last answer open and no special token ends an earlier one, so the "
                               "model could not learn to stop")
        return (first_token(after_first),), False

    def render(self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> Rendered:
        if tools is not None:  # for this render only
            saved, self.kwargs = self.kwargs, {**self.kwargs, "tools": tools}
            try:
                return self.render(messages, add_generation_prompt)
            finally:
                self.kwargs = saved
        text = self._apply(messages, add_generation_prompt)
        if add_generation_prompt:
            return Rendered(text, [])
        if not self.closes_last and messages and messages[-1]["role"] == "assistant":
            text += self.markers[0]  # trained: the model learns to stop where inference ends the turn
        spans, cursor, shown = [], 0, ""  # shown: the text of the message located last
        for k, m in enumerate(messages):
            if m["role"] == "system":
                continue  # a template may move the system text (into the last user turn, say)
            answer = split_reasoning(m)[1] if m["role"] == "assistant" else m["content"]
            found = next((c for c in (answer, answer.strip()) if c.strip() and text.find(c, cursor) >= 0), None)
            if m["role"] != "assistant":
                if found is None and m["role"] == "user" and m["content"].strip():
                    raise self._refuse(f"rewrites message {k} (user) so that its text no longer appears as written, "
                                       "so the answers around it cannot be located")
                if found:  # tool results: where found
                    cursor, shown = text.find(found, cursor) + len(found), found
                continue
            head = self._apply(messages[:k], True)
            tail = head[head.rfind(shown) + len(shown):] if shown and shown in head else None  # what the prompt adds
            if text.startswith(head) and (not spans or spans[-1][1] <= len(head)):
                prompt_end = len(head)
            elif tail is not None and text.startswith(tail, cursor):  # the template renders earlier turns otherwise
                prompt_end = cursor + len(tail)  # (Mistral moves the system text): after the prompt's last part
            elif tail and not found and m.get("tool_calls"):  # a call the prompt does not lead into as it is (Qwen3
                prompt_end = cursor + len(self._shared_lead(tail, text[cursor:]))  # thinking off): after the part
            else:  # of the prompt the text holds
                prompt_end = None
            if found is None and not (m.get("tool_calls") and prompt_end is not None):
                raise self._refuse(f"rewrites message {k} (assistant) so that its text no longer appears as written, "
                                   "so its answer cannot be located")
            pos = text.find(found, cursor) if found else prompt_end
            if prompt_end is not None and prompt_end <= pos:
                start = prompt_end  # what the model generates after the prompt, a think block included
            else:
                start = pos
            cursor = pos + len(found) if found else pos
            for call in m.get("tool_calls") or []:  # the calls follow the text; each shows its function's name
                name = (call.get("function") or call).get("name", "")
                at = text.find(name, cursor)
                if not name or at < 0:
                    raise self._refuse(f"does not show the tool call {name!r} of message {k}")
                cursor = at + len(name)
            end = cursor
            rest = text[end:].lstrip()
            marker = next((mk for mk in self.markers if rest.startswith(mk)), None)
            if marker:
                end = len(text) - len(rest) + len(marker)
            elif m.get("tool_calls"):  # the rest of the call (its arguments) runs to the end-of-turn marker
                ends = [i + len(mk) for mk in self.markers if (i := text.find(mk, end)) >= 0]
                end = min(ends) if ends else len(text)
            spans.append((start, end))
            cursor, shown = end, text[pos:end]
        return Rendered(text, spans)

    def _shared_lead(self, a: str, b: str) -> str:
        """The common start of a and b, cut back to a line end or a special token's end."""
        shared = os.path.commonprefix([a, b])
        while shared and not (shared.endswith("\n") or any(shared.endswith(t) for t in self.specials)):
            shared = shared[:-1]
        return shared

    def jinja(self) -> str:
        return self.tokenizer.chat_template


def _fold_system(messages: list[dict]) -> list[dict]:
    """The system text at the start of the first user turn, for templates without a system role."""
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
        return [{**rest[0], "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


def _split_system(messages: list[dict], default: str) -> tuple[str, list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return default, messages


_THINK = "<think>\n{reasoning}\n</think>\n\n"
_GEMMA_TOOL = "<start_of_turn>tool\n{content}<end_of_turn>\n"  # Gemma's own templates take no tool turn; this is
# how its role-named turns (and LLaMA-Factory's gemma templates) write one
_ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                  "Write a response that appropriately completes the request.\n\n")

TEMPLATES: dict[str, Template] = {t.name: t for t in [
    Template("default", family="LLaMA-Factory's default (every turn ends with eos)",
             system="System: {content}{eos}\n", user="Human: {content}{eos}\n", header="Assistant:",
             assistant="{content}{eos}", sep="\n", stop=("{eos}",)),
    Template("alpaca", family="Alpaca / Stanford instruction format (a system text is written as it is, before the "
             "first instruction, as LLaMA-Factory writes it)", system="{content}", default_system=_ALPACA_SYSTEM,
             user="### Instruction:\n{content}\n\n", header="### Response:\n", assistant="{content}{eos}",
             sep="\n\n", stop=("{eos}",)),
    Template("llama2", family="Llama 2 chat", system_in_user="<<SYS>>\n{system}\n<</SYS>>\n\n{content}",
             user="<s>[INST] {content} [/INST]", assistant=" {content} </s>", stop=("</s>",)),
    Template("llama3", family="Llama 3 instruct (Meta-Llama-3-8B-Instruct; 3.1 and later: llama3_1)",
             prefix="<|begin_of_text|>",
             system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
             user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
             header="<|start_header_id|>assistant<|end_header_id|>\n\n", assistant="{content}<|eot_id|>",
             stop=("<|eot_id|>", "<|end_of_text|>")),
    Template("llama3_1", family="Llama 3.1 / 3.2 / 3.3 instruct (a system header with the knowledge cutoff and the "
             "template's default date, always)", prefix="<|begin_of_text|>",
             system="<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                    "Today Date: 26 Jul 2024\n\n{content}<|eot_id|>", always_system=True,
             user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
             header="<|start_header_id|>assistant<|end_header_id|>\n\n", assistant="{content}<|eot_id|>",
             stop=("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")),
    Template("qwen", family="Qwen2.5 instruct (ChatML; Qwen2's default system was 'You are a helpful assistant.')",
             system="<|im_start|>system\n{content}<|im_end|>\n",
             default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
             user="<|im_start|>user\n{content}<|im_end|>\n",
             header="<|im_start|>assistant\n", assistant="{content}<|im_end|>", sep="\n", tool_format="qwen",
             stop=("<|im_end|>", "<|endoftext|>")),
    Template("qwen3", family="Qwen3 (thinking: the model writes <think>...</think> before the final answer)",
             system="<|im_start|>system\n{content}<|im_end|>\n", user="<|im_start|>user\n{content}<|im_end|>\n",
             header="<|im_start|>assistant\n", assistant="{content}<|im_end|>", sep="\n", think=_THINK,
             think_always=True, tool_format="qwen", stop=("<|im_end|>", "<|endoftext|>")),
    Template("qwen3_nothink", family="Qwen3 with thinking off (enable_thinking=False: the empty think block is "
             "part of the prompt)", system="<|im_start|>system\n{content}<|im_end|>\n",
             user="<|im_start|>user\n{content}<|im_end|>\n", header="<|im_start|>assistant\n",
             assistant="{content}<|im_end|>", sep="\n", think=_THINK, think_always=True,
             prompt_think="<think>\n\n</think>\n\n", tool_format="qwen", stop=("<|im_end|>", "<|endoftext|>")),
    Template("chatml", family="ChatML without a default system (also the tiny model's); Qwen's tool format",
             system="<|im_start|>system\n{content}<|im_end|>\n", user="<|im_start|>user\n{content}<|im_end|>\n",
             header="<|im_start|>assistant\n", assistant="{content}<|im_end|>", sep="\n", tool_format="qwen",
             stop=("<|im_end|>", "<|endoftext|>")),
    Template("chatglm3", family="ChatGLM3-6B (the official fine-tuning ends the text with eos)", prefix="[gMASK]sop",
             system="<|system|>\n {content}", user="<|user|>\n {content}", header="<|assistant|>",
             assistant="\n {content}", suffix="{eos}", stop=("<|user|>", "<|observation|>", "{eos}")),
    Template("glm4", family="GLM-4-9B-chat (the official fine-tuning ends the text with eos)", prefix="[gMASK]<sop>",
             system="<|system|>\n{content}", user="<|user|>\n{content}", header="<|assistant|>\n",
             assistant="{content}", suffix="{eos}", stop=("<|user|>", "<|observation|>", "{eos}")),
    Template("mistral", family="Mistral 7B Instruct v0.3, Mixtral 8x22B (tokenizer v3; the system text joins the last "
             "user turn)", prefix="<s>", user="[INST] {content}[/INST]", assistant=" {content}</s>", system_last=True,
             stop=("</s>",)),
    Template("mistral_v1", family="Mistral 7B Instruct v0.1/v0.2, Mixtral 8x7B (tokenizer v1)", prefix="<s>",
             user="[INST] {content} [/INST]", assistant="{content}</s>", stop=("</s>",)),
    Template("gemma", family="Gemma / Gemma 2 instruct (no system role: it joins the first user turn)",
             prefix="<bos>", user="<start_of_turn>user\n{content}<end_of_turn>\n", header="<start_of_turn>model\n",
             assistant="{content}<end_of_turn>", sep="\n", tool=_GEMMA_TOOL, stop=("<end_of_turn>", "<eos>")),
    Template("gemma3", family="Gemma 3 instruct, text (the system text opens the first user turn)", prefix="<bos>",
             user="<start_of_turn>user\n{content}<end_of_turn>\n", header="<start_of_turn>model\n",
             assistant="{content}<end_of_turn>", sep="\n", tool=_GEMMA_TOOL, stop=("<end_of_turn>", "<eos>")),
    Template("deepseek", family="DeepSeek LLM / DeepSeek-V2 chat", prefix="<｜begin▁of▁sentence｜>",
             system="{content}\n\n", user="User: {content}\n\n", header="Assistant:",
             assistant=" {content}<｜end▁of▁sentence｜>", stop=("<｜end▁of▁sentence｜>",)),
    Template("deepseek3", family="DeepSeek-V3", prefix="<｜begin▁of▁sentence｜>", system="{content}",
             user="<｜User｜>{content}", header="<｜Assistant｜>", assistant="{content}<｜end▁of▁sentence｜>",
             stop=("<｜end▁of▁sentence｜>",)),
    Template("deepseekr1", family="DeepSeek-R1 and its distills (the prompt opens a think block; reasoning in the "
             "last answer is trained, earlier answers lose theirs)", prefix="<｜begin▁of▁sentence｜>",
             system="{content}", user="<｜User｜>{content}", header="<｜Assistant｜>",
             assistant="{content}<｜end▁of▁sentence｜>", think=_THINK, prompt_think="<think>\n",
             stop=("<｜end▁of▁sentence｜>",)),
    Template("phi", family="Phi-3 / Phi-3.5 instruct", system="<|system|>\n{content}<|end|>\n",
             user="<|user|>\n{content}<|end|>\n", header="<|assistant|>\n", assistant="{content}<|end|>",
             sep="\n", suffix="<|endoftext|>", stop=("<|end|>", "<|endoftext|>")),
    Template("phi4", family="Phi-4", system="<|im_start|>system<|im_sep|>{content}<|im_end|>",
             user="<|im_start|>user<|im_sep|>{content}<|im_end|>", header="<|im_start|>assistant<|im_sep|>",
             assistant="{content}<|im_end|>", stop=("<|im_end|>", "<|endoftext|>")),
    Template("moss", family="MOSS (fnlp/moss-moon-003-sft)", system="{content}",
             user="<|Human|>: {content}<eoh>\n", header="<|MOSS|>:", assistant=" {content}<eom>", sep="\n",
             stop=("<eom>",)),
]}


SAVE_PROBES = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"},
     {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "B"}],
]


def chat_template_to_save(template, tokenizer) -> tuple[str, str | None]:
    """The chat template a saved adapter or merged model carries, and a note when it is not the tokenizer's own.
    The tokenizer's own (official) template is kept, with its tools, dates and thinking logic, whenever the run's
    template renders what it renders; ftkit's is written only where they differ, since the model learned that."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(template, TokenizerTemplate) or not own:
        return (own or template.jinja()), (None if own else f"chat template: ftkit's {template.name} written "
                                           "(the tokenizer had none)")
    try:
        same = all(tokenizer.apply_chat_template(m, tokenize=False) == template.render(m).text and
                   tokenizer.apply_chat_template(m[:-1], tokenize=False, add_generation_prompt=True) ==
                   template.render(m[:-1], add_generation_prompt=True).text for m in SAVE_PROBES)
    except Exception:  # noqa: BLE001 - an own template that cannot render the probes is not the one trained on
        same = False
    if same:
        return own, None
    return template.jinja(), (f"chat template: ftkit's {template.name} written over the tokenizer's own, which "
                              "renders conversations differently (the model was trained on "
                              f"{template.name}); use template: auto to keep the model's own format")


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


THINKING = {"qwen3": ("qwen3", "qwen3_nothink"), "qwen3_nothink": ("qwen3", "qwen3_nothink")}  # (on, off)


@dataclass(frozen=True)
class TextTemplate:
    """Stage pt (continued pre-training): a document is its text and the tokenizer's end-of-sequence token, every
    token trained; a document longer than cutoff_len is cut into pieces of cutoff_len tokens, none dropped."""

    stop: tuple[str, ...]
    name: str = "text"
    split_long: bool = True

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "TextTemplate":
        return cls((getattr(tokenizer, "eos_token", None) or "</s>",))

    def render(self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> Rendered:
        text = "".join(m["content"] for m in messages) + self.stop[0]
        return Rendered(text, [(0, len(text))])

    def jinja(self) -> str:
        return "{% for m in messages %}{{ m['content'] }}{% endfor %}" + self.stop[0]


def get_template(name: str, tokenizer, model_type: str | None = None, enable_thinking: bool | None = None):
    """The template to train and chat with: a built-in bound to the tokenizer, or `auto` (the tokenizer's own;
    for a tokenizer without one, the model family's default built-in). `enable_thinking` (None: the template's
    default) goes to the tokenizer's template as its variable, and picks a built-in's thinking or non-thinking form."""
    problem = check_template_name(name)
    if problem:
        raise ConfigError(problem)
    if name == "auto":
        from ftkit.architectures import default_template

        fallback = default_template(model_type, len(tokenizer))
        if getattr(tokenizer, "chat_template", None) or fallback == "auto":
            options = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
            return TokenizerTemplate(tokenizer, options)
        name = fallback
    if enable_thinking is not None and name in THINKING:
        name = THINKING[name][0 if enable_thinking else 1]
    return TEMPLATES[name].bind(tokenizer)

