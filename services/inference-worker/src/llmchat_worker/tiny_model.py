"""Build the offline default model `tiny-random`: a 2-layer Llama with random weights.

The weights are random by design (its text is nonsense); what matters is that the model is a
real Llama-architecture checkpoint with a real tokenizer and chat template, built without any
download and bit-for-bit the same on every machine with the same library versions.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

BUILD_VERSION = 1
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"]


def is_built(out: Path) -> bool:
    marker = out / "llmchat_build.json"
    if not marker.exists():
        return False
    return bool(json.loads(marker.read_text()).get("version") == BUILD_VERSION)


def build(out: Path, *, vocab_size: int = 2048, seed: int = 0) -> Path:
    # Heavy imports stay inside: the worker imports this module only to resolve paths.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    corpus = resources.files("llmchat_worker").joinpath("corpus.txt").read_text()

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: the CPU attention kernels reject 16
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    # A wider init than the default keeps greedy output varied instead of one repeated token.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
    model.save_pretrained(out, safe_serialization=True)
    (out / "llmchat_build.json").write_text(json.dumps({"version": BUILD_VERSION, "seed": seed}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the offline tiny-random model")
    parser.add_argument("out", type=Path)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    if is_built(args.out) and not args.force:
        print(f"tiny-random already built at {args.out}")
        return 0
    build(args.out)
    print(f"tiny-random built at {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
