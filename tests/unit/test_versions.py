"""server.versions: version names as clients and the admin API spell them."""

import pytest

from dynalign.config import Config
from server.validate import RequestError
from server.versions import parse_version, public_name


def test_base_is_none():
    assert parse_version("base") is None


@pytest.mark.parametrize("text", ["3", "v3", "dynalign-v3"])
def test_spellings_of_three(text):
    assert parse_version(text) == 3


def test_multi_digit():
    assert parse_version("dynalign-v12") == 12


@pytest.mark.parametrize("text", ["x", "", "v", "dynalign-3x", "V3", "dynalign-base", "-1"])
def test_not_a_version_is_404(text):
    with pytest.raises(RequestError) as e:
        parse_version(text)
    assert e.value.status == 404
    assert e.value.body()["error"]["code"] == "version_not_found"


def test_public_name():
    cfg = Config()
    assert public_name(cfg, None) == "SmolLM2-135M-Instruct"
    assert public_name(cfg, 4) == "dynalign-v4"
