"""2-layer random configs of real architectures (transformers' own config classes), for the matrix test."""
_H = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          max_position_embeddings=256)
_HD = {**_H, "head_dim": 16}

ARCH_CONFIGS = {
    "llama": _H, "mistral": _H, "qwen2": _H, "qwen3": _HD, "gemma": _HD, "gemma2": _HD, "gemma3_text": _HD,
    "olmo2": _H, "stablelm": _H, "starcoder2": _H, "cohere": _H, "granite": _H, "glm": _HD, "phi": _H, "phi3": _H,
    "mixtral": {**_H, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {**_H, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                  "shared_expert_intermediate_size": 64},
    "qwen3_moe": {**_HD, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64},
    "deepseek_v3": {**_H, "num_key_value_heads": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                    "n_shared_experts": 1, "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 32,
                    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "n_group": 1, "topk_group": 1},
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=256),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=256),
    "gptj": dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, rotary_dim=8),
    "falcon": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=True,
                   num_kv_heads=2),
    "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                word_embed_proj_dim=64),
    "bloom": dict(hidden_size=64, n_layer=2, n_head=4),
}


def build(model_type: str, folder, tokenizer, **shape):
    """Save a random-initialised model of this architecture with the tiny tokenizer (`shape` overrides its
    config, e.g. num_hidden_layers); returns the folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    eos = tokenizer.eos_token_id
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos,
                                  pad_token_id=eos, **{**ARCH_CONFIGS[model_type], **shape})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
