"""Llama: the modern decoder-only language model (Touvron et al. 2023, "LLaMA: Open and Efficient
Foundation Language Models"; "Llama 2", same year), and its close relative Qwen2.

What it changes from GPT-2 (models/gpt.py), each a drop-in that later decoders kept:

- RMSNorm (Zhang & Sennrich 2019) instead of LayerNorm, before each sub-block and after the last one;
- a SwiGLU MLP (Shazeer 2020): ``fc2(silu(gate(x)) * fc1(x))``, three bias-free projections;
- rotary positions (Su et al. 2021) on queries and keys instead of a learned position table, so no
  position weights and nothing added to the embeddings;
- grouped-query attention (Ainslie et al. 2023): ``num_kv_heads`` key/value heads shared by groups of
  query heads, which shrinks the KV cache by ``num_heads / num_kv_heads``;
- no biases anywhere (Qwen2 keeps them on q, k and v: ``qkv_bias``), no dropout by default, and an
  untied LM ``head`` (small models such as SmolLM2 and Qwen2.5-0.5B tie it).

A block is ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``; attention is causal, through
``nn.MultiHeadAttention`` on SDPA with the rotary ``(cos, sin)`` computed once per forward.

With the ``hf`` format at the bottom, Hugging Face ``LlamaForCausalLM`` (``model_type`` llama) and
``Qwen2ForCausalLM`` (qwen2) checkpoints load one to one and save back. Options that would make the
native model compute something else (rope scaling, sliding-window attention, partial rotary) are
refused by name.

Positions are counted as in models/gpt.py: a token's position is its index among the real tokens of
its row (``cumsum(attention_mask) - 1``), what HF ``generate`` passes as ``position_ids``, so a
left-padded prompt gives the logits of the unpadded one; without a mask they continue from the cache.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint, warn_outside_vocab
from bigmodel.models.registry import CheckpointFormat, Family
from bigmodel.nn.activations import ACTIVATIONS
from bigmodel.nn.attention import KVCache, MultiHeadAttention
from bigmodel.nn.mlp import GatedFeedForward
from bigmodel.nn.norms import RMSNorm
from bigmodel.nn.positions import RotaryEmbedding


@dataclass
class LlamaConfig:
    """Llama hyper-parameters; the defaults are Hugging Face ``LlamaConfig``'s (Llama 2 7B's shape).

    Attributes:
        vocab_size: tokens in the vocabulary.
        max_positions: longest context the model was trained for (HF ``max_position_embeddings``).
            Rotary positions have no table, so it is a declared limit, not a checked one (as in HF).
        embed_dim: width of the residual stream ``C`` (HF ``hidden_size``).
        num_heads: query heads ``H``.
        num_kv_heads: key/value heads ``H_kv`` dividing ``H`` (grouped-query attention); None means
            ``num_heads`` (plain multi-head), resolved on construction.
        head_dim: features per head ``D``; None means ``embed_dim // num_heads``, resolved on
            construction. Some checkpoints set it apart (``H * D != C``).
        num_layers: Transformer blocks ``L``.
        ffn_dim: inner width of the SwiGLU MLP (HF ``intermediate_size``).
        activation: the gate's activation; ``silu`` makes the MLP SwiGLU.
        rope_theta: rotary frequency base θ (Llama 2: 1e4, Llama 3: 5e5, Qwen2: 1e6).
        qkv_bias: biases on the q, k, v projections (Qwen2: True).
        out_bias: bias on the attention output projection ``o`` (HF Llama ``attention_bias`` puts
            biases on all four; Qwen2 on q, k, v only).
        mlp_bias: biases on the three MLP projections (HF ``mlp_bias``).
        dropout: dropout on the embeddings and on each sub-block's output before the residual add
            (published Llamas use none; HF has no such option, so it is not saved).
        attn_dropout: dropout on the attention probabilities (HF ``attention_dropout``).
        norm_eps: RMSNorm epsilon (HF ``rms_norm_eps``).
        init_std: std of the normal init of every weight matrix (HF ``initializer_range``).
        tie_embeddings: the LM ``head`` shares the token embedding matrix.
        gradient_checkpointing: in training, recompute each block's activations in the backward pass.
        pad_token_id: the padding token, if the vocabulary has one; ``generate`` fills finished rows
            with it.
        bos_token_id: beginning-of-text token.
        eos_token_id: end-of-text token, or a list of them (Llama 3 stops on several); ``generate``
            stops a row on any of them by default.
    """

    vocab_size: int = 32000
    max_positions: int = 2048
    embed_dim: int = 4096
    num_heads: int = 32
    num_kv_heads: int | None = None
    head_dim: int | None = None
    num_layers: int = 32
    ffn_dim: int = 11008
    activation: str = "silu"
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    tie_embeddings: bool = False
    gradient_checkpointing: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self):
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None:
            if self.num_heads >= 1 and self.embed_dim % self.num_heads:
                raise ValueError(
                    f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}; set head_dim"
                )
            self.head_dim = self.embed_dim // max(self.num_heads, 1)
        for name in ("vocab_size", "max_positions", "embed_dim", "num_heads", "num_kv_heads", "head_dim",
                     "num_layers", "ffn_dim"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (rotary positions rotate pairs), got {self.head_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        for name in ("dropout", "attn_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")
        if isinstance(self.eos_token_id, list | tuple):
            if not self.eos_token_id:
                raise ValueError("eos_token_id: an empty list; use None for no end-of-text token")
            self.eos_token_id = [int(t) for t in self.eos_token_id]
        # Out-of-range special tokens change no logits (transformers loads them with a warning too).
        never = "the model never produces it, so generation never meets it"
        warn_outside_vocab(
            self, self.vocab_size, {"bos_token_id": never, "pad_token_id": "it is never emitted"}
        )
        for token in self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id]:
            if token is not None and not 0 <= token < self.vocab_size:
                warnings.warn(
                    f"LlamaConfig: eos_token_id={token} is outside the vocabulary [0, {self.vocab_size}); "
                    f"kept as given, but {never}",
                    UserWarning,
                    stacklevel=3,
                )


class LlamaBlock(nn.Module):
    """Pre-norm block: ``x + drop(attn(norm1(x)))``, then ``x + drop(mlp(norm2(x)))``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        self.norm1 = RMSNorm(c.embed_dim, eps=c.norm_eps)
        self.attn = MultiHeadAttention(
            c.embed_dim, c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, bias=c.qkv_bias,
            out_bias=c.out_bias, dropout=c.attn_dropout,
        )  # fmt: skip
        self.norm2 = RMSNorm(c.embed_dim, eps=c.norm_eps)
        self.mlp = GatedFeedForward(c.embed_dim, c.ffn_dim, act=c.activation, bias=c.mlp_bias)
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        h = self.attn(self.norm1(x), causal=True, key_padding_mask=mask, cache=cache, rope=rope)
        x = x + self.drop(h)
        return x + self.drop(self.mlp(self.norm2(x)))  # (B, T, C)


class Llama(Model):
    """Token embeddings → pre-norm blocks (rotary attention, SwiGLU) → final ``norm`` → ``head``."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.rope = RotaryEmbedding(c.head_dim, base=c.rope_theta)  # no weights: inv_freq is a buffer
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.embed_dim, eps=c.norm_eps)
        self.head = nn.Linear(c.embed_dim, c.vocab_size, bias=False)
        self._init_weights()
        if c.tie_embeddings:
            self.head.weight = self.embed.weight  # one Parameter, two names in the state dict

    def _init_weights(self) -> None:
        # As HF's LlamaPreTrainedModel: N(0, init_std) for every matrix, zero biases, unit norms (the
        # RMSNorm default). Unlike GPT-2 no depth-scaled init of the residual projections.
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=self.config.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def feature_dim(self) -> int:
        """Width of the hidden states :meth:`encode` returns (``embed_dim``)."""
        return self.config.embed_dim

    def new_cache(self, max_length: int | None = None) -> list[KVCache]:
        """One ``KVCache`` per block (holding ``num_kv_heads`` heads), for ``forward(..., cache=)``.

        Args:
            max_length: preallocate this many positions per layer (no re-allocation per step).
        """
        return [KVCache(max_length) for _ in self.blocks]

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states ``(B, T, C)``, what the LM head reads; see :meth:`forward`."""
        B, T = input_ids.shape  # (batch, new tokens)
        past = cache[0].length if cache else 0
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()  # (B, past + T), True = real token
            if mask.shape != (B, past + T):
                raise ValueError(
                    f"attention_mask must be (batch, cached + new) = {(B, past + T)}, got {tuple(mask.shape)}"
                )
            if position_ids is None:
                # Index among the row's real tokens (HF generate's position_ids); pads get 0.
                position_ids = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 0)[:, past:]  # (B, T)
            if not torch.compiler.is_exporting() and bool(mask.all()):
                mask = None  # nothing to hide: lets SDPA run its causal kernels without a mask tensor
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)  # (T,)
        rope = self.rope(position_ids)  # (cos, sin), each (T, D) or (B, T, D), fp32
        x = self.drop(self.embed(input_ids))  # (B, T, C)
        ckpt = self.config.gradient_checkpointing and cache is None  # not while decoding
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache[i]
            x = maybe_checkpoint(block, x, mask, layer_cache, rope, enabled=ckpt)  # (B, T, C)
        return self.norm(x)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The text-encoder protocol: causal final-norm hidden states ``(B, T, feature_dim)``.

        Each position sees only itself and earlier tokens; mean pooling over a row's real tokens, or
        its last real position, summarises it.

        Args:
            input_ids: ``(B, T)`` token ids.
            attention_mask: ``(B, T)``, 1 = real token; positions count real tokens only.
        """
        return self.features(input_ids, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits.

        Args:
            input_ids: LongTensor ``(B, T)``: the new tokens (after any cached ones).
            attention_mask: ``(B, S)`` bool or 0/1, True = real token, over the cached *and* new
                tokens (``S = cached + T``); positions are counted over the real tokens only.
            cache: from :meth:`new_cache`; appended to, so the next call continues after these tokens.
            position_ids: ``(T,)`` or ``(B, T)`` explicit positions, overriding the above.

        Returns:
            ``(B, T, vocab_size)`` logits; for a language-model loss shift the labels, not the logits.
        """
        return self.head(self.features(input_ids, attention_mask, cache, position_ids))  # (B, T, V)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): ``6N + 12·L·H·D·T`` (PaLM, appendix B).

        ``N`` counts the weights a token multiplies with: every parameter except the embedding table,
        plus the LM head (counted once when tied). ``H·D`` is the attention width. Divide by 3 for
        inference.

        Args:
            seq_len: context length ``T``; defaults to ``max_positions``.
        """
        c = self.config
        T = c.max_positions if seq_len is None else seq_len
        n = self.num_params() - (0 if c.tie_embeddings else self.embed.weight.numel())
        return 6 * n + 12 * c.num_layers * c.num_heads * c.head_dim * T


def _example_input(config: LlamaConfig, batch_size: int = 2) -> tuple[torch.Tensor]:
    return (torch.randint(0, config.vocab_size, (batch_size, min(8, config.max_positions))),)


PRESETS = {
    # Published shapes whose rotary positions are plain (no rope scaling), so their checkpoints load.
    "tinyllama-1.1b": {
        "vocab_size": 32000, "max_positions": 2048, "embed_dim": 2048, "num_heads": 32, "num_kv_heads": 4,
        "num_layers": 22, "ffn_dim": 5632, "norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
    },
    "smollm2-135m": {
        "vocab_size": 49152, "max_positions": 8192, "embed_dim": 576, "num_heads": 9, "num_kv_heads": 3,
        "num_layers": 30, "ffn_dim": 1536, "norm_eps": 1e-5, "rope_theta": 100000.0, "tie_embeddings": True,
        "bos_token_id": 0, "eos_token_id": 0,
    },
    "qwen2.5-0.5b": {
        "vocab_size": 151936, "max_positions": 32768, "embed_dim": 896, "num_heads": 14, "num_kv_heads": 2,
        "num_layers": 24, "ffn_dim": 4864, "rope_theta": 1000000.0, "qkv_bias": True, "tie_embeddings": True,
        "bos_token_id": 151643, "eos_token_id": 151643,
    },
    # From scratch on a CPU (character-level Shakespeare; the recipe sets vocab_size): ~3M parameters.
    "llama-small": {
        "vocab_size": 256, "max_positions": 256, "embed_dim": 256, "num_heads": 8, "num_kv_heads": 4,
        "num_layers": 4, "ffn_dim": 688, "norm_eps": 1e-5, "dropout": 0.1, "tie_embeddings": True,
        "bos_token_id": None, "eos_token_id": None,
    },
    # Odd sizes catch shape bugs: 4 query heads of 10 sharing 2 kv heads, an MLP width of 37, a prime
    # vocabulary; the second is Qwen2-shaped (q/k/v biases, tied head, one kv head).
    "llama-tiny": {
        "vocab_size": 97, "max_positions": 32, "embed_dim": 36, "num_heads": 4, "num_kv_heads": 2,
        "head_dim": 10, "num_layers": 2, "ffn_dim": 37, "bos_token_id": 95, "eos_token_id": 96,
    },
    "llama-tiny-qwen2": {
        "vocab_size": 97, "max_positions": 32, "embed_dim": 36, "num_heads": 3, "num_kv_heads": 1,
        "num_layers": 2, "ffn_dim": 37, "qkv_bias": True, "tie_embeddings": True, "rope_theta": 1e6,
        "bos_token_id": None, "eos_token_id": 96,
    },
}  # fmt: skip


# --- Hugging Face LlamaForCausalLM / Qwen2ForCausalLM layout ----------------------------------------

# HF hidden_act -> native activation computing exactly the same function.
_HF_ACTIVATIONS = {
    "silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}  # fmt: skip
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _hf_key_map(config: LlamaConfig) -> dict[str, str]:
    """Native key -> ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` key (the two share one layout)."""
    key_map = {
        "embed.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        # Tied: the head *is* embed_tokens (published files omit lm_head.weight); untied: its own.
        "head.weight": "model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight",
    }
    biases = {"q": config.qkv_bias, "k": config.qkv_bias, "v": config.qkv_bias, "o": config.out_bias}
    for i in range(config.num_layers):
        ours, theirs = f"blocks.{i}", f"model.layers.{i}"
        key_map[f"{ours}.norm1.weight"] = f"{theirs}.input_layernorm.weight"
        key_map[f"{ours}.norm2.weight"] = f"{theirs}.post_attention_layernorm.weight"
        for p, has_bias in biases.items():
            for t in ("weight", "bias") if has_bias else ("weight",):
                key_map[f"{ours}.attn.{p}.{t}"] = f"{theirs}.self_attn.{p}_proj.{t}"
        for p, hf in (("gate", "gate_proj"), ("fc1", "up_proj"), ("fc2", "down_proj")):
            for t in ("weight", "bias") if config.mlp_bias else ("weight",):
                key_map[f"{ours}.mlp.{p}.{t}"] = f"{theirs}.mlp.{hf}.{t}"
    return key_map


def _hf_optional(config: LlamaConfig) -> set[str]:
    """The tied ``lm_head.weight`` copy, and the rotary ``inv_freq`` buffers older files carry."""
    buffers = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(config.num_layers)}
    buffers.add("model.rotary_emb.inv_freq")
    return buffers | ({"lm_head.weight"} if config.tie_embeddings else set())


def _rope_from_hf(hf: dict, model_type: str) -> float:
    """θ from a published config, refusing any rotary variant the native model does not compute.

    transformers 5 writes ``rope_parameters`` ({rope_type, rope_theta, ...}); earlier versions wrote
    ``rope_theta`` and ``rope_scaling`` (None, or {type | rope_type, factor, ...}) at the top level.
    """
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    for where, spec in (("rope_parameters", params), ("rope_scaling", scaling)):
        rope_type = spec.get("rope_type", spec.get("type", "default"))
        if rope_type != "default":
            raise ValueError(
                f"{model_type} option {where}.rope_type={rope_type!r} (rope scaling) is not implemented by "
                "the native llama model, which computes plain rotary positions (rope_type 'default')"
            )
        partial = spec.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        if partial != 1.0:
            raise ValueError(
                f"{model_type} option partial_rotary_factor={partial!r} is not implemented by the native "
                "llama model (it rotates every feature of each head)"
            )
    return float(theta)


def _sliding_layers(hf: dict) -> list[int]:
    """Indices of the layers a Qwen2 config gives sliding-window attention (as Qwen2Config derives them)."""
    layer_types = hf.get("layer_types")
    if layer_types is not None:
        return [i for i, t in enumerate(layer_types) if t != "full_attention"]
    if not hf.get("use_sliding_window", False) or hf.get("sliding_window") is None:
        return []
    return [i for i in range(hf.get("num_hidden_layers", 32)) if i >= hf.get("max_window_layers", 28)]


def _config_from_hf(hf: dict) -> dict:
    """``LlamaConfig`` / ``Qwen2Config`` dict -> native kwargs; refuses what the native model would not
    compute."""
    model_type = hf.get("model_type", "llama")
    if model_type not in _ARCHITECTURES:
        raise ValueError(f"model_type {model_type!r} is neither a Llama nor a Qwen2 config")
    act = hf.get("hidden_act", "silu")
    if act not in _HF_ACTIVATIONS:
        raise ValueError(
            f"{model_type} option hidden_act={act!r} is not implemented by the native llama model "
            f"(supported: {', '.join(_HF_ACTIVATIONS)})"
        )
    # pretraining_tp (transformers 4.x sliced the projections to mimic Meta's tensor-parallel sums)
    # changes only the summation order; transformers 5 ignores it, and so do we.
    if model_type == "qwen2":
        sliding = _sliding_layers(hf)
        if sliding:
            raise ValueError(
                f"qwen2 option use_sliding_window (sliding-window attention in layers {sliding}) is not "
                "implemented by the native llama model, whose layers all attend to the full context"
            )
        qkv_bias, out_bias, mlp_bias = True, False, False  # Qwen2Attention: biases on q, k, v only
        defaults = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
                    "max_position_embeddings": 32768, "bos_token_id": None, "eos_token_id": None}  # fmt: skip
    else:
        qkv_bias = out_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
        defaults = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                    "max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
    embed_dim = hf.get("hidden_size", defaults["hidden_size"])
    num_heads = hf.get("num_attention_heads", 32)
    eos = hf.get("eos_token_id", defaults["eos_token_id"])
    if isinstance(eos, list) and len(eos) == 1:
        eos = eos[0]
    return {
        "vocab_size": hf.get("vocab_size", defaults["vocab_size"]),
        "max_positions": hf.get("max_position_embeddings", defaults["max_position_embeddings"]),
        "embed_dim": embed_dim,
        "num_heads": num_heads,
        "num_kv_heads": hf.get("num_key_value_heads") or num_heads,
        "head_dim": hf.get("head_dim") or embed_dim // num_heads,
        "num_layers": hf.get("num_hidden_layers", 32),
        "ffn_dim": hf.get("intermediate_size", defaults["intermediate_size"]),
        "activation": _HF_ACTIVATIONS[act],
        "rope_theta": _rope_from_hf(hf, model_type),
        "qkv_bias": qkv_bias,
        "out_bias": out_bias,
        "mlp_bias": mlp_bias,
        "attn_dropout": float(hf.get("attention_dropout", 0.0)),
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "init_std": hf.get("initializer_range", 0.02),
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "pad_token_id": hf.get("pad_token_id"),
        "bos_token_id": hf.get("bos_token_id", defaults["bos_token_id"]),
        "eos_token_id": eos,
    }


def _config_to_hf(config: LlamaConfig) -> dict:
    """Native config -> ``Qwen2Config`` dict when it has Qwen2's biases (q, k, v, not o), else
    ``LlamaConfig`` dict (config.json of a ``*ForCausalLM``)."""
    to_hf = {native: hf for hf, native in _HF_ACTIVATIONS.items() if hf != "swish"}
    if config.activation not in to_hf:
        raise ValueError(
            f"activation {config.activation!r} has no Hugging Face equivalent ({', '.join(to_hf)})"
        )
    qwen2 = config.qkv_bias and not config.out_bias
    if qwen2 and config.mlp_bias:
        raise ValueError("q/k/v biases without an o bias (Qwen2) together with mlp_bias has no HF layout")
    if not qwen2 and config.qkv_bias != config.out_bias:
        raise ValueError("an o-projection bias without q/k/v biases has no Hugging Face layout")
    model_type = "qwen2" if qwen2 else "llama"
    hf = {
        "model_type": model_type,
        "architectures": [_ARCHITECTURES[model_type]],
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_positions,
        "hidden_size": config.embed_dim,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": config.num_layers,
        "intermediate_size": config.ffn_dim,
        "hidden_act": to_hf[config.activation],
        # both spellings: transformers 5 reads rope_parameters, 4.x rope_theta
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,
        "attention_dropout": config.attn_dropout,
        "rms_norm_eps": config.norm_eps,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
    }
    if qwen2:
        hf |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": config.num_layers}
    else:
        hf |= {"attention_bias": config.qkv_bias, "mlp_bias": config.mlp_bias, "pretraining_tp": 1}
    return hf


FAMILY = Family(
    name="llama",
    config_cls=LlamaConfig,
    model_cls=Llama,
    presets=PRESETS,
    tiny_presets=("llama-tiny", "llama-tiny-qwen2"),
    example_input=_example_input,
    formats={
        "hf": CheckpointFormat(
            key_map=_hf_key_map,
            optional=_hf_optional,
            config_from=_config_from_hf,
            config_to=_config_to_hf,
            model_types=("llama", "qwen2"),
        )
    },
)
