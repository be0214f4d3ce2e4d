"""Real-world fixtures, fetched at test time into a cache (never into the repository): the official chat templates
of ~70 released models and real tokenizers (Llama 3, Qwen2, Phi-3, DeepSeek) with their tokenization test vectors,
from llama.cpp's `models/` folder as shipped inside llama-cpp-python's source distribution on PyPI, and the older
official templates llama.cpp pins in its tests/test-chat-template.cpp (Llama-3-8B, Phi-4, ChatGLM3, GLM-4-9B,
DeepSeek-LLM/V2, Gemma 1, Mistral v0.2 and v3). One helper, so a registry that cannot be reached is one clear
skip, not 70 failures.

The cache is $FTKIT_REAL_CACHE, else ~/.cache/ftkit/real.
"""
import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # its sdist vendors llama.cpp's models/ folder
PINNED = "test-chat-template.cpp"  # llama.cpp's tests: official templates pinned next to their expected output
VOCABS = {"llama-bpe": "llama", "qwen2": "qwen2", "phi-3": "phi3", "deepseek-llm": "llama"}  # -> model_type


def cache() -> Path:
    return Path(os.environ.get("FTKIT_REAL_CACHE") or Path.home() / ".cache" / "ftkit" / "real")


def _sdist(spec: str, folder: str) -> Path:
    """A package's source distribution downloaded from PyPI into `folder`; a skip naming why, when it cannot be."""
    p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", spec,
                        "-d", folder], capture_output=True, text=True, timeout=900)
    sdist = next(Path(folder).glob("*.tar.gz"), None)
    if p.returncode or sdist is None:
        reason = (p.stderr.strip().splitlines() or ["no sdist"])[-1]
        pytest.skip(f"real fixtures: pip could not download {spec} ({reason})")
    return sdist


def llama_cpp_models() -> Path:
    """llama.cpp's models/ folder, as far as the tests use it: templates/*.jinja, and ggml-vocab-NAME.gguf with its
    .inp/.out test vectors for the VOCABS (downloaded and unpacked once, ~30 s)."""
    dest = cache() / LLAMA_CPP_PYTHON.replace("==", "-")
    if (dest / "complete").exists() and (dest / PINNED).exists():
        return dest
    wanted = tuple(f"ggml-vocab-{name}.gguf" for name in VOCABS)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _sdist(LLAMA_CPP_PYTHON, tmp)
        partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "templates").mkdir(parents=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if not member.isfile() or "/vendor/llama.cpp/models/" not in member.name:
                    continue
                if "/models/templates/" in member.name and name.endswith(".jinja"):
                    (partial / "templates" / name).write_bytes(tar.extractfile(member).read())
                elif name.startswith(wanted):
                    (partial / name).write_bytes(tar.extractfile(member).read())
            pinned = next(m for m in tar.getmembers() if m.name.endswith(f"/vendor/llama.cpp/tests/{PINNED}"))
            (partial / PINNED).write_bytes(tar.extractfile(pinned).read())
        (partial / "complete-2").touch()
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(partial, dest)
    return dest


def llama_cpp_templates() -> Path:
    """The folder of official `*.jinja` chat templates."""
    return llama_cpp_models() / "templates"


def llama_cpp_pinned_templates() -> dict[str, str]:
    """The chat templates llama.cpp's tests/test-chat-template.cpp pins by model name (each test case's `.name` and
    `.template_str`, C string literals decoded)."""
    source = (llama_cpp_models() / PINNED).read_text(encoding="utf-8")
    literal = r'((?:U8C\()?(?:\s*"(?:[^"\\]|\\.)*")+\)?)'
    cases = re.findall(r"/\* \.name= \*/\s*" + literal + r",\s*/\* \.template_str= \*/\s*" + literal, source)

    def decode(lit: str) -> str:
        return "".join(ast.literal_eval(part) for part in re.findall(r'"(?:[^"\\]|\\.)*"', lit))

    return {decode(name): decode(template) for name, template in cases}


def real_tokenizer(name: str) -> Path:
    """A tokenizer-only model folder (tokenizer files and a config.json, no weights) converted by transformers from
    llama.cpp's ggml-vocab-NAME.gguf (~1-12 s each, once; needs the gguf package)."""
    dest = cache() / "tokenizers" / name
    if (dest / "config.json").exists():
        return dest
    pytest.importorskip("gguf", reason="real tokenizers are converted from GGUF files with the gguf package")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_cpp_models(), gguf_file=f"ggml-vocab-{name}.gguf")
    partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(partial)
    (partial / "config.json").write_text(f'{{"model_type": "{VOCABS[name]}"}}\n')
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return dest


def vocab_vectors(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenization test vectors for a vocabulary: (text, expected ids)."""
    folder = llama_cpp_models()
    texts = (folder / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = (folder / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(i) for i in line.split()]) for t, line in zip(texts, ids)]


def mistral_v3() -> tuple[Path, dict]:
    """Mistral 7B v0.3's real tokenizer as a tokenizer-only model folder, made from the tokenizer file inside the
    mistral-common package (Mistral's reference tokenizer), and mistral-common's own tokenizer for it in fine-tuning
    and test (serving) mode: the oracle for the `mistral` template."""
    pytest.importorskip("sentencepiece", reason="mistral-common's tokenizer file is read with sentencepiece")
    common = pytest.importorskip("mistral_common", reason="mistral-common is Mistral's reference tokenizer")
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    model = Path(common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
    reference = {mode: MistralTokenizer.from_file(str(model), mode=getattr(ValidationMode, mode))
                 for mode in ("finetuning", "test")}  # training texts; generation prompts
    dest = cache() / "tokenizers" / f"mistral-v3-{common.__version__}"
    if not (dest / "config.json").exists():
        from transformers import AutoTokenizer

        partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        shutil.copy(model, partial / "tokenizer.model")
        (partial / "tokenizer_config.json").write_text(
            '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "legacy": false}\n')
        AutoTokenizer.from_pretrained(partial).save_pretrained(partial)  # converted once: tokenizer.json
        (partial / "config.json").write_text('{"model_type": "mistral"}\n')
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(partial, dest)
    return dest, reference


LLAMA_FACTORY = "llamafactory==0.9.5"  # its sdist carries examples/, data/ and the hparams that define its keys


LLAMA_FACTORY_SOURCES = ("src/llamafactory/hparams/", "src/llamafactory/data/", "src/llamafactory/extras/")


def llama_factory() -> Path:
    """LLaMA-Factory's source tree as far as the tests use it: examples/, data/, and src/llamafactory's hparams/ (its
    argument names), data/ and extras/ (its chat templates and tool formats); downloaded and unpacked once, 5 MB."""
    dest = cache() / LLAMA_FACTORY.replace("==", "-")
    if (dest / "complete-2").exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _sdist(LLAMA_FACTORY, tmp)
        partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                inner = Path(*Path(member.name).parts[1:])
                if member.isfile() and inner.parts and (inner.parts[0] in ("examples", "data") or
                                                        str(inner).startswith(LLAMA_FACTORY_SOURCES)):
                    (partial / inner).parent.mkdir(parents=True, exist_ok=True)
                    (partial / inner).write_bytes(tar.extractfile(member).read())
        (partial / "complete-2").touch()
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(partial, dest)
    return dest


def llama_factory_argument_names() -> dict[str, str]:
    """Every argument name LLaMA-Factory's hparams dataclasses declare, with its class."""
    names = {}
    for f in sorted((llama_factory() / "src/llamafactory/hparams").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.setdefault(item.target.id, node.name)
    return names


def llama_factory_templates() -> dict:
    """LLaMA-Factory's chat templates (its `TEMPLATES`, name -> Template with `encode_multiturn`), imported from its
    source without running its package __init__ files (they import its whole training stack): its data/template.py
    needs only its formatters, tool formats and logging; the two heavier imports on that path are stood in for,
    `datasets` (used by data_utils' loaders, not by templates) when it is not installed, and data/mm_plugin (the
    multimodal plugins, which templates hold but text encoding never calls)."""
    import importlib
    import types

    root = llama_factory() / "src" / "llamafactory"
    ours = lambda k: k == "llamafactory" or k.startswith("llamafactory.")  # noqa: E731
    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    stand_in = None
    try:
        for name, folder in (("llamafactory", root), ("llamafactory.data", root / "data"),
                             ("llamafactory.extras", root / "extras")):
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
        try:
            import datasets  # noqa: F401
        except ImportError:
            stand_in = types.ModuleType("datasets")
            stand_in.DatasetDict = stand_in.concatenate_datasets = stand_in.interleave_datasets = None
            sys.modules["datasets"] = stand_in
        plugins = types.ModuleType("llamafactory.data.mm_plugin")
        plugins.get_mm_plugin = lambda *args, **kwargs: None
        sys.modules[plugins.__name__] = plugins
        return importlib.import_module("llamafactory.data.template").TEMPLATES
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        if stand_in is not None and sys.modules.get("datasets") is stand_in:
            del sys.modules["datasets"]


# llama.cpp itself, compiled from that same sdist without its examples, tools, server and vision library (~4 min on
# 2 cores, once per machine), installed into a folder of the cache that a subprocess puts on its path
LLAMA_CPP_CMAKE = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
                   "-DLLAMA_BUILD_SERVER=OFF")


def _building(lock: Path) -> bool:
    """Whether the process named in `lock` is alive (building the wheel)."""
    try:
        os.kill(int(lock.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def llama_cpp_wheel() -> Path | str:
    """llama-cpp-python's wheel in the cache, compiled from its sdist when none is there (CMAKE_BUILD_PARALLEL_LEVEL
    cores, default all); or a line saying why there is none. A build another process is running (.ci/run starts one
    beside the tests, on the core one-thread tests leave idle) is waited for, not repeated."""
    wheels = cache() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    lock, waited = wheels / "building", time.time()
    while (wheel := next(wheels.glob("llama_cpp_python-*.whl"), None)) is None and _building(lock) and \
            time.time() - waited < 3600:
        time.sleep(5)
    if wheel is not None:
        return wheel
    lock.write_text(str(os.getpid()))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                LLAMA_CPP_PYTHON, "-d", tmp], capture_output=True, text=True, timeout=900)
            sdist = next(Path(tmp).glob("*.tar.gz"), None)
            if p.returncode or sdist is None:
                return f"pip could not download {LLAMA_CPP_PYTHON}: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
            cores = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
            env = {**os.environ, "CMAKE_ARGS": LLAMA_CPP_CMAKE, "CMAKE_BUILD_PARALLEL_LEVEL": cores}
            p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp, str(sdist)],
                               capture_output=True, text=True, timeout=3600, env=env)
            built = next(Path(tmp).glob("llama_cpp_python-*.whl"), None)
            if p.returncode or built is None:
                return f"llama-cpp-python did not build: {(p.stderr or p.stdout).strip()[-2000:]}"
            partial = wheels / (built.name + ".partial")
            shutil.copy(built, partial)
            os.replace(partial, wheels / built.name)
            return wheels / built.name
    finally:
        lock.unlink(missing_ok=True)


def llama_cpp_python() -> Path:
    """A folder holding the built llama_cpp package (and diskcache, which it imports): run Python with it on
    PYTHONPATH. The wheel is kept in the cache too, so a new folder installs without compiling."""
    dest = cache() / (LLAMA_CPP_PYTHON.replace("==", "-") + "-site")
    if (dest / "complete").exists():
        return dest
    wheel = llama_cpp_wheel()
    if isinstance(wheel, str):
        pytest.fail(wheel)
    partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(partial), str(wheel),
                        "diskcache"], capture_output=True, text=True, timeout=600)
    if p.returncode:
        pytest.skip(f"real fixtures: pip could not install llama-cpp-python's wheel ({p.stderr.strip()[-300:]})")
    (partial / "complete").touch()
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return dest


if __name__ == "__main__" and sys.argv[1:] == ["llama-cpp-wheel"]:  # .ci/run: build it beside the tests
    started = time.time()
    result = llama_cpp_wheel()
    print(f"llama-cpp-python: {result} after {time.time() - started:.0f} s", flush=True)
