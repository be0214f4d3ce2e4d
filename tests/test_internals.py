"""What ftkit/internals.py relies on is still there in the installed libraries. A failure here names the function
in ftkit/internals.py to revisit after an upgrade, before anything subtler breaks."""
import dataclasses
import inspect
import subprocess
import sys

import pytest

from ftkit import internals


def _python(code: str) -> str:
    """What `code` prints in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()


def test_atexit_handlers_can_be_run_before_a_quick_exit():
    code = ("import atexit, os\n"
            "from ftkit.internals import run_atexit_handlers\n"
            "atexit.register(print, 'handler ran')\n"
            "run_atexit_handlers()\n"
            "os._exit(0)\n")
    assert _python(code) == "handler ran", "internals.run_atexit_handlers: atexit._run_exitfuncs changed"


def test_bitsandbytes_still_has_its_cpu_repacking_flag():
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(16, 16, compute_dtype=None)
    assert hasattr(layer, internals.BNB_CPU_REPACK_FLAG), (
        f"internals.keep_bnb_trainable_layout: bitsandbytes {bnb.__version__} has no {internals.BNB_CPU_REPACK_FLAG}; "
        "check whether an eval pass still breaks 4-bit gradients on CPU (tests/test_train.py)")


def test_attention_implementation_is_readable_and_follows_set_attn_implementation(tiny_tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    model.set_attn_implementation("eager")
    assert internals.attn_implementation(model) == "eager", "internals.attn_implementation"
    model.set_attn_implementation("sdpa")
    assert internals.attn_implementation(model) == "sdpa", "internals.attn_implementation"


def test_trainer_checkpoint_save_has_the_shape_it_was_written_for():
    from transformers import Trainer
    from transformers.trainer_utils import rotate_checkpoints

    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"], \
        "internals.save_checkpoint_atomically: Trainer._save_checkpoint changed"
    assert {"output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime"} <= \
        set(inspect.signature(rotate_checkpoints).parameters), "internals.save_checkpoint_atomically: rotate_checkpoints"
    # that it still writes checkpoint-N under args.output_dir: tests/test_train.py, checkpoints land whole


def test_training_argument_fields_read_from_source_equal_the_dataclass():
    from transformers import TrainingArguments

    read = internals.training_argument_fields()
    assert read == {f.name for f in dataclasses.fields(TrainingArguments) if f.init}, \
        "internals.training_argument_fields: transformers/training_args.py changed shape"


def test_a_passthrough_key_does_not_import_torch():
    code = ("import sys\n"
            "from ftkit.config import RunConfig\n"
            "cfg = RunConfig.from_dict({'dataset': 'demo', 'weight_decay': 0.1, 'optim': 'adamw_torch'})\n"
            "assert cfg.extra == {'weight_decay': 0.1, 'optim': 'adamw_torch'}\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    assert _python(code) == "[]", "a passthrough key imported torch or transformers"
