"""BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding"): a bidirectional Transformer encoder.

Embeddings: word + learned absolute position + token type (segment A/B), then LayerNorm and dropout
(§3.1, Figure 2). Blocks are *post-norm* as in the original Transformer (Vaswani et al. 2017):
``x = norm1(x + drop(attn(x)))`` then ``x = norm2(x + drop(mlp(x)))``. Padding keys are masked out of
attention; padding *queries* still attend to the real keys, exactly as the reference does, so the
hidden states at padded positions match too (they are junk either way: ignore them).

Two optional heads, switched by the config:

- ``add_pooler``: ``tanh(dense(h[CLS]))``, the sentence vector trained by next-sentence prediction.
- ``add_mlm_head``: the masked-LM head, ``dense → act → LayerNorm → decoder + bias``, whose decoder is
  the word-embedding matrix itself (weight tying, Press & Wolf 2017) — computed as ``F.linear`` on
  ``embed.weight`` so the state dict holds that matrix once.

``forward`` returns the last hidden states ``(B, T, embed_dim)``; ``pool`` and ``mlm_logits`` turn them
into the heads' outputs. Task heads (classification, tagging) live in tasks/, not here.

The ``hf`` checkpoint format at the bottom maps to Hugging Face ``BertModel`` keys (no prefix) or, with
the MLM head, to ``BertForMaskedLM`` keys (``bert.`` + ``cls.predictions.*``), so published checkpoints
such as bert-base-uncased and all-MiniLM-L6-v2 load one to one and save back in the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint
from bigmodel.models.registry import CheckpointFormat, Family
from bigmodel.nn.activations import ACTIVATIONS, activation
from bigmodel.nn.attention import MultiHeadAttention
from bigmodel.nn.mlp import FeedForward
from bigmodel.nn.norms import LayerNorm
from bigmodel.nn.positions import LearnedPositionalEmbedding


@dataclass
class BertConfig:
    """BERT hyper-parameters; the defaults are bert-base-uncased.

    Attributes:
        vocab_size: WordPiece vocabulary size.
        embed_dim: hidden width ``H`` of every layer.
        num_layers: Transformer blocks ``L``.
        num_heads: attention heads ``A``; must divide ``embed_dim``.
        ffn_dim: inner width of the feed-forward network (4 × ``embed_dim`` in the paper).
        max_positions: learned position vectors; longer inputs are refused.
        type_vocab_size: token types (segments); 2 for sentence A / B.
        hidden_act: activation of the feed-forward network and of the MLM head transform, a name from
            ``nn.activations.ACTIVATIONS`` (``gelu`` = exact erf GELU, as BERT).
        dropout: dropout on the embeddings and on each sub-layer output before the residual sum.
        attn_dropout: dropout on the attention probabilities.
        norm_eps: LayerNorm epsilon (1e-12 in BERT's TensorFlow code).
        pad_token_id: row of the word embeddings that receives no gradient (``[PAD]`` = 0).
        init_std: standard deviation of the truncated-normal-like init of weights (0.02).
        add_pooler: build the ``[CLS]`` pooler (``pool``).
        add_mlm_head: build the masked-LM head (``mlm_logits``), tied to the word embeddings.
        gradient_checkpointing: in training, recompute each block's activations during backward
            instead of storing them (less memory, ~1/3 more compute).
    """

    vocab_size: int = 30522
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    init_std: float = 0.02
    add_pooler: bool = True
    add_mlm_head: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self):
        sizes = ("vocab_size", "embed_dim", "num_layers", "num_heads", "ffn_dim", "max_positions")
        for name in (*sizes, "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            # Unlike generation-only ids this one is built in, as the embedding's padding_idx, which
            # torch (and so transformers) refuses out of range.
            raise ValueError(f"pad_token_id must be in [0, {self.vocab_size}), got {self.pad_token_id}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


class BertBlock(nn.Module):
    """One post-norm encoder layer: self-attention, then the feed-forward network, each followed by
    dropout, the residual sum and LayerNorm (Vaswani et al. 2017, §3.1; BERT keeps this order)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        c = config
        self.attn = MultiHeadAttention(c.embed_dim, c.num_heads, bias=True, dropout=c.attn_dropout)
        self.norm1 = LayerNorm(c.embed_dim, eps=c.norm_eps)
        # BERT has no dropout between the two FFN layers, only on the FFN output (self.drop below).
        self.mlp = FeedForward(c.embed_dim, c.ffn_dim, act=c.hidden_act, dropout=0.0)
        self.norm2 = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, key_padding_mask=key_padding_mask)))  # (B, T, H)
        return self.norm2(x + self.drop(self.mlp(x)))  # (B, T, H)


class MaskedLMHead(nn.Module):
    """``dense → act → LayerNorm`` transform, then logits over the vocabulary with the (tied) word
    embedding matrix and a per-token bias (Devlin et al. 2019, Appendix A.1)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.embed_dim, config.embed_dim)
        self.act = activation(config.hidden_act)
        self.norm = LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.act(self.dense(h)))  # (B, T, H)
        return F.linear(h, decoder_weight, self.bias)  # (B, T, vocab_size)


class Bert(Model):
    """Embeddings (``embed`` + ``pos_embed`` + ``type_embed``, ``embed_norm``) → ``blocks`` → last hidden
    states; optional ``pooler`` and ``mlm`` heads (see the module docstring)."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.pad_token_id)
        self.pos_embed = LearnedPositionalEmbedding(c.max_positions, c.embed_dim)
        self.type_embed = nn.Embedding(c.type_vocab_size, c.embed_dim)
        self.embed_norm = LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.embed_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(BertBlock(c) for _ in range(c.num_layers))
        self.pooler = nn.Linear(c.embed_dim, c.embed_dim) if c.add_pooler else None
        self.mlm = MaskedLMHead(c) if c.add_mlm_head else None
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm, zero [PAD] vector.
        std = self.config.init_std
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, MaskedLMHead):
            nn.init.zeros_(m.bias)

    @property
    def feature_dim(self) -> int:
        """Width of the hidden states :meth:`encode` returns (``embed_dim``)."""
        return self.config.embed_dim

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode a batch of token ids (the text-encoder protocol; ``forward`` is the same).

        Args:
            input_ids: ``(B, T)`` token ids, ``T <= max_positions``.
            attention_mask: ``(B, T)``, 1 (or True) for real tokens, 0 for padding; None = no padding.
            token_type_ids: ``(B, T)`` segment ids in ``[0, type_vocab_size)``; None = all 0.

        Returns:
            Last hidden states ``(B, T, feature_dim)``.
        """
        B, T = input_ids.shape  # (batch, time)
        if T > self.config.max_positions:
            raise ValueError(f"sequence length {T} exceeds max_positions={self.config.max_positions}")
        positions = torch.arange(T, device=input_ids.device)  # (T,)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # Same summation order as the reference (word + type, then + position), for bitwise-close parity.
        x = self.embed(input_ids) + self.type_embed(token_type_ids)  # (B, T, H)
        x = x + self.pos_embed(positions)  # (T, H) broadcast over the batch
        x = self.embed_drop(self.embed_norm(x))
        mask = None if attention_mask is None else attention_mask.bool()  # (B, T), True = attend
        for block in self.blocks:
            x = maybe_checkpoint(block, x, mask, enabled=self.config.gradient_checkpointing)  # (B, T, H)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states ``(B, T, embed_dim)``; see :meth:`encode`."""
        return self.encode(input_ids, attention_mask, token_type_ids)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The pooled ``[CLS]`` vector, ``tanh(pooler(hidden[:, 0]))``: ``(B, T, H) -> (B, H)``."""
        if self.pooler is None:
            raise ValueError("this BERT has no pooler; build it with add_pooler=True")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits over the vocabulary: ``(B, T, H) -> (B, T, vocab_size)``."""
        if self.mlm is None:
            raise ValueError("this BERT has no masked-LM head; build it with add_mlm_head=True")
        return self.mlm(hidden, self.embed.weight)

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per token: ``6N + 12·L·H·T`` for a training step, a third of it for inference.

        The PaLM appendix B count (Chowdhery et al. 2022): N = parameters that take part in matmuls
        (blocks, pooler, MLM head with its tied decoder; not the embedding lookups), plus attention's
        ``QKᵀ`` and ``AV`` over ``T = seq_len`` keys (default ``max_positions``); BERT attends both
        ways, so every query sees all T keys.
        """
        c = self.config
        T = c.max_positions if seq_len is None else seq_len
        n = sum(p.numel() for p in self.blocks.parameters())
        if self.pooler is not None:
            n += sum(p.numel() for p in self.pooler.parameters())
        if self.mlm is not None:
            n += sum(p.numel() for p in self.mlm.parameters()) + self.embed.weight.numel()
        forward = 2 * n + 4 * c.num_layers * c.embed_dim * T
        return float(3 * forward if training else forward)


def _example_input(config: BertConfig, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a right-padding mask: every row after the first loses its last token."""
    T = min(7, config.max_positions)
    input_ids = torch.randint(0, config.vocab_size, (batch_size, T))
    attention_mask = torch.ones(batch_size, T, dtype=torch.long)
    attention_mask[1:, -1] = 0
    return input_ids, attention_mask


PRESETS = {
    "bert-base-uncased": {},
    "bert-large-uncased": {"embed_dim": 1024, "num_layers": 24, "num_heads": 16, "ffn_dim": 4096},
    # all-MiniLM-L6-v2's shape (Wang et al. 2020, MiniLM; sentence-transformers' fine-tune).
    "minilm-l6-h384": {"embed_dim": 384, "num_layers": 6, "num_heads": 12, "ffn_dim": 1536},
    # Odd sizes catch shape bugs: head_dim 9 or 12, ffn_dim 37, 3 token types, 23 positions. The contract
    # suite backpropagates from forward's output, which no head feeds, so the tiny preset is the bare
    # encoder; the pooler and MLM variants are covered by tests/models/test_bert.py.
    "bert-tiny": {
        "vocab_size": 101, "embed_dim": 36, "num_layers": 2, "num_heads": 4, "ffn_dim": 37,
        "max_positions": 23, "type_vocab_size": 3, "add_pooler": False,
    },
    "bert-tiny-mlm": {
        "vocab_size": 101, "embed_dim": 36, "num_layers": 2, "num_heads": 3, "ffn_dim": 37,
        "max_positions": 23, "hidden_act": "gelu_new", "add_pooler": False, "add_mlm_head": True,
    },
}  # fmt: skip


# --- Hugging Face checkpoint layout ----------------------------------------------------------------

# Hugging Face ``hidden_act`` names <-> native activation names (same function, op for op).
_HF_ACTS = {
    "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu", "tanh": "tanh", "sigmoid": "sigmoid",
    "leaky_relu": "leaky_relu", "linear": "identity",
}  # fmt: skip
_NATIVE_ACTS = {
    "gelu": "gelu", "gelu_new": "gelu_new", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu",
    "silu": "silu", "tanh": "tanh", "sigmoid": "sigmoid", "leaky_relu": "leaky_relu",
    "identity": "linear",
}  # fmt: skip

# Published architectures -> (add_pooler, add_mlm_head). BertForMaskedLM is built without a pooler
# by transformers; BertForPreTraining has both heads plus next-sentence prediction, which is ignored.
# Where the native model differs from its architecture's default, config.json carries ``add_pooler``
# so the round trip is exact. transformers ignores that key: load such a folder with
# ``AutoModel.from_pretrained(folder, add_pooling_layer=False)``.
_ARCHITECTURES = {
    "BertModel": (True, False),
    "BertForMaskedLM": (False, True),
    "BertForPreTraining": (True, True),
}


def _prefix(config: BertConfig) -> str:
    # transformers nests the encoder under ``bert.`` whenever a head sits beside it.
    return "bert." if config.add_mlm_head else ""


def _hf_key_map(config: BertConfig) -> dict[str, str]:
    """Native key -> Hugging Face ``BertModel`` / ``BertForMaskedLM`` state-dict key."""
    p = _prefix(config)
    key_map = {
        "embed.weight": f"{p}embeddings.word_embeddings.weight",
        "pos_embed.weight": f"{p}embeddings.position_embeddings.weight",
        "type_embed.weight": f"{p}embeddings.token_type_embeddings.weight",
        "embed_norm.weight": f"{p}embeddings.LayerNorm.weight",
        "embed_norm.bias": f"{p}embeddings.LayerNorm.bias",
    }
    sublayers = {
        "attn.q": "attention.self.query", "attn.k": "attention.self.key", "attn.v": "attention.self.value",
        "attn.o": "attention.output.dense", "norm1": "attention.output.LayerNorm",
        "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense", "norm2": "output.LayerNorm",
    }  # fmt: skip
    for i in range(config.num_layers):
        for ours, theirs in sublayers.items():
            for t in ("weight", "bias"):
                key_map[f"blocks.{i}.{ours}.{t}"] = f"{p}encoder.layer.{i}.{theirs}.{t}"
    if config.add_pooler:
        key_map |= {"pooler.weight": f"{p}pooler.dense.weight", "pooler.bias": f"{p}pooler.dense.bias"}
    if config.add_mlm_head:
        key_map |= {
            "mlm.dense.weight": "cls.predictions.transform.dense.weight",
            "mlm.dense.bias": "cls.predictions.transform.dense.bias",
            "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
            "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias",
            "mlm.bias": "cls.predictions.bias",
        }
    return key_map


def _hf_optional(config: BertConfig) -> set[str]:
    """Published keys that may be present and are not loaded (nor saved)."""
    p = _prefix(config)
    optional = {
        # Buffers older transformers versions saved: arange positions and all-zero token types.
        f"{p}embeddings.position_ids",
        f"{p}embeddings.token_type_ids",
        # Copies of tied tensors: the decoder is the word-embedding matrix, its bias cls.predictions.bias.
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
        # Next-sentence prediction (BertForPreTraining, and bert-base-uncased's published weights).
        "cls.seq_relationship.weight",
        "cls.seq_relationship.bias",
    }
    if not config.add_pooler:
        # bert-base-uncased says BertForMaskedLM (no pooler) but ships the pre-training pooler too.
        optional |= {f"{p}pooler.dense.weight", f"{p}pooler.dense.bias"}
    return optional


def _hf_config_from(published: dict) -> dict:
    """Hugging Face ``BertConfig`` dict -> native config kwargs; refuses what this family lacks."""
    refused = []
    if published.get("position_embedding_type", "absolute") not in (None, "absolute"):
        refused.append(f"position_embedding_type={published['position_embedding_type']!r} (only 'absolute')")
    for flag in ("is_decoder", "add_cross_attention"):
        if published.get(flag):
            refused.append(f"{flag}=true (this family is the bidirectional encoder)")
    if published.get("pruned_heads"):
        refused.append("pruned_heads (every layer here has num_attention_heads heads)")
    act = published.get("hidden_act", "gelu")
    if act not in _HF_ACTS:
        refused.append(f"hidden_act={act!r} (supported: {', '.join(sorted(_HF_ACTS))})")
    architectures = published.get("architectures") or ["BertModel"]
    unknown = [a for a in architectures if a not in _ARCHITECTURES]
    if unknown:
        refused.append(f"architectures={unknown} (supported: {', '.join(_ARCHITECTURES)})")
    add_pooler, add_mlm_head = _ARCHITECTURES.get(architectures[0], (True, False))
    add_pooler = bool(published.get("add_pooler", add_pooler))
    if add_mlm_head and published.get("tie_word_embeddings") is False:
        refused.append("tie_word_embeddings=false (the MLM decoder is the word-embedding matrix)")
    if refused:
        raise ValueError("unsupported BERT option(s): " + "; ".join(refused))
    return {
        "vocab_size": published.get("vocab_size", 30522),
        "embed_dim": published.get("hidden_size", 768),
        "num_layers": published.get("num_hidden_layers", 12),
        "num_heads": published.get("num_attention_heads", 12),
        "ffn_dim": published.get("intermediate_size", 3072),
        "max_positions": published.get("max_position_embeddings", 512),
        "type_vocab_size": published.get("type_vocab_size", 2),
        "hidden_act": _HF_ACTS[act],
        "dropout": float(published.get("hidden_dropout_prob", 0.1)),
        "attn_dropout": float(published.get("attention_probs_dropout_prob", 0.1)),
        "norm_eps": float(published.get("layer_norm_eps", 1e-12)),
        "pad_token_id": published.get("pad_token_id", 0),
        "init_std": float(published.get("initializer_range", 0.02)),
        "add_pooler": add_pooler,
        "add_mlm_head": add_mlm_head,
    }


def _hf_config_to(config: BertConfig) -> dict:
    """Native config -> Hugging Face ``BertConfig`` dict (with ``model_type`` and ``architectures``)."""
    if config.hidden_act not in _NATIVE_ACTS:
        raise ValueError(f"hidden_act {config.hidden_act!r} has no Hugging Face equivalent")
    architecture = "BertForMaskedLM" if config.add_mlm_head else "BertModel"
    default_pooler = _ARCHITECTURES[architecture][0]
    pooler = {} if config.add_pooler == default_pooler else {"add_pooler": config.add_pooler}
    return {
        "model_type": "bert",
        "architectures": [architecture],
        **pooler,
        "vocab_size": config.vocab_size,
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.ffn_dim,
        "max_position_embeddings": config.max_positions,
        "type_vocab_size": config.type_vocab_size,
        "hidden_act": _NATIVE_ACTS[config.hidden_act],
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attn_dropout,
        "layer_norm_eps": config.norm_eps,
        "pad_token_id": config.pad_token_id,
        "initializer_range": config.init_std,
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
    }


FAMILY = Family(
    name="bert",
    config_cls=BertConfig,
    model_cls=Bert,
    presets=PRESETS,
    tiny_presets=("bert-tiny",),
    example_input=_example_input,
    formats={
        "hf": CheckpointFormat(
            key_map=_hf_key_map,
            optional=_hf_optional,
            config_from=_hf_config_from,
            config_to=_hf_config_to,
            model_types=("bert",),
        )
    },
)
