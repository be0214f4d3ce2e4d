"""Ollama Modelfiles: each built-in template written in Ollama's template language renders, when executed by Go's
text/template as Ollama's server executes it (tests/go/ollama_render.go), the text ftkit renders for the same
conversation. Needs Go (Debian: golang-go; .ci/run installs it); skips without it."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftkit.ollama import go_template
from ftkit.templates import TEMPLATES

HERE = Path(__file__).parent
GO = shutil.which("go")
needs_go = pytest.mark.skipif(GO is None, reason="no Go toolchain (Debian: apt-get install golang-go)")

TWO_TURNS = [{"role": "user", "content": "What is LoRA?"},
             {"role": "assistant", "content": "A low-rank \"adapter\" {{ trained }} on top."},
             {"role": "user", "content": "用中文再说一遍。"}]
CONVERSATIONS = [
    TWO_TURNS,
    [{"role": "system", "content": "Answer in one line."}] + TWO_TURNS,
    TWO_TURNS[:1],
    [{"role": "system", "content": "Be brief."}] + TWO_TURNS[:1],
]


def ollama_render(cases: list[tuple[str, list[dict]]]) -> list[str]:
    """Each (TEMPLATE, messages) rendered by Go's text/template as Ollama renders a chat prompt."""
    cache = Path(os.environ.get("FTKIT_REAL_CACHE") or Path.home() / ".cache" / "ftkit" / "real") / "go-build"
    env = {**os.environ, "GOCACHE": str(cache), "GO111MODULE": "off"}
    payload = json.dumps([{"template": t, "messages": m} for t, m in cases])
    p = subprocess.run([GO, "run", str(HERE / "go" / "ollama_render.go")], input=payload, capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@needs_go
def test_every_builtin_renders_in_ollama_as_in_ftkit():
    tokenizer = SimpleNamespace(eos_token="</s>")
    cases, want = [], []
    for name, template in TEMPLATES.items():
        bound = template.bind(tokenizer)
        for messages in CONVERSATIONS:
            cases.append((go_template(bound), messages))
            want.append((name, messages, bound.render(messages, add_generation_prompt=True).text))
        # llama.cpp adds the bos token itself where the GGUF says so: the template leaves it out
        cases.append((go_template(bound, drop_prefix=True), TWO_TURNS))
        want.append((name, "no prefix", bound.render(TWO_TURNS, add_generation_prompt=True).text[len(bound.prefix):]))
    got = ollama_render(cases)
    wrong = [(name, m, w, g) for (name, m, w), g in zip(want, got) if w != g]
    assert not wrong, f"{len(wrong)} of {len(want)} differ; first: {wrong[0]}"


@needs_go
def test_an_exported_run_has_a_modelfile_that_renders_as_its_template(workdir):
    """The Modelfile beside an exported run: FROM the file, the run's template (tiny's chatml), its stops; executed
    as Ollama does, it renders the run's chat template for a two-turn conversation."""
    import ftkit
    from conftest import base_config
    from ftkit.generation import load

    run = ftkit.train(base_config(workdir / "run", max_steps=1), console=False)
    out = ftkit.export_gguf(run.output_dir, console=False)
    text = out.with_suffix(".Modelfile").read_text(encoding="utf-8")
    assert text.startswith(f"FROM ./{out.name}\n") and 'PARAMETER stop "<|im_end|>"' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    _, _, run_template = load(str(run.output_dir))
    for messages in CONVERSATIONS[:2]:
        assert ollama_render([(template, messages)]) == [run_template.render(messages, True).text]


def test_a_tokenizer_template_is_written_as_the_builtin_that_renders_it(tiny_tokenizer):
    """template: auto: the tokenizer's own template (tiny's is ChatML) is written as the built-in that renders the
    same probes; a template no built-in renders gets no TEMPLATE (Ollama picks one from the GGUF's)."""
    from ftkit.ollama import modelfile
    from ftkit.templates import TokenizerTemplate

    text, note = modelfile(Path("m.gguf"), TokenizerTemplate(tiny_tokenizer))
    assert "TEMPLATE" in text and note == "TEMPLATE: ftkit's chatml template (renders as the tokenizer's own)"
    odd = SimpleNamespace(**{k: getattr(tiny_tokenizer, k) for k in ("eos_token", "all_special_tokens")})
    odd.get_added_vocab = tiny_tokenizer.get_added_vocab
    odd.chat_template = "x"
    odd.apply_chat_template = lambda messages, tokenize, add_generation_prompt, **kw: "".join(
        f"[{m['role']}] {m['content']} <|im_end|>\n" for m in messages) + ("[assistant] " if add_generation_prompt
                                                                           else "")
    text, note = modelfile(Path("m.gguf"), TokenizerTemplate(odd))
    assert "TEMPLATE" not in text and 'PARAMETER stop "<|im_end|>"' in text and note.startswith("no TEMPLATE")
