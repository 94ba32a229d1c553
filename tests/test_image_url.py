"""The image_urls forms: the OpenAPI pattern and the validator accept exactly the same strings."""

from __future__ import annotations

import itertools
import re

import pytest

from fluxedit import image_url
from fluxedit.schema import NOT_BLANK, EditInput

# Python's "$" also matches before a final newline, ECMA-262's does not: compare on the body.
DOCUMENTED = re.compile(image_url.PATTERN.removeprefix("^").removesuffix("$"))

HEADS = [
    "http://",
    "HTTPS://",
    "https://",
    "ftp://",
    "",
    "data:image/png;base64,",
    "DATA:Image/PNG;BASE64,",
    "data:image/;base64,",
    "data:image/png;charset=x;base64,",
    "data:text/plain;base64,",
    "data:image/png,",
    "data:image/png;base64",
    "data:image/" + "x" * image_url.MAX_DATA_HEADER_CHARS + ";base64,",
    "data:image/" + "x" * (image_url.MAX_DATA_HEADER_CHARS + 1) + ";base64,",
    "data:image/p,ng;base64,",
]
TAILS = [
    "",
    "A",
    "AA",
    "AA=",
    "AA==",
    "AAA",
    "AAA=",
    "AAA==",
    "AAAA",
    "AAAA=",
    "AAAA==",
    "AAAAA",
    "AB+/",
    "A-_B",
    "AAAA\n",
    "AA AA",
    "%2BAA",
    "AAA=A",
    "example.com/cat.png",
]


@pytest.mark.parametrize(("head", "tail"), list(itertools.product(HEADS, TAILS)))
def test_pattern_and_validator_agree(head: str, tail: str) -> None:
    url = head + tail
    assert (image_url.problem(url) is None) == bool(DOCUMENTED.fullmatch(url)), url


@pytest.mark.parametrize("extra", [0, 1])
def test_url_length_bound_agrees(extra: int) -> None:
    for scheme in ("http://", "https://"):
        url = scheme + "x" * (image_url.MAX_URL_CHARS - len(scheme) + extra)
        assert (image_url.problem(url) is None) == bool(DOCUMENTED.fullmatch(url)) == (extra == 0)


def test_each_refusal_says_what_is_wrong() -> None:
    assert "empty" in image_url.problem("")
    assert "'ftp'" in image_url.problem("ftp://example.com/a.png")
    assert "base64 image" in image_url.problem("data:text/plain;base64,AAAA")
    assert "only A-Z" in image_url.problem("data:image/png;base64,AA AA")
    assert "cut short" in image_url.problem("data:image/png;base64,AAAAA")


def test_data_uri_parts_point_into_the_string() -> None:
    url = "data:image/PNG;x=y;base64,AAECAw=="
    parts = image_url.data_uri(url)
    assert (parts.media_type, url[parts.start :], parts.decoded_size(url)) == ("image/png", "AAECAw==", 4)
    assert image_url.data_uri("https://example.com/a.png") is None


@pytest.mark.parametrize("prompt", [" ", "\t\n", "\x1c", "\u3000", "\ufeff", "\x85"])
def test_a_blank_prompt_is_blank_for_the_pattern_too(prompt: str) -> None:
    assert re.search(NOT_BLANK, prompt) is None
    with pytest.raises(ValueError, match="blank"):
        EditInput(prompt=prompt, image_urls=["https://example.com/a.png"])
    assert EditInput(prompt=prompt + "a", image_urls=["https://example.com/a.png"]).prompt
