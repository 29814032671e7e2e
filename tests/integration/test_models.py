"""/v1/models lists what live workers serve."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.processes import live_worker
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


@pytest.fixture(scope="module")
def embedder(env, workdir, redis_server, gateway):
    with live_worker(["tiny-embed"], env, workdir, redis_server.client) as worker:
        yield worker


def test_models_say_what_they_can_do_and_their_context(gateway, embedder) -> None:
    listed = httpx.get(f"{gateway.base_url}/v1/models").json()
    assert_valid(listed, "ListModelsResponse")
    by_id = {m["id"]: m for m in listed["data"]}
    assert by_id["tiny-a"]["capabilities"] == ["chat", "completions"]
    assert by_id["tiny-a"]["max_model_len"] == 256  # tiny_models.py: max_position_embeddings
    assert by_id["tiny-embed"]["capabilities"] == ["embeddings"]
    one = httpx.get(f"{gateway.base_url}/v1/models/tiny-embed").json()
    assert one == by_id["tiny-embed"]


def test_asking_a_model_for_what_it_cannot_do_is_a_400_naming_model(client: openai.OpenAI, embedder) -> None:
    """The gateway answers from the workers' cards (code model_not_supported) before queueing; a
    worker would have answered invalid_request."""
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="tiny-embed", messages=[{"role": "user", "content": "Hi"}])
    assert chat.value.body["param"] == "model" and chat.value.body["code"] == "model_not_supported"
    assert "does not support chat completions" in chat.value.body["message"]
    with pytest.raises(openai.BadRequestError) as embed:
        client.embeddings.create(model="tiny-a", input="Hi")
    assert embed.value.body["param"] == "model" and "does not support embeddings" in embed.value.body["message"]
    assert client.embeddings.create(model="tiny-embed", input="Hi").data[0].embedding  # what it can do works
