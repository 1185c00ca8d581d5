"""Next-token logits over a shared prefix are the logits of each row run on its own."""

import pytest

torch = pytest.importorskip("torch")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from learner.reading import PrefixCache, next_token_logits  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def alone(model, row: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([row])).logits[0, -1].float()


ROWS = [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 9], [1, 2, 3, 4, 5, 8, 8, 8, 8, 10]]


@pytest.mark.parametrize("cached", [False, True])
def test_shared_prefix_logits_equal_each_row_run_alone(model, cached):
    cache = PrefixCache() if cached else None
    for rows in (ROWS, ROWS, [[7, 7, 1], [7, 7, 2]], [[3], [4, 5]]):  # prefix kept, changed, none
        got = next_token_logits(model, rows, cache)
        want = torch.stack([alone(model, r) for r in rows])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_cache_keeps_the_prefix_and_reuses_what_a_new_one_shares(model):
    cache = PrefixCache()
    next_token_logits(model, ROWS, cache)
    first = cache.kv
    next_token_logits(model, ROWS[:2], cache)  # same common prefix [1, 2, 3, 4]
    assert cache.kv is first and cache.ids == (1, 2, 3, 4)
    rows = [[1, 2, 6, 5], [1, 2, 6, 7]]  # shares [1, 2] with the cached prefix: cropped, extended
    got = next_token_logits(model, rows, cache)
    assert cache.ids == (1, 2, 6) and cache.kv.get_seq_length() == 3
    assert cache.kv is first  # the same cache, cropped to [1, 2] and extended: not recomputed
    torch.testing.assert_close(got, torch.stack([alone(model, r) for r in rows]), rtol=1e-4,
                               atol=1e-5)


def test_single_rows_share_the_beginning_of_the_last_one(model):
    cache = PrefixCache()
    for row in ([1, 2, 3, 4, 5], [1, 2, 3, 9, 9, 9], [1, 2, 3, 4, 5]):
        got = next_token_logits(model, [row], cache)
        torch.testing.assert_close(got[0], alone(model, row), rtol=1e-4, atol=1e-5)
        assert cache.ids == tuple(row[:-1])


def test_a_training_model_is_read_in_eval_mode_and_left_training(model):
    model.train()
    try:
        next_token_logits(model, ROWS)
        assert model.training
    finally:
        model.eval()
