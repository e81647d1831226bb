"""`pathasst serve` and `pathasst chat`: the official openai client against the server on 127.0.0.1
(models, text + image, streaming, tools), error objects for bad requests, and the chat command.

The model is the untrained tiny PathAsst (its text is noise, the plumbing is real); where a test
needs a tool call, a scripted stand-in replaces generation so that the server's and the runtime's
handling of calls is tested independently of what a tiny model happens to emit.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
pytest.importorskip("skimage")

from pathasst.agent import format_tool_call  # noqa: E402
from pathasst.cli import main as cli_main  # noqa: E402
from pathasst.testing.assistant_data import save_tiny_assistant  # noqa: E402
from pathasst.testing.images import make_huge_image_header, tissue_tile  # noqa: E402
from pathasst.tools import get, openai_schema  # noqa: E402
from pathasst.trainers.assistant import Assistant, Generation  # noqa: E402
from pathasst.trainers.serve import ChatService, PathAsstServer  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_assistant(tmp_path_factory.mktemp("tiny") / "pa-tiny" / "model")


@pytest.fixture(scope="module")
def assistant(model_dir):
    return Assistant(model_dir)


def serve(service):
    server = PathAsstServer(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def server(assistant):
    srv = serve(ChatService(assistant, default_max_tokens=8))
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def data_url(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def ask(text="Describe this image.", img=None):
    img = img or tissue_tile(64, seed=1, stain="ihc")
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": data_url(img)}}]}]


def post_raw(server, body: bytes, path="/chat/completions"):
    req = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_and_a_completion_with_an_image(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["pa-tiny"]
    out = client.chat.completions.create(model="pa-tiny", messages=ask(), max_tokens=6)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    # prompt tokens include the image's 16 placeholder tokens
    assert out.usage.prompt_tokens > 16 and 1 <= out.usage.completion_tokens <= 6


def test_streaming_gives_the_same_text_as_non_streaming(client):
    messages = ask("What stain is this?")
    whole = client.chat.completions.create(model="pa-tiny", messages=messages, max_tokens=6)
    chunks = list(client.chat.completions.create(model="pa-tiny", messages=messages, max_tokens=6, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_error_objects_and_the_server_stays_up(client, server):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=ask(), max_tokens=2)
    assert info.value.body["code"] == "model_not_found"
    status, body = post_raw(server, b'{"model": "pa-tiny", "messages": [')
    assert status == 400 and body["error"]["code"] == "invalid_json" and body["error"]["type"] == "invalid_request_error"
    not_image = [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"%PDF-1.4 not an image").decode()}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="pa-tiny", messages=not_image, max_tokens=2)
    assert info.value.body["code"] == "invalid_image"
    bomb = [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(make_huge_image_header()).decode()}}]}]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="pa-tiny", messages=bomb, max_tokens=2)
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.org/x.png"}}]}]
    with pytest.raises(openai.BadRequestError, match="only data: URLs"):
        client.chat.completions.create(model="pa-tiny", messages=remote, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="pa-tiny", messages=ask("word " * 5000), max_tokens=2)
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="pa-tiny", messages=ask(), max_tokens=2, stream=True)
        client.chat.completions.create(model="pa-tiny", messages=ask("word " * 5000), max_tokens=2, stream=True)
    assert info.value.body["code"] == "context_length_exceeded"
    status, body = post_raw(server, b"{}", path="/nope")
    assert status == 404
    # still serving
    assert client.chat.completions.create(model="pa-tiny", messages=ask(), max_tokens=2).choices


def test_a_huge_image_is_resized_by_the_processor(client):
    big = tissue_tile(512, seed=2, stain="ihc").resize((3000, 2400))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(big, "JPEG")}}]}]
    out = client.chat.completions.create(model="pa-tiny", messages=messages, max_tokens=2)
    assert out.usage.prompt_tokens < 200  # 16 image tokens whatever the upload's size


class ScriptedAssistant:
    """The server's view of a model, with scripted replies (records what it was asked)."""

    name = "scripted"

    def __init__(self, assistant, replies):
        self.inner, self.replies, self.seen = assistant, list(replies), []

    def prepare(self, *args, **kwargs):
        return self.inner.prepare(*args, **kwargs)

    def generate(self, messages, tools=None, images=(), **options):
        self.inner.prepare(messages, tools, images, max_new_tokens=options.get("max_new_tokens", 8))
        self.seen.append((messages, tools, images))
        text = self.replies.pop(0)
        text = text(messages) if callable(text) else text
        return Generation(text, 10, 5, "stop")


def test_tools_round_trip_through_the_openai_client(assistant):
    ihc = get("ihc_quantify")

    def answer(messages):
        result = json.loads(messages[-1]["content"])
        return f"{result['positive_nuclei']} positive nuclei."

    scripted = ScriptedAssistant(assistant, [format_tool_call("ihc_quantify", {"dab_threshold": 0.04}), answer,
                                             format_tool_call("ihc_quantify", {})])
    srv = serve(ChatService(scripted))
    try:
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
        img = tissue_tile(96, seed=4, stain="ihc")
        messages = ask("How many nuclei are positive?", img)
        first = client.chat.completions.create(model="scripted", messages=messages, tools=[openai_schema(ihc)])
        assert first.choices[0].finish_reason == "tool_calls"
        [call] = first.choices[0].message.tool_calls
        assert call.function.name == "ihc_quantify" and json.loads(call.function.arguments) == {"dab_threshold": 0.04}
        # the client runs the tool and sends the result back
        result = ihc.run(img, **json.loads(call.function.arguments))
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
        second = client.chat.completions.create(model="scripted", messages=messages, tools=[openai_schema(ihc)])
        assert second.choices[0].message.content == f"{result['positive_nuclei']} positive nuclei."
        sent_messages, sent_tools, _ = scripted.seen[1]
        assert sent_messages[1]["tool_calls"][0]["function"]["arguments"] == {"dab_threshold": 0.04}
        assert sent_tools[0]["function"]["name"] == "ihc_quantify"
        chunks = list(client.chat.completions.create(model="scripted", messages=ask(img=img),
                                                     tools=[openai_schema(ihc)], stream=True))
        calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        assert calls[0].function.name == "ihc_quantify" and chunks[-1].choices[0].finish_reason == "tool_calls"
    finally:
        srv.shutdown()
        srv.server_close()


def test_chat_command_prints_the_answer_and_the_tool_trace(model_dir, tmp_path, capsys, monkeypatch):
    image = tmp_path / "ihc.png"
    from PIL import Image
    from skimage import data

    Image.fromarray(data.immunohistochemistry()).save(image)
    assert cli_main(["chat", str(image), "What is this?", "--model", str(model_dir), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and "tool trace" not in out
    # the full path with tools on, the model's replies scripted: a call, then an answer from the result
    replies = [format_tool_call("ihc_quantify", {}),
               lambda m: "Positive fraction " + str(json.loads(m[-1]["content"])["positive_nuclei_fraction"])]

    def scripted(self, messages, tools=None, images=(), **options):
        assert tools and tools[0]["function"]["name"] == "ihc_quantify" and len(images) == 1
        reply = replies.pop(0)
        return Generation(reply(messages) if callable(reply) else reply, 1, 1, "stop")

    monkeypatch.setattr(Assistant, "generate", scripted)
    assert cli_main(["chat", str(image), "Quantify it.", "--model", str(model_dir), "--tools"]) == 0
    out = capsys.readouterr().out
    expected = get("ihc_quantify").run(Image.open(image).convert("RGB"))
    assert out.splitlines()[0] == f"Positive fraction {expected['positive_nuclei_fraction']}"
    assert "tools offered: ihc_quantify" in out
    assert f'tool trace: step 1 ihc_quantify({{}}) -> {json.dumps(expected, sort_keys=True)}' in out


def test_chat_command_errors(model_dir, tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    assert cli_main(["chat", str(bad), "q", "--model", str(model_dir)]) == 2
    assert "IMAGE" in capsys.readouterr().err
    assert cli_main(["chat", str(bad), "q", "--model", str(tmp_path)]) == 2
    good = tmp_path / "ok.png"
    tissue_tile(32, seed=0, stain="ihc").save(good)
    assert cli_main(["chat", str(good), "q", "--model", str(model_dir), "--tool", "pathology_selector"]) == 2
    assert "--tool-arg pathology_selector.model" in capsys.readouterr().err
