"""A small random Llama with a real tokenizer: what the tests and `tools.cuda_check` train."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(
    folder, tokenizer, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, seed=0
) -> Path:
    """A two-layer LlamaForCausalLM with random weights and `tokenizer`, saved as a local model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
