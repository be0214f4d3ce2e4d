"""Shared fixtures. Tests run on CPU, offline, one torch thread per process (2-core CI)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
import tempfile  # noqa: E402

os.environ.setdefault("FTKIT_CACHE_DIR", tempfile.mkdtemp(prefix="ftkit-test-cache-"))  # tokenized data, per session

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
# conversations that templates are checked on: one turn; a system turn and two turns; two turns
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "Low-rank adapters."}],
    "system, two turns": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello friend."},
                          {"role": "user", "content": "And LoRA?"}, {"role": "assistant", "content": "Small matrices."}],
    "two turns": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello friend."},
                  {"role": "user", "content": "And LoRA?"}, {"role": "assistant", "content": "Small matrices."}],
}


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Tests that run llama.cpp last: .ci/run compiles it beside the suite, and by then it is built."""
    items.sort(key=lambda item: item.get_closest_marker("llama_cpp") is not None)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from ftkit.model import load_tokenizer, resolve

    return load_tokenizer(resolve("tiny"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder (outputs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def base_config(out, **kw):
    """A few-step LoRA run on the embedded model: the shape most training tests start from."""
    cfg = dict(model_name_or_path="tiny", dataset=str(DATA / "demo_zh_en.json"), max_steps=8,
               per_device_train_batch_size=8, learning_rate=3e-3, logging_steps=1, cutoff_len=128,
               output_dir=str(out), threads=1, seed=0)
    cfg.update(kw)
    return cfg


def scored_config(out, **kw):
    """base_config plus a held-out set scored before the first and after the last step."""
    steps = kw.get("max_steps", 8)
    return base_config(out, val_size=16, eval_on_start=True, eval_steps=steps, **kw)


def eval_drop(run) -> float:
    """Held-out loss before training minus after: positive when the run learned."""
    evals = [l for _, l in run.eval_losses]
    assert len(evals) >= 2, run.metrics
    return evals[0] - evals[-1]
