"""Architectures ftkit's tests verify end to end, with the chat template each family uses.

`template: auto` uses the tokenizer's own chat template; when a tokenizer has
none (base models such as Llama-2-7b-hf), the family's default below is used.
"""
from __future__ import annotations

# model_type -> default built-in template ("auto": the family ships its own chat_template and no built-in matches)
DEFAULT_TEMPLATES = {
    "llama": "llama3", "mistral": "mistral", "mixtral": "mistral", "qwen2": "qwen", "qwen2_moe": "qwen",
    "qwen3": "qwen3", "qwen3_moe": "qwen3", "gemma": "gemma", "gemma2": "gemma", "gemma3_text": "gemma",
    "phi": "default", "phi3": "phi", "gpt2": "default", "gpt_neox": "default", "gptj": "default",
    "falcon": "default", "olmo2": "auto", "stablelm": "chatml", "starcoder2": "default", "cohere": "auto",
    "granite": "auto", "deepseek_v3": "auto", "glm": "auto", "opt": "default", "bloom": "default",
}

# module and parameter names that are routers in mixture-of-experts models: `lora_target: all` leaves them alone
ROUTER_NAMES = {"gate", "router", "shared_expert_gate"}
