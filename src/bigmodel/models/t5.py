"""T5, the Text-to-Text Transfer Transformer (Raffel et al. 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer").

An encoder–decoder Transformer with four departures from Vaswani et al. 2017 (§2.1 of the paper):

- one token embedding ``embed`` shared by the encoder, the decoder and (v1.0) the output layer;
- no absolute positions: a learned scalar bias per head and bucketed relative distance is added to
  the self-attention logits. Each stack computes it once, in its first layer, and every later layer
  reuses it (here ``encoder.position_bias`` / ``decoder.position_bias``); cross-attention has none;
- pre-norm residual blocks with RMSNorm (scale only, no mean subtraction, no bias) and a final norm
  after each stack;
- no ``1/sqrt(d)`` attention scaling and no biases anywhere: Mesh TensorFlow folds the scale into
  the initialisation of ``q`` (std ``(d_model · d_kv)^-0.5``).

Two published generations share this file through the config:

- T5 v1.0 (``t5-small`` … ``t5-11b``): ReLU FFN ``wo(relu(wi(x)))``, output layer tied to the
  embedding, decoder output rescaled by ``d_model^-0.5`` before it (the tied matrix was trained at
  embedding scale). ``feed_forward_proj="relu"``, ``tie_embeddings=True``.
- T5 v1.1 (``google/t5-v1_1-*``, also Flan-T5): gated-GELU FFN (Shazeer 2020)
  ``wo(gelu_new(wi_0(x)) * wi_1(x))``, an untied ``lm_head`` and no rescale.
  ``feed_forward_proj="gated-gelu"``, ``tie_embeddings=False``.

``feed_forward_proj`` follows Hugging Face's ``T5Config``: ``"{act}"`` or ``"gated-{act}"``, where
``"gated-gelu"`` means the tanh-approximated ``gelu_new`` for backward compatibility.

``num_decoder_layers=0`` builds the encoder alone (no decoder, no output layer), a text encoder whose
``encode`` gives hidden states for a task's own head, like Hugging Face's ``T5EncoderModel``.

The ``hf`` format at the bottom maps this model onto ``T5ForConditionalGeneration`` (or, encoder-only,
``T5EncoderModel``) state dicts and configs, so published checkpoints load and save one to one.
"""

from __future__ import annotations

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
from bigmodel.nn.mlp import FeedForward, GatedFeedForward
from bigmodel.nn.norms import RMSNorm
from bigmodel.nn.positions import RelativePositionBias

# feed_forward_proj activation (Hugging Face ACT2FN name) -> native activation name
FFN_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new", "silu": "silu"}


def parse_feed_forward_proj(value: str) -> tuple[str, bool]:
    """``"relu"`` → ``("relu", False)``, ``"gated-gelu"`` → ``("gelu_new", True)``, as ``T5Config``.

    Raises:
        ValueError: the value is not ``"{act}"`` or ``"gated-{act}"`` with a supported ``act``.
    """
    parts = value.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ValueError(f"feed_forward_proj {value!r} is not of the form '{{act}}' or 'gated-{{act}}'")
    act = "gelu_new" if value == "gated-gelu" else parts[-1]  # HF: "gated-gelu" is gelu_new
    if act not in FFN_ACTIVATIONS:
        raise ValueError(
            f"feed_forward_proj {value!r}: activation {act!r} is not one of {sorted(FFN_ACTIVATIONS)}"
        )
    return FFN_ACTIVATIONS[act], gated


@dataclass
class T5Config:
    """T5 hyper-parameters; the defaults are ``t5-small`` (v1.0).

    Attributes:
        vocab_size: rows of the shared embedding (and outputs of ``head``).
        embed_dim: model width ``d_model``.
        num_heads: attention heads.
        head_dim: features per head ``d_kv``; ``num_heads * head_dim`` need not equal ``embed_dim``.
        ffn_dim: inner width ``d_ff`` of the feed-forward network.
        num_layers: encoder blocks.
        num_decoder_layers: decoder blocks (None: as many as the encoder; 0: encoder-only, no
            decoder and no ``head``; only ``encode`` runs).
        relative_buckets: relative-position buckets (``relative_attention_num_buckets``).
        relative_max_distance: distances at or beyond this share the last bucket.
        dropout: one rate (``dropout_rate``) for embeddings, attention probabilities, the FFN inner
            activations, every residual branch and the final norms' outputs.
        norm_eps: RMSNorm epsilon (``layer_norm_epsilon``).
        feed_forward_proj: ``"relu"`` (v1.0), ``"gated-gelu"`` (v1.1), or any ``"{act}"`` /
            ``"gated-{act}"`` with ``act`` in ``FFN_ACTIVATIONS``.
        tie_embeddings: the output layer is the embedding matrix and the decoder output is
            rescaled by ``embed_dim^-0.5`` (v1.0); False: a separate ``head``, no rescale (v1.1)
            (HF ``tie_word_embeddings``).
        pad_token_id: padding id; replaces ``-100`` in shifted labels.
        eos_token_id: end-of-sequence id, where generation stops.
        decoder_start_token_id: first decoder input (T5 uses the pad id, 0). A token id outside the
            vocabulary warns rather than fails, as in transformers: it changes nothing ``encode``
            computes.
        gradient_checkpointing: in training, recompute each encoder and decoder block's activations
            in the backward pass instead of storing them (less memory, ~1/3 more compute).
    """

    vocab_size: int = 32128
    embed_dim: int = 512
    num_heads: int = 8
    head_dim: int = 64
    ffn_dim: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    relative_buckets: int = 32
    relative_max_distance: int = 128
    dropout: float = 0.1
    norm_eps: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        for name in ("vocab_size", "embed_dim", "num_heads", "head_dim", "ffn_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_decoder_layers < 0:
            raise ValueError(
                f"num_decoder_layers must be >= 0 (0 = encoder-only), got {self.num_decoder_layers}"
            )
        if self.relative_buckets < 4 or self.relative_buckets % 2:
            # bidirectional buckets split in two halves, each half again into exact and log-spaced
            raise ValueError(f"relative_buckets must be an even number >= 4, got {self.relative_buckets}")
        if self.relative_max_distance <= self.relative_buckets // 2:
            # the decoder's exact buckets reach relative_buckets // 2; log-spaced ones start there
            raise ValueError(
                f"relative_max_distance must exceed relative_buckets // 2 = {self.relative_buckets // 2}, "
                f"got {self.relative_max_distance}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        parse_feed_forward_proj(self.feed_forward_proj)
        warn_outside_vocab(self, self.vocab_size, SEQ2SEQ_TOKEN_CONSEQUENCES)


class T5Block(nn.Module):
    """Pre-norm residual block: self-attention, [cross-attention,] feed-forward.

    ``x + drop(attn(norm1(x)))``, ``x + drop(cross_attn(cross_norm(x), encoder_out))`` in the decoder,
    ``x + drop(mlp(norm2(x)))``.
    """

    def __init__(self, config: T5Config, cross_attention: bool):
        super().__init__()
        c = config
        act, gated = parse_feed_forward_proj(c.feed_forward_proj)

        def attention() -> MultiHeadAttention:
            # scale=1: T5 does not divide the logits by sqrt(d_kv) (folded into q's init instead)
            return MultiHeadAttention(
                c.embed_dim, c.num_heads, head_dim=c.head_dim, bias=False, dropout=c.dropout, scale=1.0
            )

        self.norm1 = RMSNorm(c.embed_dim, eps=c.norm_eps)
        self.attn = attention()
        if cross_attention:
            self.cross_norm = RMSNorm(c.embed_dim, eps=c.norm_eps)
            self.cross_attn = attention()
        self.norm2 = RMSNorm(c.embed_dim, eps=c.norm_eps)
        ffn = GatedFeedForward if gated else FeedForward
        self.mlp = ffn(c.embed_dim, c.ffn_dim, act=act, dropout=c.dropout, bias=False)
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        position_bias: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: tuple[KVCache, KVCache] | None = None,
    ) -> torch.Tensor:
        self_cache, cross_cache = (None, None) if cache is None else cache
        h = self.attn(
            self.norm1(x), causal=causal, key_padding_mask=mask, attn_bias=position_bias, cache=self_cache
        )
        x = x + self.drop(h)  # (B, T, D)
        if context is not None:
            h = self.cross_attn(self.cross_norm(x), context, key_padding_mask=context_mask, cache=cross_cache)
            x = x + self.drop(h)
        return x + self.drop(self.mlp(self.norm2(x)))


class T5Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention) of T5.

    Holds the stack's one ``RelativePositionBias``: the paper's first layer computes the bias and all
    layers share it, so it lives here, computed once per forward.
    """

    def __init__(self, config: T5Config, num_layers: int, is_decoder: bool):
        super().__init__()
        c = config
        self.config = config  # the model's own: gradient_checkpointing is read at forward time
        self.is_decoder = is_decoder
        self.position_bias = RelativePositionBias(
            c.num_heads, c.relative_buckets, c.relative_max_distance, bidirectional=not is_decoder
        )
        self.blocks = nn.ModuleList(T5Block(c, cross_attention=is_decoder) for _ in range(num_layers))
        self.norm = RMSNorm(c.embed_dim, eps=c.norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: list[tuple[KVCache, KVCache]] | None = None,
    ) -> torch.Tensor:
        """Run the stack on embeddings ``x`` ``(B, T, D)``; ``mask`` ``(B, past + T)`` True = real."""
        T = x.shape[1]
        past = cache[0][0].length if cache is not None else 0  # positions already decoded
        bias = self.position_bias(T, past + T, offset=past)  # (1, H, T, past + T)
        h = self.drop(x)
        ckpt = self.config.gradient_checkpointing and cache is None  # not while decoding
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache[i]
            h = maybe_checkpoint(
                block, h, bias, mask, self.is_decoder, context, context_mask, layer_cache, enabled=ckpt
            )  # (B, T, D)
        return self.drop(self.norm(h))


class T5(EncoderDecoder):
    """Shared ``embed`` → ``encoder`` / ``decoder`` stacks → ``head`` over the vocabulary.

    Generation protocol (``bigmodel.models.generate``): ``encode`` once, then ``decode`` step by step
    through ``new_cache()``; ``config.decoder_start_token_id`` starts every sequence.
    """

    def __init__(self, config: T5Config):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.encoder = T5Stack(c, c.num_layers, is_decoder=False)
        self.decoder, self.head = None, None  # encoder-only (num_decoder_layers=0)
        if c.num_decoder_layers:
            self.decoder = T5Stack(c, c.num_decoder_layers, is_decoder=True)
            self.head = nn.Linear(c.embed_dim, c.vocab_size, bias=False)
        self._init_weights()
        if self.head is not None and c.tie_embeddings:
            self.head.weight = self.embed.weight

    def _init_weights(self) -> None:
        # Mesh TensorFlow's initialisation, as Hugging Face's T5PreTrainedModel._init_weights: every
        # matrix N(0, fan_in^-0.5), except q, which also carries the attention scale T5 leaves out.
        c = self.config
        nn.init.normal_(self.embed.weight, std=1.0)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=1.0)
        for m in self.modules():
            if isinstance(m, MultiHeadAttention):
                nn.init.normal_(m.q.weight, std=(c.embed_dim * c.head_dim) ** -0.5)
                nn.init.normal_(m.k.weight, std=c.embed_dim**-0.5)
                nn.init.normal_(m.v.weight, std=c.embed_dim**-0.5)
                nn.init.normal_(m.o.weight, std=(c.num_heads * c.head_dim) ** -0.5)
            elif isinstance(m, FeedForward | GatedFeedForward):
                for linear in (m.fc1, getattr(m, "gate", None)):
                    if linear is not None:
                        nn.init.normal_(linear.weight, std=c.embed_dim**-0.5)
                nn.init.normal_(m.fc2.weight, std=c.ffn_dim**-0.5)
            elif isinstance(m, RelativePositionBias):
                nn.init.normal_(m.weight, std=c.embed_dim**-0.5)

    @property
    def feature_dim(self) -> int:
        """Width of the hidden states :meth:`encode` returns (``embed_dim``)."""
        return self.config.embed_dim

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output ``(B, S, feature_dim)`` for ``input_ids`` ``(B, S)``; ``attention_mask`` 1 =
        real token. The text-encoder protocol, and the first half of :meth:`forward`."""
        return self.encoder(self.embed(input_ids), mask=attention_mask)

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
        h = self.decoder(
            self.embed(decoder_input_ids),
            mask=decoder_mask,
            context=encoder_out,
            context_mask=encoder_mask,
            cache=cache,
        )  # (B, T, D)
        if self.config.tie_embeddings:
            # v1.0 ties the output layer to the embedding, trained at a d_model^0.5 larger scale
            h = h * self.config.embed_dim**-0.5
        return self.head(h)  # (B, T, V)


def _example_input(config: T5Config, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
    input_ids = torch.randint(0, config.vocab_size, (batch_size, 7))
    attention_mask = torch.ones(batch_size, 7, dtype=torch.long)
    attention_mask[0, 5:] = 0  # one padded row
    decoder_input_ids = torch.randint(0, config.vocab_size, (batch_size, 5))
    return input_ids, attention_mask, decoder_input_ids


_V1_1 = {"feed_forward_proj": "gated-gelu", "tie_embeddings": False}
PRESETS = {
    "t5-small": {"embed_dim": 512, "num_heads": 8, "ffn_dim": 2048, "num_layers": 6},
    "t5-base": {"embed_dim": 768, "num_heads": 12, "ffn_dim": 3072, "num_layers": 12},
    "t5-large": {"embed_dim": 1024, "num_heads": 16, "ffn_dim": 4096, "num_layers": 24},
    "google/t5-v1_1-small": {"embed_dim": 512, "num_heads": 6, "ffn_dim": 1024, "num_layers": 8, **_V1_1},
    "google/t5-v1_1-base": {"embed_dim": 768, "num_heads": 12, "ffn_dim": 2048, "num_layers": 12, **_V1_1},
    # Odd sizes catch shape bugs: d_kv * heads (36) == d_model only by accident of 9 * 4, d_ff prime.
    "t5-tiny": {
        "vocab_size": 101, "embed_dim": 36, "num_heads": 4, "head_dim": 9, "ffn_dim": 37,
        "num_layers": 2, "num_decoder_layers": 2,
    },
    "t5-tiny-gated": {
        "vocab_size": 101, "embed_dim": 36, "num_heads": 3, "head_dim": 7, "ffn_dim": 37,
        "num_layers": 2, "num_decoder_layers": 3, "relative_buckets": 8, "relative_max_distance": 11,
        **_V1_1,
    },
}  # fmt: skip


# --- Hugging Face T5ForConditionalGeneration layout ------------------------------------------------


def _stacks(config: T5Config) -> list[tuple[str, int]]:
    """``(stack, blocks)`` of the stacks the model has: the decoder only when it is built."""
    stacks = [("encoder", config.num_layers)]
    return stacks + ([("decoder", config.num_decoder_layers)] if config.num_decoder_layers else [])


def _hf_key_map(config: T5Config) -> dict[str, str]:
    """Native key -> ``T5ForConditionalGeneration`` (encoder-only: ``T5EncoderModel``) state-dict key."""
    key_map = {"embed.weight": "shared.weight"}
    _, gated = parse_feed_forward_proj(config.feed_forward_proj)
    mlp = {"gate": "wi_0", "fc1": "wi_1", "fc2": "wo"} if gated else {"fc1": "wi", "fc2": "wo"}
    for stack, num_layers in _stacks(config):
        key_map[f"{stack}.position_bias.weight"] = (
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        )
        for i in range(num_layers):
            ours, theirs = f"{stack}.blocks.{i}", f"{stack}.block.{i}.layer"
            ffn = 2 if stack == "decoder" else 1  # the decoder's layer.1 is cross-attention
            sublayers = [("attn", "norm1", "0.SelfAttention", "0.layer_norm")]
            if stack == "decoder":
                sublayers.append(("cross_attn", "cross_norm", "1.EncDecAttention", "1.layer_norm"))
            for attn, norm, their_attn, their_norm in sublayers:
                for p in "qkvo":
                    key_map[f"{ours}.{attn}.{p}.weight"] = f"{theirs}.{their_attn}.{p}.weight"
                key_map[f"{ours}.{norm}.weight"] = f"{theirs}.{their_norm}.weight"
            for name, their_name in mlp.items():
                key_map[f"{ours}.mlp.{name}.weight"] = f"{theirs}.{ffn}.DenseReluDense.{their_name}.weight"
            key_map[f"{ours}.norm2.weight"] = f"{theirs}.{ffn}.layer_norm.weight"
        key_map[f"{stack}.norm.weight"] = f"{stack}.final_layer_norm.weight"
    if config.num_decoder_layers:
        # a tied head is the embedding: it reads (and writes) shared.weight
        key_map["head.weight"] = "shared.weight" if config.tie_embeddings else "lm_head.weight"
    return key_map


def _hf_optional(config: T5Config) -> set[str]:
    """Tied copies of ``shared.weight``, and a cross-attention bias old checkpoints carry but never use.

    An encoder-only model also leaves a full checkpoint's decoder and ``lm_head`` unread, as
    transformers' ``T5EncoderModel`` does, so ``t5-small`` loads as a text encoder.
    """
    optional = {
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
    }
    if config.tie_embeddings or not config.num_decoder_layers:
        optional.add("lm_head.weight")
    if not config.num_decoder_layers:
        optional.add("decoder.*")
    return optional


# T5Config options this file implements (or that do not change the computation), in native names.
_HF_FIELDS = {
    "vocab_size": "vocab_size",
    "d_model": "embed_dim",
    "num_heads": "num_heads",
    "d_kv": "head_dim",
    "d_ff": "ffn_dim",
    "num_layers": "num_layers",
    "num_decoder_layers": "num_decoder_layers",
    "relative_attention_num_buckets": "relative_buckets",
    "relative_attention_max_distance": "relative_max_distance",
    "dropout_rate": "dropout",
    "layer_norm_epsilon": "norm_eps",
    "feed_forward_proj": "feed_forward_proj",
    "pad_token_id": "pad_token_id",
    "eos_token_id": "eos_token_id",
    "decoder_start_token_id": "decoder_start_token_id",
}
_ENCODER_ONLY = "T5EncoderModel"


def _hf_config_from(hf: dict) -> dict:
    """``T5Config`` dict (config.json) -> ``T5Config`` kwargs; refuses what this model cannot compute.

    A ``T5EncoderModel`` config (``architectures``) gives the encoder-only model,
    ``num_decoder_layers=0``, whatever its (unused) ``num_decoder_layers`` says.
    """
    if hf.get("model_type", "t5") != "t5":
        raise ValueError(f"model_type {hf['model_type']!r} is not 't5'")
    encoder_only = _ENCODER_ONLY in (hf.get("architectures") or [])
    if hf.get("is_decoder", False) or not (encoder_only or hf.get("is_encoder_decoder", True)):
        raise ValueError(
            "is_encoder_decoder=False / is_decoder=True: only the encoder-decoder and the encoder alone "
            f"({_ENCODER_ONLY}) are implemented"
        )
    proj = hf.get("feed_forward_proj", "relu")
    try:
        parse_feed_forward_proj(proj)
    except ValueError as exc:
        raise ValueError(f"feed_forward_proj: {exc}") from None
    native = {ours: hf[theirs] for theirs, ours in _HF_FIELDS.items() if hf.get(theirs) is not None}
    eos = native.get("eos_token_id")
    if isinstance(eos, list):
        if len(eos) != 1:
            raise ValueError(f"eos_token_id {eos}: only one end-of-sequence id is implemented")
        native["eos_token_id"] = eos[0]
    native.setdefault("decoder_start_token_id", native.get("pad_token_id", 0))  # T5 starts from pad
    if encoder_only:
        native["num_decoder_layers"] = 0
    # transformers >= 5 always writes tie_word_embeddings=True and keeps the published flag (which
    # also decides the d_model^-0.5 rescale) as scale_decoder_outputs.
    native["tie_embeddings"] = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))
    return native


def _hf_config_to(config: T5Config) -> dict:
    """``T5Config`` -> a ``T5Config`` dict that ``transformers`` loads (config.json); an encoder-only
    model is written as a ``T5EncoderModel``."""
    hf = {theirs: getattr(config, ours) for theirs, ours in _HF_FIELDS.items()}
    encoder_only = not config.num_decoder_layers
    return {
        "model_type": "t5",
        "architectures": [_ENCODER_ONLY if encoder_only else "T5ForConditionalGeneration"],
        "is_encoder_decoder": not encoder_only,
        **hf,
        "tie_word_embeddings": config.tie_embeddings,
    }


FAMILY = Family(
    name="t5",
    config_cls=T5Config,
    model_cls=T5,
    presets=PRESETS,
    tiny_presets=("t5-tiny", "t5-tiny-gated"),
    example_input=_example_input,
    formats={
        "hf": CheckpointFormat(
            key_map=_hf_key_map,
            optional=_hf_optional,
            config_from=_hf_config_from,
            config_to=_hf_config_to,
            model_types=("t5",),
        )
    },
)
