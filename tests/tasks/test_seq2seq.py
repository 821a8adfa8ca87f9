"""The seq2seq task: streaming BLEU/chrF equal to sacreBLEU's corpus scores, a tiny Transformer that
learns a toy task, prediction, restore, and bad inputs named by row."""

import random

import pytest
import torch

import bigmodel
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError, RecipeError
from bigmodel.models.registry import get_family
from bigmodel.tasks import TASKS
from bigmodel.tasks.seq2seq import Seq2SeqMetric, Seq2SeqOptions, Seq2SeqTask

sacrebleu = pytest.importorskip("sacrebleu")

WORDS = "the a cat dog sat ran on in house big small red blue , . ! Élan niño".split()


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_bleu_chrf_equal_sacrebleu_corpus_scores(seed):
    rng = random.Random(seed)
    refs = [sentence(rng) for _ in range(37)]
    hyps = [r if rng.random() < 0.3 else sentence(rng) for r in refs]
    metric, cut = Seq2SeqMetric(), 0
    while cut < len(hyps):  # uneven batches
        step = rng.randint(1, 9)
        metric.add_sentences(hyps[cut : cut + step], refs[cut : cut + step])
        cut += step
    scores = metric.scores()
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    other = Seq2SeqMetric()  # two ranks' sums merge by addition
    other.add_sentences(hyps[:10], refs[:10])
    rest = Seq2SeqMetric()
    rest.add_sentences(hyps[10:], refs[10:])
    for name, value in rest.sums.items():
        other.sums[name] = other.sums[name] + value
    assert other.scores() == pytest.approx(scores)


def reverse_records(n, seed):
    rng = random.Random(seed)
    letters = "abcdefgh"
    src = [" ".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(n)]
    return ColumnRecords({"source": src, "target": [" ".join(reversed(s.split())) for s in src]}, "toy")


def tiny_task(**options):
    options = {"tokenizer": {"kind": "wordpiece", "vocab_size": 40, "lowercase": False, "min_frequency": 1},
               "eval_generate": None, **options}  # fmt: skip
    return Seq2SeqTask(Seq2SeqOptions(**options), {"max_length": 12})


def test_tiny_transformer_learns_to_reverse():
    torch.manual_seed(0)
    task, train = tiny_task(), reverse_records(300, 0)
    task.fit(task.clean(train, "train"))
    sizes = {"embed_dim": 32, "num_heads": 4, "ffn_dim": 64, "num_layers": 2, "num_decoder_layers": 2}
    model = task.build_model(get_family("transformer"), {**sizes, "dropout": 0.0, "norm_first": True}, None)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    examples = [task.encode(e, None) for e in train]
    losses = []
    for step in range(300):
        batch = task.collate([examples[(step * 16 + i) % len(examples)] for i in range(16)])
        loss = task.loss(model, batch) / batch["num_items"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.2 * sum(losses[:20]) / 20
    test = task.clean(reverse_records(24, 1), "test")
    batch = task.collate([task.encode(e, None) for e in test])
    model.eval()
    metrics = task.metric()
    metrics.update(task.forward(model, batch), batch)
    result = metrics.compute()
    # 300 steps of a 32-wide model: far from perfect, but well past copying the source.
    assert result["translated"] == 24 and result["bleu"] > result["bleu_copy"] + 25
    (example,) = task.parse("a b c d")
    (greedy,) = task.predict(model, task.collate([task.encode(example, None)]))
    assert greedy["source"] == "a b c d" and greedy["translation"].split()[:1] == ["d"]
    beam = tiny_task(num_beams=3)
    beam.tokenizer, beam.eos = task.tokenizer, task.eos
    (beamed,) = beam.predict(model, beam.collate([beam.encode(example, None)]))
    assert isinstance(beamed["translation"], str) and beamed["translation"]


def test_eval_examples_and_generate_thin_held_out_splits():
    task = tiny_task(eval_examples=10, eval_generate=3)
    held = task.clean(reverse_records(50, 2), "validation")
    assert len(held) == 10
    task.fit(reverse_records(50, 3))
    flags = [task.encode(e, None)["generate"] for e in held]
    assert 3 <= sum(flags) <= 10  # 3 chosen (their duplicates in the split too)


def test_bad_rows_are_named():
    task = tiny_task()
    records = ColumnRecords({"source": ["a b", ""], "target": ["b a", "x"]}, "toy.csv")
    with pytest.raises(DataError, match=r"toy.csv \(train split\), row 2: column 'source'.*empty string"):
        task.clean(records, "train")
    records = ColumnRecords({"source": ["a b"], "target": [3]}, "toy.csv")
    with pytest.raises(DataError, match=r"row 1: column 'target' \(data.label\).*int 3"):
        task.clean(records, "validation")
    with pytest.raises(DataError, match="inputs: row 2"):
        task.parse(["a", ""])


def test_recipe_trains_predicts_and_restores(tmp_path):
    records = reverse_records(60, 4)
    path = tmp_path / "pairs.jsonl"
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = {
        "name": "toy-s2s",
        "data": {"source": f"jsonl:{path}", "max_length": 12, "split": {"validation": 0.2, "test": 0.2}},
        "task": {"name": "seq2seq", "tokenizer": {"kind": "bpe", "vocab_size": 40, "min_frequency": 1}},
        "model": {"arch": "transformer", "embed_dim": 32, "num_heads": 2, "ffn_dim": 64, "num_layers": 1,
                  "num_decoder_layers": 1},
        "train": {"max_steps": 3, "batch_size": 8},
    }  # fmt: skip
    run = bigmodel.train(recipe, output=tmp_path / "runs", progress=False)
    assert {"loss", "bleu", "chrf", "bleu_copy"} <= set(run.metrics["test"])
    predictor = bigmodel.load(run.path)
    out = predictor.predict("a b c")
    assert set(out[0]) == {"source", "translation"}


def test_check_refuses_encoder_only_and_vocab():
    cases = (
        ({"arch": "transformer", "vocab_size": 10}, "model.vocab_size"),
        ({"arch": "gpt"}, "encoder-decoder"),
        ({"arch": "transformer", "num_decoder_layers": 0}, "num_decoder_layers"),
    )
    for model, message in cases:
        with pytest.raises(RecipeError, match=message):
            recipe = bigmodel.load_recipe(
                {
                    "name": "x",
                    "data": {"source": "jsonl:x.jsonl"},
                    "task": {"name": "seq2seq"},
                    "model": model,
                }
            )
            TASKS["seq2seq"].from_recipe(recipe).check(recipe, get_family(model["arch"]))
