"""The edge's embeddings request and response shapes (the route itself runs end to end in
tests/e2e/test_embeddings.py)."""

from __future__ import annotations

import base64
import math
import struct
import time
from typing import Any

import pytest

from llmchat_chat.api.embedding_schemas import (
    MAX_INPUTS,
    as_base64,
    check_dimensions,
    embedding_list,
    max_inputs,
    parse_input,
    shortened,
)
from llmchat_chat.api.embeddings import embedding_error, reservation
from llmchat_chat.errors import ApiError
from llmchat_chat.settings import LimitSettings
from llmchat_common.contracts import ChatRequested, Failed, ModelCapabilities, Usage

MINILM = ModelCapabilities(kind="embedding", tools=False, json_output=False, dimensions=384)


def parse(value: Any, cap: int = MAX_INPUTS) -> list[str] | list[list[int]]:
    return parse_input(value, max_inputs=cap, max_chars=100)


def test_openai_input_forms() -> None:
    assert parse("hello") == ["hello"]
    assert parse(["a", "b"]) == ["a", "b"]
    # A flat array of token ids is one input, however long.
    assert parse([1, 2, 3]) == [[1, 2, 3]]
    assert parse(list(range(3000))) == [list(range(3000))]
    assert parse([[1, 2], [3]]) == [[1, 2], [3]]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "input is an empty string"),
        ([], "input is an empty array"),
        (["a", ""], "input[1] is an empty string"),
        ([[1], []], "input[1] is an empty token array"),
        ([1, -2], "token ids are not negative"),
        ([[1, True]], "input[0]: a token array holds integers only"),
        ([[1, 2.5]], "a token array holds integers only"),
        (["a", 1], "this array mixes kinds"),
        ([["a"]], "a token array holds integers only"),
        ([True], "this array mixes kinds"),
        ({"text": "a"}, "input must be a string, an array of strings"),
        (None, "input must be a string"),
        (42, "input must be a string"),
        ("x" * 101, "input is longer than 100 characters"),
        (["ok", "\ud800"], "input[1] is not valid Unicode text"),
        (["a"] * 5, "at most 4 inputs per request for this model (got 5)"),
    ],
)
def test_bad_input_is_a_400_naming_input(value: Any, message: str) -> None:
    with pytest.raises(ApiError) as err:
        parse(value, cap=4)
    assert err.value.status == 400 and err.value.param == "input"
    assert message in err.value.message


def test_input_cap_keeps_the_vectors_within_one_event() -> None:
    assert max_inputs(None, 8 * 2**20) == MAX_INPUTS
    assert max_inputs(MINILM, 8 * 2**20) == 1354
    assert max_inputs(MINILM.model_copy(update={"dimensions": 64}), 8 * 2**20) == MAX_INPUTS
    # 1354 vectors of 384 floats at the longest spelling still fit.
    assert 1354 * 384 * 16 + 64 * 1024 <= 8 * 2**20


def test_dimensions_only_for_a_matryoshka_model() -> None:
    check_dimensions("m", None, MINILM)
    with pytest.raises(ApiError) as err:
        check_dimensions("m", 128, MINILM)
    assert err.value.param == "dimensions" and "does not support dimensions" in err.value.message
    assert "384 dimensions" in err.value.message
    with pytest.raises(ApiError) as err:
        check_dimensions("m", 128, None)
    assert err.value.param == "dimensions"
    matryoshka = MINILM.model_copy(update={"matryoshka": True})
    check_dimensions("m", 128, matryoshka)
    with pytest.raises(ApiError, match="at most 384"):
        check_dimensions("m", 385, matryoshka)


def test_shortened_vectors_are_normalised_again() -> None:
    vector = [0.6, 0.0, 0.8, 0.0]
    assert shortened(vector, None) == vector
    assert shortened(vector, 4) == vector
    assert shortened([3.0, 4.0, 12.0], 2) == [0.6, 0.8]


def test_base64_is_little_endian_float32() -> None:
    vector = [0.1, -2.5, 1e-7]
    raw = base64.b64decode(as_base64(vector))
    assert raw == struct.pack("<3f", *vector)
    assert [round(x, 6) for x in struct.unpack("<3f", raw)] == [0.1, -2.5, 0.0]


def test_response_is_openais_list() -> None:
    body = embedding_list(
        "emb", [[0.5, 0.25], [1.0, 0.0]], Usage(prompt_tokens=7), encoding_format="float", dimensions=None
    )
    assert body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]},
            {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]},
        ],
        "model": "emb",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    encoded = embedding_list(
        "emb", [[0.5, 0.25]], Usage(prompt_tokens=1), encoding_format="base64", dimensions=None
    )
    assert encoded["data"][0]["embedding"] == base64.b64encode(struct.pack("<2f", 0.5, 0.25)).decode()


def _request(inputs: list[str] | list[list[int]]) -> ChatRequested:
    now = time.time()
    return ChatRequested(
        request_id="embd-1",
        model="emb",
        messages=[],
        kind="embedding",
        inputs=inputs,
        created_at=now,
        deadline=now + 60,
    )


def test_reservation_counts_tokens_and_estimates_texts() -> None:
    limits = LimitSettings()
    assert reservation(_request([[1, 2, 3], [4]]), limits, None) == 4
    # 30 characters at 3 per token, plus the two special tokens.
    assert reservation(_request(["x" * 30]), limits, None) == 12
    assert reservation(_request(["x" * 3000, "y"]), limits, 256) == 256 + math.ceil(1 / 3) + 2


def _failed(message: str, code: str = "invalid_request") -> Failed:
    return Failed(request_id="embd-1", attempt=1, seq=0, worker_id="w", ts=0.0, code=code, message=message)


def test_worker_refusals_name_their_field() -> None:
    error = embedding_error(_failed("input 3: token id 99999 is outside this model's vocabulary"))
    assert (error.status, error.param, error.code) == (400, "input", "invalid_request")
    error = embedding_error(_failed("the model 'tiny-random' is not an embedding model"))
    assert (error.status, error.param) == (400, "model")
    error = embedding_error(_failed("embedding failed: RuntimeError", code="engine_error"))
    assert error.status == 502
