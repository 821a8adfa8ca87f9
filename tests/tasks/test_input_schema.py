"""Every built-in task's ``input_schema`` is exactly what its ``parse`` reads: a record generated from the
schema validates (jsonschema, draft 2020-12) and predicts end to end through a Predictor; an extra or
a missing field fails validation; every field the schema names is read (spoiling it spoils predict)
and every required one is needed (leaving it out fails predict too)."""

from __future__ import annotations

import base64
import copy
import io
import json

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from bigmodel.data.conll2012 import srl_template_columns
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import RunDirError, UserError
from bigmodel.models.registry import get_family
from bigmodel.recipe import load_recipe
from bigmodel.serve.predictor import Predictor
from bigmodel.tasks import TASKS, create_task, restore_task
from helpers import text_rows

VALIDATOR = jsonschema.Draft202012Validator
SPOILED = {"not": ["a", "value"]}  # what no field of any task accepts


# --- tiny data for every task -------------------------------------------------------------------------


def _table():
    rng = np.random.default_rng(0)
    n = 24
    x = [float(v) for v in rng.normal(size=n)]
    x[3] = None  # imputed with the median: the schema accepts null
    city = [["paris", "rome", "oslo"][i % 3] for i in range(n)]
    city[5] = None  # a <missing> slot: null accepted
    y, flag = [float(i % 5) for i in range(n)], [bool(i % 2) for i in range(n)]
    return {"x": x, "y": y, "city": city, "flag": flag, "label": ["a", "b"] * (n // 2)}


def _grey(n: int, size=(12, 10), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(n)]


def _tagged():
    people, places = ["Alice", "Bob", "Carol"], ["Paris", "Rome"]
    tokens, tags = [], []
    for i in range(30):
        tokens.append([people[i % 3], "visited", places[i % 2], "today"])
        tags.append(["B-PER", "O", "B-LOC", "O"])
    return {"tokens": tokens, "tags": tags}


def _qa():
    rows = {"question": [], "context": [], "answers": []}
    for i, (who, where) in enumerate([("Alice", "Paris"), ("Bob", "Rome"), ("Carol", "Oslo")] * 10):
        context = f"{who} lives in {where} since {2000 + i}."
        rows["question"].append("Where does she live?")
        rows["context"].append(context)
        rows["answers"].append({"text": [where], "answer_start": [context.index(where)]})
    return rows


def _scenes():
    rng = np.random.default_rng(0)
    images, masks = [], []
    for _ in range(8):
        image = rng.integers(0, 60, (12, 10), dtype=np.uint8)
        mask = np.zeros((12, 10), np.uint8)
        top = int(rng.integers(0, 6))
        image[top : top + 4, 2:6], mask[top : top + 4, 2:6] = 220, 1
        images.append(image)
        masks.append(mask)
    return {"image": images, "mask": masks}


def _boxes():
    rng = np.random.default_rng(0)
    images, boxes, labels = [], [], []
    for i in range(8):
        image = rng.integers(80, 120, (32, 32, 3), dtype=np.uint8)
        x0, y0 = int(rng.integers(0, 16)), int(rng.integers(0, 16))
        image[y0 : y0 + 12, x0 : x0 + 12] = (200, 30, 30) if i % 2 else (30, 30, 200)
        images.append(image)
        boxes.append([[x0, y0, x0 + 12, y0 + 12]])
        labels.append(["red" if i % 2 else "blue"])
    return {"image": images, "boxes": boxes, "labels": labels}


def _faces():
    rng = np.random.default_rng(0)
    people = [rng.integers(30, 220, (12, 10)) for _ in range(4)]
    images = [
        np.clip(people[i % 4] + rng.normal(0, 10, (12, 10)), 0, 255).astype(np.uint8) for i in range(16)
    ]
    return {"image": images, "label": [f"p{i % 4}" for i in range(16)]}


def _bars():
    images = []
    for i in range(16):
        image = np.zeros((8, 8), np.uint8)
        k = 1 + i % 6
        if i % 2:
            image[:, k : k + 2] = 230
        else:
            image[k : k + 2, :] = 230
        images.append(image)
    return {"image": images, "label": ["vertical" if i % 2 else "horizontal" for i in range(16)]}


TINY_BERT = {"arch": "bert", "embed_dim": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 20, "dropout": 0.0,
             "attn_dropout": 0.0}  # fmt: skip
WORDPIECE = {"vocab_size": 100, "min_frequency": 1}
TEXTS = text_rows(40)
UNET = {"arch": "diffusion_unet", "channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_levels": [], "num_heads": 2, "norm_groups": 4, "dropout": 0.0}  # fmt: skip
GENERATION = {"name": "image_generation", "timesteps": 10, "sampling_steps": 2}
MLP = {"arch": "mlp", "hidden_sizes": [8]}

# case -> (recipe's data, task and model sections; the train records' columns)
AUDIO = {"name": "audio_classification", "clip_seconds": 0.25, "features": {"n_mels": 16}}


def _noise_clips() -> dict:
    clips = [np.random.default_rng(i).normal(0, 0.1, 4000) for i in range(8)]
    return {"audio": clips, "label": ["a", "b"] * 4}


SPEECH = {"name": "speech_recognition", "sample_rate": 8000, "subsample": 2, "conv_channels": 4,
          "features": {"n_mels": 16}}  # fmt: skip


def _spoken_letters() -> dict:
    """0.1 s of noise per letter, with the letters as the transcript (CTC needs frames to spare)."""
    texts = ["ab", "ba", "abba", "b", "a", "aab", "bb", "ab"]
    clips = [np.random.default_rng(i).normal(0, 0.1, 800 * len(t)) for i, t in enumerate(texts)]
    return {"audio": clips, "text": texts}


TTS = {"name": "text_to_speech", "symbols": "abcdefghijklmnopqrstuvwxyz' "}
FASTSPEECH = {"arch": "fastspeech", "embed_dim": 8, "num_heads": 2, "ffn_dim": 8, "num_layers": 1,
              "num_decoder_layers": 1, "duration_channels": 4, "aligner_dim": 4}  # fmt: skip


def _spoken_texts() -> dict:
    """0.05 s of noise per character of each text (the alignment needs a frame per character)."""
    texts = ["the cat sat", "on the mat", "a cat", "the mat sat on a cat"]
    clips = [np.random.default_rng(i).normal(0, 0.1, 800 * len(t)) for i, t in enumerate(texts)]
    return {"audio": clips, "text": texts}


CASES = {
    "causal_lm": ({"max_length": 16}, {"name": "causal_lm", "max_new_tokens": 4},
                  {"arch": "gpt", "embed_dim": 16, "num_heads": 2, "num_layers": 1},
                  lambda: {"text": ["the cat sat on the mat.\n", "a dog sat on a log!\n"] * 10}),
    "classification": ({}, {"name": "classification"}, MLP, _table),
    "classification-array": ({}, {"name": "classification"}, MLP,
                             lambda: {"pixels": [a[:2, :3] for a in _grey(8)], "label": ["a", "b"] * 4}),
    # (1, 8, 8) grey pictures held as numbers, like builtin:digits (values 0..16)
    "classification-picture": ({}, {"name": "classification"}, MLP,
                               lambda: {"image": [a[None] / 16.0 for a in _grey(8, (8, 8))],
                                        "label": ["a", "b"] * 4}),
    "regression": ({"label": "y"}, {"name": "regression"}, MLP, _table),
    "text_classification": ({"text": "text", "max_length": 32}, {"name": "text_classification",
                            "tokenizer": WORDPIECE}, TINY_BERT,
                            lambda: {"text": [t for t, _ in TEXTS], "label": [y for _, y in TEXTS]}),
    "text_classification-pair": (
        {"text": "premise", "text_pair": "hypothesis", "max_length": 32},
        {"name": "text_classification", "tokenizer": WORDPIECE}, TINY_BERT,
        lambda: {"premise": [t for t, _ in TEXTS], "hypothesis": [t for t, _ in reversed(TEXTS)],
                 "label": [y for _, y in TEXTS]}),
    "token_classification": ({"max_length": 32}, {"name": "token_classification", "tokenizer": WORDPIECE},
                             TINY_BERT, _tagged),
    "masked_lm": ({"text": "text", "max_length": 32}, {"name": "masked_lm", "tokenizer": WORDPIECE},
                  TINY_BERT, lambda: {"text": [t for t, _ in TEXTS]}),
    "question_answering": ({"max_length": 48}, {"name": "question_answering", "doc_stride": 8,
                           "max_question_length": 8, "tokenizer": WORDPIECE},
                           {**TINY_BERT, "max_positions": 48}, _qa),
    "seq2seq": ({"max_length": 12}, {"name": "seq2seq", "eval_generate": None,
                "tokenizer": {"kind": "bpe", "vocab_size": 40, "min_frequency": 1}},
                {"arch": "transformer", "embed_dim": 16, "num_heads": 2, "ffn_dim": 32, "num_layers": 1,
                 "num_decoder_layers": 1},
                lambda: {"source": ["a b c", "b c d"] * 8, "target": ["c b a", "d c b"] * 8}),
    "semantic_role_labeling": ({"max_length": 64}, {"name": "semantic_role_labeling", "tokenizer": WORDPIECE},
                               {"arch": "rnn", "bidirectional": True, "embed_dim": 8, "hidden_size": 8},
                               lambda: srl_template_columns(40)),
    "image_classification": ({}, {"name": "image_classification"}, {"arch": "cnn", "channels": [4, 8]},
                             lambda: {"image": _grey(8), "label": ["a", "b"] * 4}),
    "semantic_segmentation": ({}, {"name": "semantic_segmentation", "classes": ["background", "thing"]},
                              {"arch": "unet", "channels": [4, 8], "convs_per_block": 1}, _scenes),
    "face_verification": ({}, {"name": "face_verification", "embedding_dim": 8, "threshold": 0.5},
                          {"arch": "cnn", "channels": [4, 8]}, _faces),
    "image_generation": ({}, GENERATION, UNET, _bars),
    "image_generation-label-required": ({}, {**GENERATION, "label_dropout": 0.0}, UNET, _bars),
    "object_detection": ({}, {"name": "object_detection", "head_channels": 8, "score_threshold": 0.0},
                         {"arch": "cnn", "channels": [8, 8, 8]}, _boxes),
    "audio_classification": ({}, AUDIO, {"arch": "cnn", "channels": [4, 8]}, _noise_clips),
    "speech_recognition": ({}, SPEECH, {"arch": "rnn", "cell": "gru", "hidden_size": 8}, _spoken_letters),
    "text_to_speech": ({}, TTS, FASTSPEECH, _spoken_texts),
}  # fmt: skip


def build(case: str):
    """The task of a case fitted on its tiny records, and a Predictor with the (untrained) model it builds."""
    data, task, model, columns = CASES[case]
    recipe = load_recipe({"name": case, "seed": 0, "data": {"source": "csv:unused.csv", **data},
                          "task": task, "model": model})  # fmt: skip
    fitted = create_task(recipe)
    family = get_family(recipe.model.arch)
    fitted.check(recipe, family)
    fitted.fit(fitted.clean(ColumnRecords(columns(), case), "train"))
    torch.manual_seed(0)
    return fitted, Predictor(fitted.build_model(family, recipe.model.options(), None), fitted)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """case -> (task, predictor), built once per module (causal_lm caches its token file here)."""
    cache: dict = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIGMODEL_CACHE", str(tmp_path_factory.mktemp("tokens")))
        yield lambda case: cache[case] if case in cache else cache.setdefault(case, build(case))


# --- records from a schema -------------------------------------------------------------------------------


def png_base64(image: dict) -> str:
    """A PNG of the image field's size and channels, as base64 text (what a JSON client sends)."""
    (h, w), channels = image["size"], image["channels"]
    pixels = np.random.default_rng(1).integers(0, 256, (h, w, 3) if channels == 3 else (h, w), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def wav_base64(audio: dict) -> str:
    """A WAV of noise at the audio field's sample rate, as base64 text (what a JSON client sends)."""
    import soundfile

    rate = audio["sample_rate"]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.random.default_rng(1).normal(0, 0.1, rate // 4), rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def samples(field: dict) -> list:
    """Valid values of a field: the first is the plain one; then each alternative (``anyOf``) and null."""
    if "anyOf" in field:
        return [v for branch in field["anyOf"] for v in samples(branch)]
    kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
    nulls = [None] if "null" in kinds else []
    if "enum" in field:
        return [next(v for v in field["enum"] if v is not None), *nulls]
    kind = next(k for k in kinds if k != "null")
    if kind == "string" and field.get("x-bigmodel-kind") == "audio":
        value = wav_base64(field["x-bigmodel-audio"])
    elif kind == "string" and field.get("contentEncoding") == "base64":
        value = png_base64(field["x-bigmodel-image"])
    elif kind == "string":
        literal = field.get("pattern", r"\S")
        value = "the cat sat on the mat" if literal == r"\S" else f"the {literal.replace(chr(92), '')} sat"
    elif kind == "number":
        value = 0.5
    elif kind == "integer":
        value = field.get("minimum", 0)
    elif kind == "boolean":
        value = True
    elif kind == "array":
        value = [samples(field["items"])[0]] * field.get("minItems", 1)
    return [value, *nulls]


def record(schema: dict, fields=()) -> dict:
    """A valid record: the required fields, the first ``oneOf`` choice unless ``fields`` make another,
    and ``fields``; each with its plain value."""
    chosen = set(schema["required"]) | set(fields)
    choices = [set(c["required"]) for c in schema.get("oneOf", [])]
    if choices and not any(c <= chosen for c in choices):
        chosen |= choices[0]
    return {name: samples(field)[0] for name, field in schema["properties"].items() if name in chosen}


def as_server_sends(schema: dict, value: dict) -> dict:
    """The record the server hands to ``parse``: base64 fields decoded to bytes."""
    properties = schema["properties"]
    return {name: base64.b64decode(v) if properties[name].get("contentEncoding") == "base64" else v
            for name, v in value.items()}  # fmt: skip


def invalid(schema: dict, value: dict) -> bool:
    return not VALIDATOR(schema).is_valid(value)


# --- the tests ------------------------------------------------------------------------------------------


def test_every_task_has_a_case():
    assert {case.split("-")[0] for case in CASES} == set(TASKS)


@pytest.mark.parametrize("case", list(CASES))
def test_a_record_made_from_the_schema_validates_and_predicts_end_to_end(case, built):
    task, predictor = built(case)
    schema = task.input_schema()
    VALIDATOR.check_schema(schema)
    json.dumps(schema, allow_nan=False)  # plain JSON, as /v1/model serves it
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])
    value = record(schema)
    VALIDATOR(schema).validate(value)
    sent = as_server_sends(schema, value)
    assert len(task.parse([copy.deepcopy(sent)])) >= 1
    assert len(predictor.predict([sent])) == 1
    # every alternative of every field (a list of words or a sentence, null where imputed) predicts too
    for name, field in schema["properties"].items():
        for alternative in samples(field)[1:]:
            other = {**record(schema, [name]), name: alternative}
            VALIDATOR(schema).validate(other)
            assert len(predictor.predict([as_server_sends(schema, other)])) == 1, (name, alternative)


@pytest.mark.parametrize("case", list(CASES))
def test_extra_and_missing_fields_fail_validation_and_every_field_is_read(case, built):
    task, predictor = built(case)
    schema = task.input_schema()
    value = record(schema)
    assert invalid(schema, {**value, "unexpected": 1})
    for name in schema["required"]:
        without = {k: v for k, v in value.items() if k != name}
        assert invalid(schema, without), name
        with pytest.raises(UserError):  # parse needs it: "required" is not stricter than the task
            predictor.predict([as_server_sends(schema, without)])
    for name, field in schema["properties"].items():  # a field parse ignored leaves predict unspoiled
        if field.get("contentEncoding") == "base64":  # valid base64, but not an image
            spoiled = {**record(schema, [name]), name: base64.b64encode(b"not an image").decode()}
        else:
            spoiled = {**record(schema, [name]), name: SPOILED}
            assert invalid(schema, spoiled), name
        with pytest.raises(UserError):
            predictor.predict([as_server_sends(schema, spoiled)])


def test_what_the_schemas_say_for_each_kind_of_field(built):
    table = built("classification")[0].input_schema()
    assert list(table["properties"]) == ["x", "y", "flag", "city"] and table["required"] == [
        "x",
        "y",
        "flag",
        "city",
    ]
    assert table["properties"]["x"]["type"] == ["number", "null"]  # imputed in training
    assert table["properties"]["y"]["type"] == "number"  # never missing: refused at predict
    assert table["properties"]["flag"]["type"] == "boolean"
    assert table["properties"]["city"]["enum"] == ["oslo", "paris", "rome", None]
    array = built("classification-array")[0].input_schema()["properties"]["pixels"]
    assert (array["minItems"], array["items"]["minItems"], array["items"]["items"]["type"]) == (
        2,
        3,
        "number",
    )

    pair = built("text_classification-pair")[0].input_schema()
    assert pair["required"] == ["premise", "hypothesis"]
    assert all(f["x-bigmodel-kind"] == "text" and f["pattern"] == r"\S" for f in pair["properties"].values())
    assert invalid(pair, {"premise": "  ", "hypothesis": "a"})  # blank text: parse refuses it too
    masked = built("masked_lm")[0].input_schema()
    assert masked["properties"]["text"]["pattern"] == r"\[MASK\]" and invalid(masked, {"text": "no mask"})
    assert not invalid(built("causal_lm")[0].input_schema(), {"prompt": " "})  # spaces are a prompt

    srl = built("semantic_role_labeling")[0].input_schema()
    assert set(srl["properties"]) == {"tokens", "sentence", "predicate_index"}
    assert invalid(srl, {"tokens": ["a"], "sentence": "a", "predicate_index": 0})  # one or the other
    assert invalid(srl, {"predicate_index": 0}) and invalid(srl, {"sentence": "a b", "predicate_index": -1})

    image = built("image_classification")[0].input_schema()["properties"]["image"]
    assert image["contentEncoding"] == "base64" and image["x-bigmodel-image"] == {
        "size": [12, 10],
        "channels": 1,
    }
    detection = built("object_detection")[0].input_schema()
    assert list(detection["properties"]) == ["image"]
    assert detection["properties"]["image"]["x-bigmodel-image"] == {"size": [32, 32], "channels": 3}
    faces = built("face_verification")[0].input_schema()
    assert faces["required"] == ["image"] and faces["properties"]["image_pair"]["x-bigmodel-kind"] == "image"

    generation = built("image_generation")[0].input_schema()
    assert generation["required"] == [] and generation["properties"]["label"]["enum"] == [
        "horizontal",
        "vertical",
    ]
    assert built("image_generation-label-required")[0].input_schema()["required"] == ["label"]
    assert invalid(generation, {"count": 0}) and invalid(generation, {"label": "diagonal"})


def test_a_face_run_without_a_threshold_offers_no_second_image(built):
    task, predictor = built("face_verification")
    task.options = task.options.model_copy(update={"threshold": None})  # as a run without validation
    try:
        schema = task.input_schema()
        assert list(schema["properties"]) == ["image"]
        image = base64.b64decode(record(schema)["image"])
        with pytest.raises(UserError, match="threshold"):  # what the schema leaves out, predict refuses
            predictor.predict([{"image": image, "image_pair": image}])
    finally:
        task.options = task.options.model_copy(update={"threshold": 0.5})


def test_a_picture_like_array_column_says_its_size_and_value_range(built, tmp_path):
    task, predictor = built("classification-picture")
    train = np.stack(CASES["classification-picture"][3]()["image"])
    field = task.input_schema()["properties"]["image"]
    assert field["x-bigmodel-kind"] == "array" and field["items"]["items"]["items"]["type"] == "number"
    assert field["x-bigmodel-image"] == {"size": [8, 8], "channels": 1,
                                         "value_range": [float(train.min()), float(train.max())]}  # fmt: skip
    assert (train.min(), train.max()) == (0.0, 255 / 16)  # so the range is the train split's, not 0..1
    assert "x-bigmodel-image" not in built("classification-array")[0].input_schema()["properties"]["pixels"]

    # task.json keeps the range; one written before it was kept restores without it
    state = json.loads(json.dumps(task.state()))
    assert restore_task(state, tmp_path).input_schema()["properties"]["image"] == field
    del state["value_ranges"]
    old = restore_task(state, tmp_path)
    assert old.input_schema()["properties"]["image"]["x-bigmodel-image"] == {"size": [8, 8], "channels": 1}
    for damaged in ({"image": [3, 1]}, {"image": [0, "16"]}, {"pixels": [0, 1]}, [0, 16]):
        with pytest.raises(RunDirError, match=r"task\.json: damaged: .*value_ranges"):
            restore_task({**state, "value_ranges": damaged}, tmp_path)

    # the report shows the picture itself: the value range scaled to 0..255 (an old run: its own min..max)
    picture = np.array([[[0.0, 255 / 16, 255 / 32] + [0.0] * 5] + [[1.0] * 8] * 7])
    shown = task.report_row_input({"image": picture.tolist(), "label": "a"})
    assert shown.mode == "L" and shown.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(shown), np.round(picture[0] * 16).astype(np.uint8))
    stretched = np.asarray(old.report_row_input({"image": picture}))
    assert stretched.max() == 255 and stretched[0, 2] == 128 and stretched.min() == 0
    assert task.report_row_input({"image": "not numbers"}).startswith("image=")  # text, as other rows
