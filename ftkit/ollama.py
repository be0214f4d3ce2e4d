"""An Ollama Modelfile for an exported GGUF: FROM, the run's chat template in Ollama's template language (Go's
text/template over `.Messages` and `.System`), its stop strings and its default system text.

A built-in template is written from its parts, so the prompt Ollama renders for a conversation is the text ftkit
trained on (tests execute it with Go's text/template as Ollama calls it). A tokenizer's own template (`template:
auto`) is written as the built-in that renders the same probes, when one does; otherwise no TEMPLATE is written
and Ollama chooses one from the chat template stored in the GGUF. Tool calls are not written (ftkit's tool turns
need the tool list, which Ollama passes its own way); a tool result is written as the template writes one.
"""
from __future__ import annotations

import json
from pathlib import Path

from ftkit.templates import SAVE_PROBES, TEMPLATES, Template, TokenizerTemplate

NOT_LAST = "ne (len (slice $.Messages $i)) 1"  # inside the range over .Messages: this message is not the last one


def _text(s: str) -> str:
    """Literal template text: as it is, unless it holds an action delimiter."""
    return "{{ " + _string(s) + " }}" if "{{" in s or "}}" in s else s


def _string(s: str) -> str:
    """A Go string literal (JSON's escapes are Go's, for the characters json writes escaped)."""
    return json.dumps(s, ensure_ascii=False)


def go_template(t: Template, drop_prefix: bool = False) -> str:
    """`t` as an Ollama TEMPLATE. `drop_prefix`: leave out the template's prefix (the bos token), which llama.cpp
    adds itself when the GGUF says add_bos_token."""
    fold = not t.system  # no system role: the system text joins the first (Mistral v0.3: the last) user turn
    sp, rest = t.system_in_user.split("{system}")
    sm, spost = rest.split("{content}")
    up, upost = t.user.split("{content}")
    ap, apost = t.assistant.split("{content}")
    tool = t.tool or t.user
    tp, tpost = tool.split("{content}")
    if t.tool_format == "qwen":
        tp, tpost = tp + "<tool_response>\n", "\n</tool_response>" + tpost
    out = [] if drop_prefix or not t.prefix else [_text(t.prefix)]
    out.append("{{ $system := or .System " + _string(t.default_system) + " }}")
    if t.system:
        pre, post = t.system.split("{content}")
        turn = _text(pre) + "{{ $system }}" + _text(post)
        out.append(turn if t.always_system else "{{ if $system }}" + turn + "{{ end }}")
    else:
        out.append('{{ $fold := -1 }}{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" }}'
                   + ("{{ $fold = $i }}" if t.system_last else "{{ if lt $fold 0 }}{{ $fold = $i }}{{ end }}")
                   + "{{ end }}{{ end }}")
    out.append('{{ $lastRole := "" }}{{ range $i, $m := .Messages }}{{ $lastRole = $m.Role }}')
    out.append('{{ if eq $m.Role "user" }}' + _text(up))
    if fold:
        out.append("{{ if and $system (eq $i $fold) }}" + _text(sp) + "{{ $system }}" + _text(sm) + "{{ end }}")
    out.append("{{ $m.Content }}" + _text(upost))
    out.append('{{ else if eq $m.Role "tool" }}' + _text(tp) + "{{ $m.Content }}" + _text(tpost))
    out.append('{{ else if eq $m.Role "assistant" }}' + _text(t.header + ap) + "{{ $m.Content }}")
    out.append("{{ if " + NOT_LAST + " }}" + _text(apost + t.sep) + "{{ end }}")  # the last one is continued
    out.append("{{ end }}{{ end }}")
    out.append('{{ if ne $lastRole "assistant" }}' + _text(t.header + t.prompt_think) + "{{ end }}")
    return "".join(out)


def matching_builtin(template: TokenizerTemplate) -> Template | None:
    """The built-in template that renders what the tokenizer's own template renders (the probe conversations,
    with and without a generation prompt), if one does."""
    probes = SAVE_PROBES + [p[:-1] for p in SAVE_PROBES]
    want = [(template.render(p, add_generation_prompt=p[-1]["role"] == "user").text) for p in probes]
    for built in TEMPLATES.values():
        bound = built.bind(template.tokenizer)
        try:
            if [bound.render(p, add_generation_prompt=p[-1]["role"] == "user").text for p in probes] == want:
                return bound
        except Exception:  # noqa: BLE001, S112 - a built-in that cannot render a probe is not the match
            continue
    return None


def modelfile(gguf: Path, template, add_bos: bool = False, bos: str | None = None) -> tuple[str, str]:
    """(the Modelfile's text, a line saying what its TEMPLATE is) for `gguf`, chatted with as `template`."""
    lines = [f"FROM ./{gguf.name}"]
    built = matching_builtin(template) if isinstance(template, TokenizerTemplate) else template
    if built is None:
        note = ("no TEMPLATE: no built-in renders like the tokenizer's own template, so Ollama chooses one from the "
                "chat template stored in the GGUF")
    else:
        text = go_template(built, drop_prefix=add_bos and bool(bos) and built.prefix == bos)
        if '"""' in text:
            raise ValueError(f"the {built.name} template holds three double quotes, which a Modelfile cannot quote")
        lines.append(f'TEMPLATE """{text}"""')
        if built.default_system:
            lines.append(f'SYSTEM """{built.default_system}"""')
        note = f"TEMPLATE: ftkit's {built.name} template" + (
            "" if built is template else " (renders as the tokenizer's own)")
    lines += [f"PARAMETER stop {_string(s)}" for s in dict.fromkeys(template.stop) if s]
    return "\n".join(lines) + "\n", note
