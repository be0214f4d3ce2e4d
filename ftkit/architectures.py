"""Architectures ftkit's tests verify end to end, with the chat template each family uses.

`template: auto` uses the tokenizer's own chat template; when a tokenizer has
none (base models such as Llama-2-7b-hf), the family's default below is used.
"""
from __future__ import annotations

# model_type -> default built-in template ("auto": the family ships its own chat_template and no built-in matches)
DEFAULT_TEMPLATES = {
    "llama": "llama3", "mistral": "mistral", "mixtral": "mistral_v1", "qwen2": "qwen", "qwen2_moe": "qwen",
    "qwen3": "qwen3", "qwen3_moe": "qwen3", "gemma": "gemma", "gemma2": "gemma", "gemma3_text": "gemma3",
    "phi": "default", "phi3": "phi", "gpt2": "default", "gpt_neox": "default", "gptj": "default",
    "falcon": "default", "olmo2": "auto", "stablelm": "chatml", "starcoder2": "default", "cohere": "auto",
    "granite": "auto", "deepseek_v3": "deepseek3", "glm": "glm4", "opt": "default", "bloom": "default",
}
# a model_type shared by families with different formats, told apart by vocabulary size: (min, max, template)
BY_VOCABULARY = {"phi3": [(100_000, 150_000, "phi4")]}  # Phi-4 (100,352 tokens) is model_type phi3; Phi-3 has 32,064


def default_template(model_type: str | None, vocab_size: int) -> str:
    """The built-in `auto` uses for a tokenizer without a chat_template ("auto" where there is none)."""
    for low, high, name in BY_VOCABULARY.get(model_type or "", []):
        if low <= vocab_size < high:
            return name
    return DEFAULT_TEMPLATES.get(model_type or "", "auto")


# module and parameter names that are routers in mixture-of-experts models: `lora_target: all` leaves them alone
ROUTER_NAMES = {"gate", "router", "shared_expert_gate"}
