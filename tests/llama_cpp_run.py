"""Run by tests in a subprocess with llama-cpp-python on PYTHONPATH (tests/real.py builds it): for each job
{"gguf", "text", "steps"} on stdin, llama.cpp's tokenization of the text (special tokens parsed, no bos added) and
the tokens it generates greedily after it; JSON on stdout."""
import json
import sys

from llama_cpp import Llama

results, models = [], {}
for job in json.load(sys.stdin):
    if job["gguf"] not in models:
        models.clear()
        models[job["gguf"]] = Llama(job["gguf"], n_ctx=512, n_threads=1, n_batch=512, seed=0, verbose=False)
    llm = models[job["gguf"]]
    llm.reset()
    ids = llm.tokenize(job["text"].encode("utf-8"), add_bos=False, special=True)
    generated = []
    for token in [] if job["steps"] == 0 else llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        generated.append(int(token))
        if len(generated) == job["steps"]:
            break
    results.append({"ids": list(ids), "generated": generated})
json.dump(results, sys.stdout)
