"""Write examples/*.yaml from the dicts below, with each key's schema help as its comment.

    python scripts/make_examples.py     # tests check the files are up to date
"""
import json
from pathlib import Path

import yaml

from ftkit.config import example_yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model_name_or_path="tiny", template="auto", dataset="demo", cutoff_len=256)
RUN = dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, num_train_epochs=3.0,
           lr_scheduler_type="cosine", warmup_ratio=0.05, logging_steps=10, save_steps=500, val_size=0.05)

EXAMPLES = {
    "lora_sft.yaml": ("LoRA on the embedded tiny model (CPU, about a minute): ftkit train examples/lora_sft.yaml",
                      {**TINY, "finetuning_type": "lora", "lora_target": "all", "lora_rank": 16, "lora_alpha": 32,
                       "lora_dropout": 0.0, "learning_rate": 2.0e-3, **RUN, "output_dir": "outputs/tiny-lora"}),
    "qlora_sft.yaml": ("QLoRA: the base in 4-bit nf4 (bitsandbytes; runs on CPU here, on an 8 GB GPU for 7B models)",
                       {**TINY, "finetuning_type": "lora", "quantization_bit": 4, "quantization_type": "nf4",
                        "double_quantization": True, "lora_target": "all", "lora_rank": 64,
                        "learning_rate": 2.0e-3, **RUN, "output_dir": "outputs/tiny-qlora"}),
    "full_sft.yaml": ("Full fine-tuning: every weight trains (most memory)",
                      {**TINY, "finetuning_type": "full", "learning_rate": 5.0e-4, **RUN,
                       "output_dir": "outputs/tiny-full"}),
    "freeze_sft.yaml": ("Freeze tuning: only the last decoder layers train",
                        {**TINY, "finetuning_type": "freeze", "freeze_trainable_layers": 2, "learning_rate": 1.0e-3,
                         **RUN, "output_dir": "outputs/tiny-freeze"}),
    "llama3_lora_sft.yaml": (
        "The seed's starting point, for a GPU with internet access: copy, rename (e.g. config/my_lora.yaml), edit.\n"
        "Llama 3 8B Instruct, LoRA on all linear layers, bf16, sdpa/flash attention.",
        {"model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct", "template": "llama3", "dataset": "demo",
         "cutoff_len": 1024, "max_samples": 1000, "finetuning_type": "lora", "lora_target": "all", "lora_rank": 8,
         "learning_rate": 1.0e-4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8,
         "num_train_epochs": 3.0, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": True,
         "flash_attn": "auto", "gradient_checkpointing": True, "logging_steps": 10, "save_steps": 500,
         "val_size": 0.1, "report_to": "tensorboard", "output_dir": "outputs/llama3-8b-lora"}),
    "dpo.yaml": ("DPO on the bundled preference pairs (chosen and rejected answers), LoRA; the reference is the base "
                 "with the adapter off: ftkit train examples/dpo.yaml",
                 {**TINY, "dataset": "demo_dpo", "stage": "dpo", "pref_beta": 0.1, "pref_loss": "sigmoid",
                  "finetuning_type": "lora", "lora_target": "all", "lora_rank": 16, "learning_rate": 5.0e-4,
                  **RUN, "output_dir": "outputs/tiny-dpo"}),
    "grpo.yaml": ("GRPO: answers sampled for each prompt, scored by reward functions ('module:function'; in a "
                  "notebook, a cell's def): ftkit train examples/grpo.yaml",
                  {**TINY, "stage": "grpo", "reward_funcs": ["ftkit.rewards:same_language", "ftkit.rewards:concise"],
                   "reward_weights": [1.0, 0.2], "num_generations": 4, "max_completion_length": 64,
                   "finetuning_type": "lora", "lora_target": "all", "lora_rank": 16, "learning_rate": 5.0e-4,
                   "per_device_train_batch_size": 8, "max_steps": 50, "logging_steps": 5,
                   "output_dir": "outputs/tiny-grpo"}),
}

# several GPUs: `ftkit train CONFIG --nproc N` (accelerate launch); DeepSpeed ZeRO and FSDP through the Trainer
GPU_LORA = {"model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct", "template": "llama3", "dataset": "demo",
            "cutoff_len": 1024, "finetuning_type": "lora", "lora_target": "all", "lora_rank": 8,
            "learning_rate": 1.0e-4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8,
            "num_train_epochs": 3.0, "bf16": True, "gradient_checkpointing": True, "logging_steps": 10}
EXAMPLES.update({
    "llama3_lora_sft_ds3.yaml": (
        "Several GPUs with DeepSpeed ZeRO-3 (weights, gradients and optimizer state sharded across GPUs):\n"
        "ftkit train examples/llama3_lora_sft_ds3.yaml --nproc 8   (needs CUDA and pip install deepspeed)",
        {**GPU_LORA, "deepspeed": "examples/deepspeed/ds_z3_config.json", "output_dir": "outputs/llama3-8b-ds3"}),
    "llama3_full_sft_fsdp.yaml": (
        "Full fine-tuning on several GPUs with PyTorch FSDP (each decoder layer a shard):\n"
        "ftkit train examples/llama3_full_sft_fsdp.yaml --nproc 8   (needs CUDA)",
        {**{k: v for k, v in GPU_LORA.items() if not k.startswith("lora_")}, "finetuning_type": "full",
         "learning_rate": 1.0e-5, "fsdp": True,
         "fsdp_config": {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "reshard_after_forward": True},
         "output_dir": "outputs/llama3-8b-fsdp"}),
})

_ZERO = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
         "gradient_clipping": "auto", "zero_allow_untested_optimizer": True, "bf16": {"enabled": "auto"},
         "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
                  "hysteresis": 2, "min_loss_scale": 1}}
DEEPSPEED = {  # "auto" values are filled in by the Trainer from the run config
    "ds_z2_config.json": {**_ZERO, "zero_optimization": {"stage": 2, "allgather_partitions": True,
                                                         "allgather_bucket_size": 5e8, "overlap_comm": False,
                                                         "reduce_scatter": True, "reduce_bucket_size": 5e8,
                                                         "contiguous_gradients": True, "round_robin_gradients": True}},
    "ds_z3_config.json": {**_ZERO, "zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True,
                                                         "sub_group_size": 1e9, "reduce_bucket_size": "auto",
                                                         "stage3_prefetch_bucket_size": "auto",
                                                         "stage3_param_persistence_threshold": "auto",
                                                         "stage3_max_live_parameters": 1e9,
                                                         "stage3_max_reuse_distance": 1e9,
                                                         "stage3_gather_16bit_weights_on_model_save": True}},
}
DEEPSPEED["ds_z3_offload_config.json"] = {
    **DEEPSPEED["ds_z3_config.json"],
    "zero_optimization": {**DEEPSPEED["ds_z3_config.json"]["zero_optimization"],
                          "offload_optimizer": {"device": "cpu", "pin_memory": True},
                          "offload_param": {"device": "cpu", "pin_memory": True}}}

# merge and inference take the keys of `ftkit merge` / `ftkit chat` (ftkit merge examples/merge.yaml)
TOOL_EXAMPLES = {
    "merge.yaml": ("Fold the LoRA adapter into its base: ftkit merge examples/merge.yaml",
                   {"adapter": "outputs/tiny-lora", "out": "outputs/tiny-lora/merged"}),
    "inference.yaml": ("Chat with the merged model: ftkit chat examples/inference.yaml",
                       {"model": "outputs/tiny-lora/merged", "max_new_tokens": 300, "temperature": 0.7,
                        "top_p": 0.9}),
}


def render_all() -> dict[str, str]:
    files = {name: example_yaml(values, title) for name, (title, values) in EXAMPLES.items()}
    for name, (title, values) in TOOL_EXAMPLES.items():
        files[name] = "# " + title + "\n" + yaml.safe_dump(values, sort_keys=False)
    for name, values in DEEPSPEED.items():
        files["deepspeed/" + name] = json.dumps(values, indent=2) + "\n"
    return files


if __name__ == "__main__":
    (ROOT / "examples" / "deepspeed").mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (ROOT / "examples" / name).write_text(text, encoding="utf-8")
        print("wrote examples/" + name)
