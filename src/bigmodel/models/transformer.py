"""The Transformer (Vaswani et al. 2017, "Attention Is All You Need"), encoder–decoder.

Source tokens are embedded, scaled by ``sqrt(d_model)`` and added to fixed sinusoidal positions
(§3.4, §3.5); the encoder is a stack of self-attention + feed-forward blocks, the decoder adds causal
masking and cross-attention over the encoder output; a linear ``head`` gives next-token logits.

- Residuals: post-norm ``norm(x + dropout(sublayer(x)))`` as in the paper (default), or pre-norm
  ``x + dropout(sublayer(norm(x)))`` (``norm_first``; Xiong et al. 2020, "On Layer Normalization in
  the Transformer Architecture": trains without warm-up, needs a final norm after each stack).
- Dropout ``P_drop`` on the embedding sums and on every sublayer output (§5.4), and, as
  tensor2tensor and ``torch.nn.Transformer`` do, on attention probabilities and the FFN's inner
  activations.
- Embeddings: the paper shares one matrix between the source embedding, the target embedding and
  the pre-softmax projection (§3.4, with a shared BPE vocabulary). ``share_embeddings`` and
  ``tie_embeddings`` choose each sharing separately; separate vocabularies need ``share_embeddings=False``.
- ``num_decoder_layers=0`` builds the encoder alone (no target embedding, decoder or ``head``): a text
  encoder whose ``encode`` gives hidden states for a task's own head.

The ``torch`` format at the bottom maps the layout of PyTorch's translation tutorial
(``Seq2SeqTransformer``: ``torch.nn.Transformer`` as ``transformer``, plus ``src_tok_emb``,
``tgt_tok_emb``, ``generator``), so ``torch.nn.Transformer`` weights copy over one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bigmodel.models.base import (
    SEQ2SEQ_TOKEN_CONSEQUENCES,
    EncoderDecoder,
    maybe_checkpoint,
    warn_outside_vocab,
)
from bigmodel.models.registry import CheckpointFormat, Family
from bigmodel.nn.attention import KVCache, MultiHeadAttention
from bigmodel.nn.mlp import FeedForward
from bigmodel.nn.norms import LayerNorm
from bigmodel.nn.positions import SinusoidalPositionalEmbedding

ACTIVATIONS = ("relu", "gelu")


@dataclass
class TransformerConfig:
    """Transformer hyper-parameters; the defaults are the paper's base model (Table 3).

    Attributes:
        vocab_size: source vocabulary (and the target's when ``tgt_vocab_size`` is None).
        tgt_vocab_size: target vocabulary; None = ``vocab_size``.
        embed_dim: model width ``d_model``.
        num_heads: attention heads ``h``; must divide ``embed_dim``.
        ffn_dim: inner width ``d_ff`` of the feed-forward network.
        num_layers: encoder blocks ``N``.
        num_decoder_layers: decoder blocks (None: as many as the encoder; 0: encoder-only, no
            target embedding, decoder or ``head``; only ``encode`` runs).
        dropout: ``P_drop``, see the module docstring for where it applies.
        activation: feed-forward activation, ``relu`` (paper) or ``gelu``.
        norm_first: pre-norm residual blocks instead of the paper's post-norm.
        final_norm: a LayerNorm after each stack (None: only with ``norm_first``, whose stack output
            is otherwise unnormalised). ``torch.nn.Transformer`` always has one.
        norm_eps: LayerNorm epsilon.
        share_embeddings: one embedding matrix for source and target (needs equal vocabularies).
        tie_embeddings: the output projection ``head`` is the target embedding matrix.
        head_bias: a bias on ``head``.
        max_positions: longest source or target sequence (rows of the sinusoid table).
        pad_token_id: padding id.
        eos_token_id: end-of-sequence id, where generation stops.
        decoder_start_token_id: first decoder input (beginning of sequence). A special token id
            outside the target vocabulary warns rather than fails: ``encode`` never reads it.
        gradient_checkpointing: in training, recompute each encoder and decoder block's activations
            in the backward pass instead of storing them (less memory, ~1/3 more compute).
    """

    vocab_size: int = 37000
    tgt_vocab_size: int | None = None
    embed_dim: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    dropout: float = 0.1
    activation: str = "relu"
    norm_first: bool = False
    final_norm: bool | None = None
    norm_eps: float = 1e-5
    share_embeddings: bool = True
    tie_embeddings: bool = True
    head_bias: bool = False
    max_positions: int = 1024
    pad_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 1
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.tgt_vocab_size is None:
            self.tgt_vocab_size = self.vocab_size
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.final_norm is None:
            self.final_norm = self.norm_first
        for name in (
            "vocab_size", "tgt_vocab_size", "embed_dim", "num_heads", "ffn_dim", "num_layers",
            "max_positions",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_decoder_layers < 0:
            raise ValueError(
                f"num_decoder_layers must be >= 0 (0 = encoder-only), got {self.num_decoder_layers}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {list(ACTIVATIONS)}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.share_embeddings and self.tgt_vocab_size != self.vocab_size:
            raise ValueError(
                f"share_embeddings needs one vocabulary, got vocab_size {self.vocab_size} and "
                f"tgt_vocab_size {self.tgt_vocab_size}"
            )
        warn_outside_vocab(self, self.tgt_vocab_size, SEQ2SEQ_TOKEN_CONSEQUENCES)


class TransformerBlock(nn.Module):
    """Self-attention, [cross-attention,] feed-forward, each a residual sublayer with LayerNorm."""

    def __init__(self, config: TransformerConfig, cross_attention: bool):
        super().__init__()
        c = config
        self.norm_first = c.norm_first
        self.norm1 = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.attn = MultiHeadAttention(c.embed_dim, c.num_heads, dropout=c.dropout)
        if cross_attention:
            self.cross_norm = LayerNorm(c.embed_dim, eps=c.norm_eps)
            self.cross_attn = MultiHeadAttention(c.embed_dim, c.num_heads, dropout=c.dropout)
        self.norm2 = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.mlp = FeedForward(c.embed_dim, c.ffn_dim, act=c.activation, dropout=c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def _residual(self, x: torch.Tensor, norm: nn.Module, sublayer) -> torch.Tensor:
        if self.norm_first:
            return x + self.drop(sublayer(norm(x)))  # pre-norm (Xiong et al. 2020)
        return norm(x + self.drop(sublayer(x)))  # post-norm, §5.4 of the paper

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: tuple[KVCache, KVCache] | None = None,
    ) -> torch.Tensor:
        self_cache, cross_cache = (None, None) if cache is None else cache
        x = self._residual(
            x, self.norm1, lambda h: self.attn(h, causal=causal, key_padding_mask=mask, cache=self_cache)
        )  # (B, T, D)
        if context is not None:
            x = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(h, context, key_padding_mask=context_mask, cache=cross_cache),
            )
        return self._residual(x, self.norm2, self.mlp)


class TransformerStack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention), on embeddings."""

    def __init__(self, config: TransformerConfig, num_layers: int, is_decoder: bool):
        super().__init__()
        self.config = config  # the model's own: gradient_checkpointing is read at forward time
        self.is_decoder = is_decoder
        self.blocks = nn.ModuleList(TransformerBlock(config, is_decoder) for _ in range(num_layers))
        self.norm = LayerNorm(config.embed_dim, eps=config.norm_eps) if config.final_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: list[tuple[KVCache, KVCache]] | None = None,
    ) -> torch.Tensor:
        """Run the stack on ``x`` ``(B, T, D)``; ``mask`` ``(B, past + T)`` True = real token."""
        ckpt = self.config.gradient_checkpointing and cache is None  # not while decoding
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache[i]
            x = maybe_checkpoint(
                block, x, mask, self.is_decoder, context, context_mask, layer_cache, enabled=ckpt
            )  # (B, T, D)
        return self.norm(x)


class Transformer(EncoderDecoder):
    """``embed`` + positions → ``encoder``; ``tgt_embed`` + positions → ``decoder`` → ``head``.

    Generation protocol (``bigmodel.models.generate``): ``encode`` once, then ``decode`` step by step
    through ``new_cache()``; ``config.decoder_start_token_id`` starts every sequence. Encoder-only
    (``num_decoder_layers=0``): ``tgt_embed``, ``decoder`` and ``head`` are None.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.tgt_embed, self.decoder, self.head = None, None, None  # encoder-only until built below
        if c.num_decoder_layers:
            self.tgt_embed = self.embed if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, c.embed_dim)
        self.positions = SinusoidalPositionalEmbedding(c.embed_dim, c.max_positions)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = TransformerStack(c, c.num_layers, is_decoder=False)
        if c.num_decoder_layers:
            self.decoder = TransformerStack(c, c.num_decoder_layers, is_decoder=True)
            self.head = nn.Linear(c.embed_dim, c.tgt_vocab_size, bias=c.head_bias)
        self._init_weights()
        if self.head is not None and c.tie_embeddings:
            self.head.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        # Xavier-uniform matrices as torch.nn.Transformer; embeddings N(0, d^-0.5) as fairseq/t2t, so
        # that after the sqrt(d) scale they have unit variance, like the sinusoids they are added to.
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        for embedding in (self.embed, self.tgt_embed):
            if embedding is not None:
                nn.init.normal_(embedding.weight, std=self.config.embed_dim**-0.5)
        if self.head is not None and self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    @property
    def feature_dim(self) -> int:
        """Width of the hidden states :meth:`encode` returns (``embed_dim``)."""
        return self.config.embed_dim

    def _embed(self, embedding: nn.Embedding, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = ids.shape[1]
        if offset + T > self.config.max_positions:
            raise ValueError(
                f"sequence of {offset + T} positions exceeds max_positions={self.config.max_positions}"
            )
        positions = self.positions(torch.arange(offset, offset + T, device=ids.device))  # (T, D)
        x = embedding(ids) * math.sqrt(self.config.embed_dim) + positions  # (B, T, D), §3.4
        return self.drop(x)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output ``(B, S, feature_dim)`` for ``input_ids`` ``(B, S)``; ``attention_mask`` 1 =
        real token. The text-encoder protocol, and the first half of :meth:`forward`."""
        return self.encoder(self._embed(self.embed, input_ids), mask=attention_mask)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
        cache: list[tuple[KVCache, KVCache]] | None = None,
        decoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``(B, T, V)`` for ``decoder_input_ids`` ``(B, T)``.

        Args:
            decoder_input_ids: the new decoder tokens; with a ``cache``, only those not yet decoded.
            encoder_out: ``encode``'s output ``(B, S, D)`` (not re-projected once the cache holds it).
            encoder_mask: ``(B, S)``, 1 = real source token.
            cache: from ``new_cache()``; appended to in place.
            decoder_mask: ``(B, past + T)``, 1 = real target token, over all decoder positions so far.
        """
        self._require_decoder("decode")
        past = cache[0][0].length if cache is not None else 0  # positions already decoded
        x = self._embed(self.tgt_embed, decoder_input_ids, offset=past)  # (B, T, D)
        h = self.decoder(x, decoder_mask, encoder_out, encoder_mask, cache)  # (B, T, D)
        return self.head(h)  # (B, T, V)


def _example_input(config: TransformerConfig, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
    input_ids = torch.randint(0, config.vocab_size, (batch_size, 7))
    attention_mask = torch.ones(batch_size, 7, dtype=torch.long)
    attention_mask[0, 5:] = 0  # one padded row
    decoder_input_ids = torch.randint(0, config.tgt_vocab_size, (batch_size, 5))
    return input_ids, attention_mask, decoder_input_ids


PRESETS = {
    # Table 3 of the paper; WMT'14 en-de used a shared BPE vocabulary of about 37000 tokens.
    "transformer-base": {"embed_dim": 512, "num_heads": 8, "ffn_dim": 2048, "num_layers": 6, "dropout": 0.1},
    "transformer-big": {"embed_dim": 1024, "num_heads": 16, "ffn_dim": 4096, "num_layers": 6, "dropout": 0.3},
    # Odd sizes catch shape bugs: odd d_model (one cosine fewer in the sinusoids), 3 heads of 11,
    # separate vocabularies, more decoder than encoder blocks.
    "transformer-tiny": {
        "vocab_size": 61, "tgt_vocab_size": 47, "share_embeddings": False, "embed_dim": 33, "num_heads": 3,
        "ffn_dim": 37, "num_layers": 2, "num_decoder_layers": 3, "max_positions": 64,
    },
    "transformer-tiny-prenorm": {
        "vocab_size": 53, "embed_dim": 30, "num_heads": 5, "ffn_dim": 41, "num_layers": 3,
        "num_decoder_layers": 2, "norm_first": True, "activation": "gelu", "tie_embeddings": False,
        "head_bias": True, "max_positions": 64,
    },
}  # fmt: skip


# --- torch.nn.Transformer layout (PyTorch translation tutorial's Seq2SeqTransformer) ----------------


def _torch_attention(ours: str, theirs: str) -> dict[str, str]:
    return {f"{ours}.o.{t}": f"{theirs}.out_proj.{t}" for t in ("weight", "bias")}


def _torch_layer_norm(ours: str, theirs: str) -> dict[str, str]:
    return {f"{ours}.{t}": f"{theirs}.{t}" for t in ("weight", "bias")}


def _torch_sublayers(stack: str) -> list[tuple[str, str]]:
    """(native, torch) names of one block's modules; torch numbers the decoder's norms 1, 2, 3."""
    pairs = [("attn", "self_attn"), ("norm1", "norm1"), ("mlp.fc1", "linear1"), ("mlp.fc2", "linear2")]
    if stack == "encoder":
        return [*pairs, ("norm2", "norm2")]
    return [*pairs, ("cross_attn", "multihead_attn"), ("cross_norm", "norm2"), ("norm2", "norm3")]


def _stacks(config: TransformerConfig) -> list[tuple[str, int]]:
    """``(stack, blocks)`` of the stacks the model has: the decoder only when it is built."""
    stacks = [("encoder", config.num_layers)]
    return stacks + ([("decoder", config.num_decoder_layers)] if config.num_decoder_layers else [])


def _torch_key_map(config: TransformerConfig) -> dict[str, str]:
    """Native key -> tutorial ``Seq2SeqTransformer`` key (q/k/v go through ``_torch_fused``).

    An encoder-only model maps onto the tutorial's ``src_tok_emb`` and ``transformer.encoder``.
    """
    src, tgt = "src_tok_emb.embedding.weight", "tgt_tok_emb.embedding.weight"
    key_map = {"embed.weight": src}
    if config.num_decoder_layers:
        key_map["tgt_embed.weight"] = src if config.share_embeddings else tgt
        key_map["head.weight"] = key_map["tgt_embed.weight"] if config.tie_embeddings else "generator.weight"
        if config.head_bias:
            key_map["head.bias"] = "generator.bias"
    for stack, num_layers in _stacks(config):
        for i in range(num_layers):
            ours, theirs = f"{stack}.blocks.{i}", f"transformer.{stack}.layers.{i}"
            for native, published in _torch_sublayers(stack):
                if native.endswith("attn"):
                    key_map |= _torch_attention(f"{ours}.{native}", f"{theirs}.{published}")
                else:
                    key_map |= _torch_layer_norm(f"{ours}.{native}", f"{theirs}.{published}")
        if config.final_norm:
            key_map |= _torch_layer_norm(f"{stack}.norm", f"transformer.{stack}.norm")
    return key_map


def _torch_fused(config: TransformerConfig) -> dict[str, tuple[list[str], int]]:
    """``in_proj_weight`` / ``in_proj_bias`` of ``nn.MultiheadAttention`` are q, k, v stacked."""
    fused = {}
    for stack, num_layers in _stacks(config):
        for i in range(num_layers):
            ours, theirs = f"{stack}.blocks.{i}", f"transformer.{stack}.layers.{i}"
            for native, published in _torch_sublayers(stack):
                if native.endswith("attn"):
                    for t in ("weight", "bias"):
                        parts = [f"{ours}.{native}.{p}.{t}" for p in "qkv"]
                        fused[f"{theirs}.{published}.in_proj_{t}"] = (parts, 0)
    return fused


def _torch_optional(config: TransformerConfig) -> set[str]:
    """The tutorial's sinusoid buffer, and embedding/projection copies the native model shares; an
    encoder-only model leaves the target side of a full checkpoint unread."""
    optional = {"positional_encoding.pos_embedding"}
    if not config.num_decoder_layers:
        return optional | {"tgt_tok_emb.*", "generator.*", "transformer.decoder.*"}
    if config.share_embeddings:
        optional.add("tgt_tok_emb.embedding.weight")
    if config.tie_embeddings:
        optional.add("generator.weight")
    return optional


FAMILY = Family(
    name="transformer",
    config_cls=TransformerConfig,
    model_cls=Transformer,
    presets=PRESETS,
    tiny_presets=("transformer-tiny", "transformer-tiny-prenorm"),
    example_input=_example_input,
    formats={"torch": CheckpointFormat(key_map=_torch_key_map, optional=_torch_optional, fused=_torch_fused)},
)
