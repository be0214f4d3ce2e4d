"""GGUF export of a 0.5B model: ftkit against llama.cpp's own converter, side by side in one run.

    python bench/gguf_export.py [--quants f16,q8_0]

Builds once (under bench/.work/gguf) a randomly initialised model of Qwen2.5-0.5B's shape (24 layers, hidden 896,
494M parameters) in bf16 with Qwen2's real tokenizer (tests/real.py), saved in shards of at most 300 MB as real
checkpoints are. Then, each in its own process:

- importing what an export imports (torch, transformers, gguf, ftkit): the floor every process starts from;
- ftkit writing the file (`ftkit.gguf_export.write`, tensor by tensor from the shards), per quant;
- ftkit's whole `export_gguf` in f16: writing, loading the file back with transformers and comparing logits; and
  again as where free memory cannot hold the model twice in f32 (7B on Colab), checked tensor by tensor;
- llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python 0.3.36 sdist, which vendors llama.cpp) writing the
  same model in the same quant, its default lazy mode.

Reports the wall time and the peak memory (RSS of the process and its children, sampled every 50 ms), the peak
above the import floor as a multiple of the largest shard (the target: under 1.5x, with no output buffer held),
the ratios to llama.cpp's converter, and writes bench/results/gguf-export-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work" / "gguf"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))


def model_folder() -> Path:
    folder = WORK / "qwen2.5-0.5b-shape"
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from data_scale import save_random
    from real import real_tokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer("qwen2"))
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, dtype="bfloat16",
                         eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
    return save_random(Qwen2ForCausalLM, config, tok, folder, dtype="bfloat16", max_shard_size="300MB")


def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py with the modules it imports, unpacked from the llama-cpp-python sdist."""
    dest = WORK / "llama.cpp"
    if (dest / "convert_hf_to_gguf.py").exists():
        return dest
    from real import LLAMA_CPP_PYTHON, _sdist

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(_sdist(LLAMA_CPP_PYTHON, tmp)) as tar:
            for member in tar.getmembers():
                path = member.name.split("/vendor/llama.cpp/", 1)
                if member.isfile() and len(path) == 2 and (path[1] == "convert_hf_to_gguf.py" or path[1].startswith(
                        ("conversion/", "gguf-py/gguf/"))):
                    target = dest / path[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
    return dest


IMPORTS = "import torch, transformers, gguf, ftkit.gguf_export"
WRITE = "import sys; from pathlib import Path; from ftkit.gguf_export import write; write(Path(sys.argv[1]), " \
        "Path(sys.argv[2]), sys.argv[3])"
EXPORT = "import sys, ftkit; ftkit.export_gguf(sys.argv[1], sys.argv[2], sys.argv[3])"
# the same, as on a machine whose free memory cannot hold the model twice in f32: the check goes tensor by tensor
EXPORT_SMALL = "import ftkit.memory; ftkit.memory.available = lambda: 0; " + EXPORT


def main() -> None:
    from data_scale import measured

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quants", default="f16,q8_0")
    a = ap.parse_args()
    model, llama_cpp = model_folder(), converter()
    shards = sorted(model.glob("*.safetensors"))
    largest = max(f.stat().st_size for f in shards) / 2**20
    out = WORK / "out"
    out.mkdir(exist_ok=True)
    env = {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    py = sys.executable
    results = {"model": f"Qwen2.5-0.5B shape, bf16, {len(shards)} shards", "largest_shard_mib": largest,
               "imports": measured([py, "-c", IMPORTS], env, "imports")}
    floor = results["imports"]["peak_rss_mib"]
    for quant in a.quants.split(","):
        for f in out.glob("*.gguf"):
            f.unlink()
        results[f"ftkit write {quant}"] = measured([py, "-c", WRITE, str(model), str(out / "ftkit.gguf"), quant], env,
                                                   f"ftkit write {quant}")
        results[f"ftkit write {quant}"]["file_mib"] = (out / "ftkit.gguf").stat().st_size / 2**20
        results[f"llama.cpp convert {quant}"] = measured(
            [py, str(llama_cpp / "convert_hf_to_gguf.py"), str(model), "--outfile", str(out / "llama.gguf"),
             "--outtype", quant], env, f"llama.cpp convert {quant}")
        results[f"llama.cpp convert {quant}"]["file_mib"] = (out / "llama.gguf").stat().st_size / 2**20
    results["ftkit export_gguf f16 (logits check)"] = measured(
        [py, "-c", EXPORT, str(model), str(out / "checked.gguf"), "f16"], env, "ftkit export f16")
    results["ftkit export_gguf f16 (tensor check)"] = measured(
        [py, "-c", EXPORT_SMALL, str(model), str(out / "checked.gguf"), "f16"], env, "ftkit export f16, small RAM")

    print(f"\n{results['model']}; largest shard {largest:,.0f} MiB; import floor {floor:,.0f} MiB\n")
    print(f"{'process':<40} {'wall':>8} {'peak RSS':>10} {'above floor':>12} {'x shard':>8}")
    for name, r in results.items():
        if isinstance(r, dict):
            above = r["peak_rss_mib"] - floor
            r["above_floor_x_largest_shard"] = above / largest
            print(f"{name:<40} {r['wall_s']:>7.1f}s {r['peak_rss_mib']:>7,.0f} MiB {above:>8,.0f} MiB "
                  f"{above / largest:>7.2f}x")
    print()
    for quant in a.quants.split(","):
        f, ll = results[f"ftkit write {quant}"], results[f"llama.cpp convert {quant}"]
        line = (f"{quant}: ftkit {ll['wall_s'] / f['wall_s']:.2f}x llama.cpp's converter's speed, "
                f"{f['peak_rss_mib'] / ll['peak_rss_mib']:.2f}x its peak memory; files {f['file_mib']:,.0f} and "
                f"{ll['file_mib']:,.0f} MiB")
        results[f"summary {quant}"] = line
        print(line)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    path = BENCH / "results" / f"gguf-export-{stamp}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
