"""GPT: a decoder-only Transformer language model (Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners" — GPT-2).

Token and learned position embeddings are summed, pass through ``num_layers`` pre-norm blocks
``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` (GPT-2 moved the LayerNorm to each sub-block's input
and added one after the last block, §2.3), and a linear ``head`` tied to the token embedding (Press &
Wolf 2017) gives next-token logits. Attention is causal, through ``nn.MultiHeadAttention`` on SDPA;
the MLP is ``fc1 → gelu_new → fc2``.

With the ``hf`` key map at the bottom, Hugging Face ``GPT2LMHeadModel`` checkpoints load one to one
(its Conv1D weights are stored transposed and q, k, v fused in one ``c_attn``) and save back.

Positions: a token's position is its index among the *real* tokens of its row, read off the
``attention_mask`` (``cumsum(mask) - 1``), so a left-padded prompt gives the same logits as the
unpadded one — what HF ``generate`` passes as ``position_ids``. Without a mask, positions continue
from the cache length. (HF's ``forward`` uses ``0..T-1`` unless given ``position_ids``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint, warn_outside_vocab
from bigmodel.models.registry import CheckpointFormat, Family
from bigmodel.nn.activations import ACTIVATIONS
from bigmodel.nn.attention import KVCache, MultiHeadAttention
from bigmodel.nn.mlp import FeedForward
from bigmodel.nn.norms import LayerNorm
from bigmodel.nn.positions import LearnedPositionalEmbedding


@dataclass
class GPTConfig:
    """GPT hyper-parameters; the defaults are GPT-2 124M (``gpt2``) without its special tokens.

    Attributes:
        vocab_size: tokens in the vocabulary (GPT-2's byte-level BPE: 50257).
        max_positions: longest sequence, i.e. rows of the learned position table (GPT-2: 1024).
        embed_dim: width of the residual stream ``C``.
        num_heads: attention heads ``H``; must divide ``embed_dim``.
        num_layers: Transformer blocks ``L``.
        ffn_dim: inner width of the MLP; None means ``4 * embed_dim`` (HF ``n_inner``), resolved on
            construction.
        activation: MLP activation; GPT-2 uses ``gelu_new`` (tanh-approximated GELU).
        dropout: dropout on each sub-block's output before the residual add (HF ``resid_pdrop``) and
            on the summed embeddings (HF ``embd_pdrop``), unless ``embed_dropout`` says otherwise.
        attn_dropout: dropout on the attention probabilities (HF ``attn_pdrop``).
        embed_dropout: dropout on the summed embeddings when it differs from ``dropout``; None means
            ``dropout``. Only a published config whose ``embd_pdrop`` differs from ``resid_pdrop``
            sets it.
        norm_eps: LayerNorm epsilon (HF ``layer_norm_epsilon``).
        init_std: std of the normal init of weights (HF ``initializer_range``; GPT-2: 0.02).
        tie_embeddings: the LM ``head`` shares the token embedding matrix.
        gradient_checkpointing: in training, recompute each block's activations in the backward pass
            instead of storing them (less memory, ~1/3 more compute).
        bos_token_id: beginning-of-text token, for generation and published configs (GPT-2: 50256).
        eos_token_id: end-of-text token; ``generate`` stops a row on it by default (GPT-2: 50256).
            Either may lie outside the vocabulary (a published config trimmed to a smaller
            vocabulary): that warns, and generation then never meets it.
    """

    vocab_size: int = 50257
    max_positions: int = 1024
    embed_dim: int = 768
    num_heads: int = 12
    num_layers: int = 12
    ffn_dim: int | None = None
    activation: str = "gelu_new"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    embed_dropout: float | None = None
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = True
    gradient_checkpointing: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.embed_dim
        for name in ("vocab_size", "max_positions", "embed_dim", "num_heads", "num_layers", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        for name in ("dropout", "attn_dropout", "embed_dropout"):
            rate = getattr(self, name)
            if rate is not None and not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")
        # Out-of-range special tokens change no logits (transformers loads them with a warning too).
        never = "the model never produces it, so generation never meets it"
        warn_outside_vocab(self, self.vocab_size, {"bos_token_id": never, "eos_token_id": never})


class GPTBlock(nn.Module):
    """Pre-norm Transformer block: ``x + drop(attn(norm1(x)))``, then ``x + drop(mlp(norm2(x)))``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        c = config
        self.norm1 = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.attn = MultiHeadAttention(c.embed_dim, c.num_heads, bias=True, dropout=c.attn_dropout)
        self.norm2 = LayerNorm(c.embed_dim, eps=c.norm_eps)
        # GPT-2 has no dropout between the activation and fc2, only on the residual branch.
        self.mlp = FeedForward(c.embed_dim, c.ffn_dim, act=c.activation)
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), causal=True, key_padding_mask=mask, cache=cache))
        return x + self.drop(self.mlp(self.norm2(x)))  # (B, T, C)


class GPT(Model):
    """Token + position embeddings → pre-norm blocks → final ``norm`` → ``head`` (logits)."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.pos_embed = LearnedPositionalEmbedding(c.max_positions, c.embed_dim)
        self.drop = nn.Dropout(c.dropout if c.embed_dropout is None else c.embed_dropout)
        self.blocks = nn.ModuleList(GPTBlock(c) for _ in range(c.num_layers))
        self.norm = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.head = nn.Linear(c.embed_dim, c.vocab_size, bias=False)
        self._init_weights()
        if c.tie_embeddings:
            self.head.weight = self.embed.weight  # one Parameter, two names in the state dict

    def _init_weights(self) -> None:
        # GPT-2 (and HF): N(0, 0.02) weights, zero biases; the projections that write into the residual
        # stream (attn.o, mlp.fc2) get std / sqrt(2L), "to account for the accumulation on the residual
        # path with model depth" (Radford et al. 2019, §2.3).
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn.o, block.mlp.fc2):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_layers))

    @property
    def feature_dim(self) -> int:
        """Width of the hidden states :meth:`encode` returns (``embed_dim``)."""
        return self.config.embed_dim

    def new_cache(self, max_length: int | None = None) -> list[KVCache]:
        """One empty ``KVCache`` per block, for incremental decoding with ``forward(..., cache=)``.

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
        """Final-norm hidden states ``(B, T, C)``, what the LM head reads; see :meth:`forward` for the
        arguments."""
        B, T = input_ids.shape  # (batch, new tokens)
        past = cache[0].length if cache else 0
        if position_ids is None and past + T > self.config.max_positions:
            raise ValueError(f"{past + T} tokens exceed max_positions {self.config.max_positions}")
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
        x = self.drop(self.embed(input_ids) + self.pos_embed(position_ids))  # (B, T, C)
        ckpt = self.config.gradient_checkpointing and cache is None  # not while decoding
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache[i]
            x = maybe_checkpoint(block, x, mask, layer_cache, enabled=ckpt)  # (B, T, C)
        return self.norm(x)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The text-encoder protocol: causal final-norm hidden states ``(B, T, feature_dim)``.

        Each position sees only itself and earlier tokens, so a task pooling over a right-padded row
        reads its last real position for a summary of the whole row.

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
            ``(B, T, vocab_size)`` logits. For a language-model loss shift the labels,
            ``F.pad(ids[:, 1:], (0, 1), value=-100)``, not the logits: ``logits[:, :-1]`` copies
            ``B·T·V`` floats.
        """
        return self.head(self.features(input_ids, attention_mask, cache, position_ids))  # (B, T, V)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): ``6N + 12·L·H·Q·T``.

        PaLM (Chowdhery et al. 2022), appendix B: ``6N`` for the matmuls through the weights (2 in the
        forward, 4 in the backward per multiply-add) and ``12·L·H·Q·T`` for attention's ``QKᵀ`` and
        ``AV`` over a context of ``T`` (H·Q = embed_dim). ``N`` counts the weights a token multiplies
        with: all parameters except the two embedding tables (lookups cost no FLOPs), plus the LM head
        (counted once when tied). Divide by 3 for inference.

        Args:
            seq_len: context length ``T``; defaults to ``max_positions``.
        """
        c = self.config
        T = c.max_positions if seq_len is None else seq_len
        n = self.num_params() - self.pos_embed.weight.numel()  # a tied table counts once, as the head
        if not c.tie_embeddings:
            n -= self.embed.weight.numel()
        return 6 * n + 12 * c.num_layers * c.embed_dim * T


def _example_input(config: GPTConfig, batch_size: int = 2) -> tuple[torch.Tensor]:
    return (torch.randint(0, config.vocab_size, (batch_size, min(8, config.max_positions))),)


_GPT2 = {"vocab_size": 50257, "max_positions": 1024, "bos_token_id": 50256, "eos_token_id": 50256}
PRESETS = {
    "gpt2": {**_GPT2, "embed_dim": 768, "num_heads": 12, "num_layers": 12},  # 124M
    "gpt2-medium": {**_GPT2, "embed_dim": 1024, "num_heads": 16, "num_layers": 24},  # 355M
    "gpt2-large": {**_GPT2, "embed_dim": 1280, "num_heads": 20, "num_layers": 36},  # 774M
    "gpt2-xl": {**_GPT2, "embed_dim": 1600, "num_heads": 25, "num_layers": 48},  # 1.5B
    # Odd sizes catch shape bugs: 3 heads of 12, an MLP width that is not 4x, a prime vocabulary.
    "gpt-tiny": {
        "vocab_size": 97, "max_positions": 32, "embed_dim": 36, "num_heads": 3, "num_layers": 2,
        "ffn_dim": 37, "bos_token_id": 96, "eos_token_id": 96,
    },
}  # fmt: skip


# --- Hugging Face GPT2LMHeadModel layout -----------------------------------------------------------

# HF activation_function -> native activation computing exactly the same function.
_HF_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
# GPT2Config options that change the computation -> the only value the native model implements.
_HF_FIXED = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
}


def _hf_key_map(config: GPTConfig) -> dict[str, str]:
    """Native key -> ``GPT2LMHeadModel`` key, for all but q/k/v (fused into ``c_attn``, below)."""
    key_map = {
        "embed.weight": "transformer.wte.weight",
        "pos_embed.weight": "transformer.wpe.weight",
        "norm.weight": "transformer.ln_f.weight",
        "norm.bias": "transformer.ln_f.bias",
        # Tied: the head *is* wte (published files omit lm_head.weight); untied: its own tensor.
        "head.weight": "transformer.wte.weight" if config.tie_embeddings else "lm_head.weight",
    }
    for i in range(config.num_layers):
        ours, theirs = f"blocks.{i}", f"transformer.h.{i}"
        for t in ("weight", "bias"):
            key_map[f"{ours}.norm1.{t}"] = f"{theirs}.ln_1.{t}"
            key_map[f"{ours}.attn.o.{t}"] = f"{theirs}.attn.c_proj.{t}"
            key_map[f"{ours}.norm2.{t}"] = f"{theirs}.ln_2.{t}"
            key_map[f"{ours}.mlp.fc1.{t}"] = f"{theirs}.mlp.c_fc.{t}"
            key_map[f"{ours}.mlp.fc2.{t}"] = f"{theirs}.mlp.c_proj.{t}"
    return key_map


def _hf_fused(config: GPTConfig) -> dict[str, tuple[list[str], int]]:
    """``c_attn`` = [q; k; v] along the output features (rows of the native Linear weights)."""
    return {
        f"transformer.h.{i}.attn.c_attn.{t}": ([f"blocks.{i}.attn.{p}.{t}" for p in "qkv"], 0)
        for i in range(config.num_layers)
        for t in ("weight", "bias")
    }


def _hf_transposed(config: GPTConfig) -> set[str]:
    """HF's Conv1D stores a Linear weight as (in, out): every block matrix is transposed."""
    names = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2")
    return {f"blocks.{i}.{n}.weight" for i in range(config.num_layers) for n in names}


def _hf_optional(config: GPTConfig) -> set[str]:
    """The tied ``lm_head.weight`` copy and the causal-mask buffers older checkpoints carry."""
    buffers = {
        f"transformer.h.{i}.attn.{b}" for i in range(config.num_layers) for b in ("bias", "masked_bias")
    }
    return buffers | ({"lm_head.weight"} if config.tie_embeddings else set())


def _config_from_hf(hf: dict) -> dict:
    """``GPT2Config`` dict -> ``GPTConfig`` kwargs; refuses options the native model does not compute."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"model_type {hf['model_type']!r} is not a GPT-2 config")
    for option, native in _HF_FIXED.items():
        if option in hf and bool(hf[option]) != native:
            raise ValueError(
                f"GPT-2 option {option}={hf[option]!r} is not implemented by the native gpt model "
                f"(it computes {option}={native})"
            )
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_ACTIVATIONS:
        raise ValueError(
            f"GPT-2 option activation_function={act!r} is not implemented by the native gpt model "
            f"(supported: {', '.join(_HF_ACTIVATIONS)})"
        )
    tokens = {}
    for name in ("bos_token_id", "eos_token_id"):
        token = hf.get(name, 50256)
        if isinstance(token, list):
            if len(token) != 1:
                raise ValueError(f"GPT-2 option {name}={token!r}: the native gpt model takes one token")
            token = token[0]
        tokens[name] = token
    dropout, embed_dropout = hf.get("resid_pdrop", 0.1), hf.get("embd_pdrop", 0.1)
    return {
        "vocab_size": hf.get("vocab_size", 50257),
        "max_positions": hf.get("n_positions", 1024),
        "embed_dim": hf.get("n_embd", 768),
        "num_heads": hf.get("n_head", 12),
        "num_layers": hf.get("n_layer", 12),
        "ffn_dim": hf.get("n_inner"),
        "activation": _HF_ACTIVATIONS[act],
        "dropout": dropout,
        "attn_dropout": hf.get("attn_pdrop", 0.1),
        # one rate when the published ones agree (as GPT-2's do), so `dropout` alone governs both
        "embed_dropout": None if embed_dropout == dropout else embed_dropout,
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "init_std": hf.get("initializer_range", 0.02),
        "tie_embeddings": hf.get("tie_word_embeddings", True),
        **tokens,
    }


def _config_to_hf(config: GPTConfig) -> dict:
    """``GPTConfig`` -> ``GPT2Config`` dict (config.json of a ``GPT2LMHeadModel``)."""
    to_hf = {native: hf for hf, native in _HF_ACTIVATIONS.items()}
    if config.activation not in to_hf:
        raise ValueError(f"activation {config.activation!r} has no GPT-2 equivalent ({', '.join(to_hf)})")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.max_positions,
        "n_embd": config.embed_dim,
        "n_head": config.num_heads,
        "n_layer": config.num_layers,
        # None is HF's own spelling of the default 4 * n_embd
        "n_inner": None if config.ffn_dim == 4 * config.embed_dim else config.ffn_dim,
        "activation_function": to_hf[config.activation],
        "embd_pdrop": config.dropout if config.embed_dropout is None else config.embed_dropout,
        "attn_pdrop": config.attn_dropout,
        "resid_pdrop": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        **_HF_FIXED,
    }


FAMILY = Family(
    name="gpt",
    config_cls=GPTConfig,
    model_cls=GPT,
    presets=PRESETS,
    tiny_presets=("gpt-tiny",),
    example_input=_example_input,
    formats={
        "hf": CheckpointFormat(
            key_map=_hf_key_map,
            transposed=_hf_transposed,
            optional=_hf_optional,
            fused=_hf_fused,
            config_from=_config_from_hf,
            config_to=_config_to_hf,
            model_types=("gpt2",),
        )
    },
)
