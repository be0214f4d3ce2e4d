"""GGUF export (issue 17, in progress): files written with the gguf package, read back by transformers' own GGUF
loader (the oracle: a different reader than the writer), the tokenizer and the logits compared."""
import shutil

import pytest

import ftkit
from arch_configs import build
from ftkit.errors import ModelError
from ftkit.gguf_export import ARCHS, export_gguf


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0"])
def test_tiny_exports_and_loads_back_the_same(workdir, quant, capsys):
    out = export_gguf("tiny", workdir / f"tiny-{quant}.gguf", quant)
    assert out.exists() and not list(workdir.glob("*.partial.gguf"))
    assert "tokenizer gives the same ids on 4 probes" in capsys.readouterr().out


SHAPES = {"qwen3": {"head_dim": 128},  # transformers' GGUF reader takes Qwen3's head_dim as 128, as in every Qwen3
          # Gemma 2 and 3 scale attention by query_pre_attn_scalar; llama.cpp by head_dim (as in their 1-12B models)
          "gemma2": {"head_dim": 256, "query_pre_attn_scalar": 256},
          "gemma3_text": {"head_dim": 256, "query_pre_attn_scalar": 256}}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(set(ARCHS) - {"llama"}))
def test_architectures_export_in_f16_and_q8_0(workdir, arch, tiny_tokenizer):
    # (a file named just "mistral" reads back as transformers' mistral GGUF type, which its gguf reader lacks:
    # llama.cpp writes Mistral as llama)
    folder = build(arch, workdir / f"{arch}-random", tiny_tokenizer, **SHAPES.get(arch, {}))
    for quant in ("f16", "q8_0"):
        assert export_gguf(str(folder), workdir / f"{arch}-{quant}.gguf", quant, console=False).exists()


@pytest.mark.slow
@pytest.mark.parametrize("arch, vocab", [("phi3", "phi-3"), ("mistral", "mistral-v3"), ("qwen2", "qwen2"),
                                         ("llama", "llama-bpe")])
def test_real_tokenizers_are_written_as_llama_cpp_reads_them(workdir, arch, vocab):
    """Real vocabularies: Phi-3's byte-fallback BPE and Mistral v0.3's SentencePiece model as llama.cpp's llama
    vocabulary (with scores), Qwen2's and Llama 3's byte-level BPE as its gpt2 vocabulary; read back by
    transformers, each encodes the probes (English, Chinese, chat-rendered) to the same ids."""
    from transformers import AutoTokenizer

    from real import mistral_v3, real_tokenizer

    source = mistral_v3()[0] if vocab == "mistral-v3" else real_tokenizer(vocab)
    tokenizer = AutoTokenizer.from_pretrained(source)
    folder = build(arch, workdir / f"{arch}-random", tokenizer, **SHAPES.get(arch, {}))
    if (source / "tokenizer.model").exists():
        shutil.copy(source / "tokenizer.model", folder)
    assert export_gguf(str(folder), workdir / f"{arch}.gguf", "f16", console=False).exists()


def test_a_run_is_merged_then_exported(workdir):
    from conftest import base_config

    run = ftkit.train(base_config(workdir / "run", max_steps=2), console=False)
    out = export_gguf(run.output_dir, console=False)
    assert out == run.output_dir / "model-f16.gguf" and out.exists()


def test_the_command(workdir, capsys):
    from ftkit.cli import main

    assert main(["export-gguf", "--model", "tiny", "--out", str(workdir / "t.gguf"), "--quant", "q8_0"]) == 0
    assert (workdir / "t.gguf").exists() and "check: tokenizer gives the same ids" in capsys.readouterr().out
    assert ftkit.export_gguf is not None


def test_a_wrong_file_is_caught_and_nothing_kept(workdir, monkeypatch):
    """Query/key rows left in transformers' order (llama.cpp reads them interleaved): the check sees the logits
    differ, and no file is left under either name."""
    import ftkit.gguf_export as G

    monkeypatch.setattr(G, "_permute", lambda w, heads: w)
    with pytest.raises(ModelError, match="its logits differ from the model's"):
        export_gguf("tiny", workdir / "bad.gguf", "f16", console=False)
    assert not list(workdir.glob("*.gguf"))


def test_unsupported_requests_are_refused_by_name(workdir, tiny_tokenizer):
    with pytest.raises(ModelError, match="q4_k_m is a K-quant, which the gguf package reads but cannot write"):
        export_gguf("tiny", workdir / "k.gguf", "q4_k_m")
    folder = build("gpt2", workdir / "gpt2", tiny_tokenizer)
    with pytest.raises(ModelError, match="model_type 'gpt2' cannot be exported to GGUF yet"):
        export_gguf(str(folder), workdir / "g.gguf")
    folder = build("gemma", workdir / "gemma", tiny_tokenizer)
    with pytest.raises(ModelError, match="Gemma 1: transformers cannot read its GGUF back"):
        export_gguf(str(folder), workdir / "g.gguf")
