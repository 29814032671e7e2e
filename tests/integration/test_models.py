"""/v1/models lists what live workers serve."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.spec import assert_valid


def test_list_shows_models_with_live_workers(client: openai.OpenAI, gateway) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"tiny-a", "tiny-b"} <= ids
    assert "tiny-idle" not in ids, "no worker serves tiny-idle"
    assert_valid(httpx.get(f"{gateway.base_url}/v1/models").json(), "ListModelsResponse")


def test_retrieve_a_served_model(client: openai.OpenAI, gateway) -> None:
    model = client.models.retrieve("tiny-b")
    assert (model.id, model.object) == ("tiny-b", "model")
    assert_valid(httpx.get(f"{gateway.base_url}/v1/models/tiny-b").json(), "Model")


def test_retrieve_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"


def test_retrieve_known_model_without_worker_is_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        client.models.retrieve("tiny-idle")
    assert err.value.status_code == 503
