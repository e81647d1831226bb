"""`pathasst generate instruct` end to end against the local OpenAI-compatible server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from pathlib import Path

from pathasst.cli import main
from pathasst.dataset_builders.generate.scripted import answer, request_fields
from pathasst.testing.openai_server import OpenAITestServer, malformed_json, rate_limited, server_error, stall

from .conftest import CAPTIONS

PER_RECORD = 5  # description, conversation, reasoning, tool, tool-none
USABLE = len(CAPTIONS)


def _args(pathcap: Path, out: Path, server: OpenAITestServer, *extra: str) -> list[str]:
    return ["generate", "instruct", str(pathcap), "--out", str(out), f"endpoint.base_url={server.base_url}",
            "endpoint.model=scripted-model", "endpoint.max_retries=2", "endpoint.timeout_s=5", "--no-progress", *extra]


def _rejects(out: Path) -> list[dict]:
    path = out / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _digests(server: OpenAITestServer) -> list[str]:
    return [hashlib.sha256(r.body).hexdigest() for r in server.http.requests_to("/v1/chat/completions")]


def _load(out: Path):
    from datasets import load_dataset

    ds = load_dataset(str(out))
    return [row for split in ds for row in ds[split]]


def test_generates_every_task_type_and_accounts_for_every_record(pathcap, tmp_path):
    out = tmp_path / "out"
    with OpenAITestServer(answer) as server:
        assert main(_args(pathcap, out, server, "--export-llava", str(tmp_path / "llava" / "train.json"))) == 0
        paid = len(server.chat_requests())
    rows = _load(out)
    assert len(rows) == USABLE * PER_RECORD
    assert {r["task_type"] for r in rows} == {"description", "conversation", "reasoning", "tool"}
    by_id = {r["id"]: r for r in rows}
    for rid in CAPTIONS:
        assert {f"{rid}:{t}" for t in ("description", "conversation", "reasoning", "tool", "tool-none")} <= set(by_id)
    conv = by_id["PMC1/F1:conversation"]
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][0]["content"][0]["type"] == "image" and conv["image"] is not None
    gen = json.loads(conv["generator"])
    assert gen["model"] == "scripted-model" and gen["templates"][0].startswith("conversation@1+")
    # the two records that cannot be used are in the ledger with their reason, nothing else is
    rejects = {r["id"]: r for r in _rejects(out)}
    assert set(rejects) == {"PMC7/F1", "PMC8/F1"}
    assert rejects["PMC7/F1"]["reason"].startswith("caption too short to ground anything (1 words")
    assert rejects["PMC8/F1"]["reason"].startswith("undecodable image")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounted"] and summary["complete"]
    assert summary["usage"]["requests"] == paid and summary["usage"]["tokens"] > 0
    # LLaVA export: <image> in the first human turn, images written once per figure
    llava = json.loads((tmp_path / "llava" / "train.json").read_text())
    assert len(llava) == len(rows)
    entry = next(e for e in llava if e["id"] == "PMC1/F1:description")
    assert entry["conversations"][0]["from"] == "human" and entry["conversations"][0]["value"].startswith("<image>\n")
    assert [t["from"] for t in entry["conversations"]] == ["human", "gpt"]
    assert (tmp_path / "llava" / entry["image"]).is_file()
    assert len(list((tmp_path / "llava" / "train_images").iterdir())) == USABLE
    tool_entry = next(e for e in llava if e["id"] == "PMC1/F1:tool")
    assert "<tool_call>" in tool_entry["conversations"][1]["value"] and tool_entry["tools"]


def test_budget_stop_then_resume_never_pays_twice(pathcap, tmp_path, capsys):
    """The done-when scenario: stopped half-way by a budget, restarted, complete, nothing paid twice."""
    out = tmp_path / "out"
    with OpenAITestServer(answer) as server:
        code = main(_args(pathcap, out, server, "budget.max_requests=25", "endpoint.concurrency=2",
                          "records_in_flight=1"))
        err = capsys.readouterr().err
        assert code == 6 and "request budget reached" in err and "rerun the same command" in err
        assert len(server.chat_requests()) == 25
        first = _load(out)  # the stopped run's folder loads already
        assert 0 < len(first) < USABLE * PER_RECORD
        assert main(_args(pathcap, out, server)) == 0
        digests = _digests(server)
    assert len(digests) == len(set(digests)), "a request was paid twice"
    rows = _load(out)
    assert len(rows) == USABLE * PER_RECORD and len({r["id"] for r in rows}) == len(rows)
    assert {r["id"] for r in _rejects(out)} == {"PMC7/F1", "PMC8/F1"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["this_run"]["records_done_before"] > 0


def test_interrupt_keeps_finished_records_and_resumes(pathcap, tmp_path, capsys):
    """Ctrl-C (SIGINT) half-way: requests in flight finish and are cached, the rerun completes."""
    out = tmp_path / "out"
    sent = threading.Event()

    def responder(request):
        if len(server.chat_requests()) >= 12 and not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signal.SIGINT)
        return answer(request)

    with OpenAITestServer(responder) as server:
        assert main(_args(pathcap, out, server, "endpoint.concurrency=3")) == 130
        assert "interrupted by SIGINT" in capsys.readouterr().err
        assert main(_args(pathcap, out, server)) == 0
        digests = _digests(server)
    assert len(digests) == len(set(digests)), "a request was paid twice"
    assert len(_load(out)) == USABLE * PER_RECORD


def test_unreachable_endpoint_and_rejected_key(pathcap, tmp_path, capsys, monkeypatch):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/v1"
    code = main(["generate", "instruct", str(pathcap), "--out", str(tmp_path / "a"), f"endpoint.base_url={url}",
                 "endpoint.model=m", "endpoint.max_retries=0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 5 and f"endpoint {url} is unreachable" in err and "Traceback" not in err

    # the key is rejected half-way: finished records and the cache stay, the rerun with the key completes
    monkeypatch.setenv("PATHASST_TEST_KEY", "good")
    out = tmp_path / "b"

    def responder(request):
        if len(server.chat_requests()) >= 10:
            server.api_key = "rotated"
        return answer(request)

    with OpenAITestServer(responder, api_key="good") as server:
        args = _args(pathcap, out, server, "endpoint.api_key_env=PATHASST_TEST_KEY", "endpoint.concurrency=1",
                     "records_in_flight=1")
        code = main(args)
        err = capsys.readouterr().err
        assert code == 5 and f"endpoint {server.base_url} rejected the API key (HTTP 401)" in err
        assert "PATHASST_TEST_KEY" in err and "Bearer" not in err
        kept = _load(out)
        assert len(kept) >= PER_RECORD  # the first record was finished before the key was rotated
        monkeypatch.setenv("PATHASST_TEST_KEY", "rotated")
        assert main(args) == 0
        logged = server.http.requests_to("/v1/chat/completions")
    # answered (paid) requests: the first ten with the old key, then those with the new one
    paid = [hashlib.sha256(r.body).hexdigest() for i, r in enumerate(logged)
            if (i < 10 and r.header("Authorization") == "Bearer good") or r.header("Authorization") == "Bearer rotated"]
    assert len(paid) == len(set(paid)), "a request was paid twice"
    assert len(_load(out)) == USABLE * PER_RECORD
    assert (out / ".pathasst" / "responses.sqlite").is_file()
    assert "rotated" not in (out / "config.yaml").read_text()


def test_transient_errors_are_retried_inside_a_run(pathcap, tmp_path):
    out = tmp_path / "out"
    with OpenAITestServer(answer) as server:
        server.queue(rate_limited(0.2), server_error(500), stall(2))
        assert main(_args(pathcap, out, server, "endpoint.timeout_s=0.5", "endpoint.concurrency=1",
                          "records_in_flight=1", "endpoint.max_retries=3")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["usage"]["retries"] == 3
    assert summary["complete"] and len(_load(out)) == USABLE * PER_RECORD


def _scripted_with(task: str, replacement):
    """The scripted model, with the answer for ``task`` replaced (for the first N asks, or always)."""
    def responder(request):
        if request_fields(request).get("Task") == task:
            out = replacement(request)
            if out is not None:
                return out
        return answer(request)

    return responder


def test_wrong_schema_is_repaired_once_then_rejected(pathcap, tmp_path):
    out = tmp_path / "out"
    asked: list[str] = []

    def bad_description(request):
        caption = request_fields(request)["Caption"]
        asked.append(caption)
        if caption.startswith("Colonic"):
            return '{"instruction": "Describe it."}'  # never fixed: rejected after one repair
        if caption.startswith("Renal") and asked.count(caption) == 1:
            return "Sure! Here is the JSON you asked for"  # not JSON: repaired on the second ask
        if caption.startswith("Skin"):
            return {"content": '{"instruction": "Describe the', "finish_reason": "length"}  # truncated
        return None

    with OpenAITestServer(_scripted_with("description", bad_description)) as server:
        assert main(_args(pathcap, out, server)) == 0
        repairs = [r for r in server.chat_requests() if "That answer is invalid" in r["messages"][-1]["content"]]
    rejects = {r["id"]: r for r in _rejects(out)}
    assert rejects["PMC1/F1:description"]["reason"].startswith("schema: description: the JSON does not match")
    assert "(after one repair request)" in rejects["PMC1/F1:description"]["reason"]
    assert "PMC3/F1:description" not in rejects  # repaired
    assert "cut off at the token limit" in rejects["PMC4/F1:description"]["reason"]
    assert len(repairs) == 3
    assert "not valid JSON" in next(r for r in repairs if "Renal" in r["messages"][-3]["content"])["messages"][-1]["content"]
    ids = {r["id"] for r in _load(out)}
    assert "PMC3/F1:description" in ids and "PMC1/F1:description" not in ids
    assert len(ids) + len([r for r in rejects.values() if r["level"] == "sample"]) == USABLE * PER_RECORD


def test_malformed_response_goes_to_the_ledger(pathcap, tmp_path):
    out = tmp_path / "out"
    with OpenAITestServer(answer) as server:
        server.queue(malformed_json())
        assert main(_args(pathcap, out, server, "endpoint.concurrency=1", "records_in_flight=1")) == 0
    rejects = [r for r in _rejects(out) if r["level"] == "sample"]
    assert len(rejects) == 1 and rejects[0]["reason"].startswith("endpoint error: endpoint http://127.0.0.1")
    assert "malformed answer" in rejects[0]["reason"]
    assert json.loads((out / "summary.json").read_text())["accounted"]


def test_grounding_and_dedup_drop_samples_with_reasons(pathcap, tmp_path):
    out = tmp_path / "out"

    def ungrounded(request):
        caption = request_fields(request)["Caption"]
        if caption.startswith("Lung"):  # a diagnosis and a measurement the caption does not state
            return json.dumps({"instruction": "Describe the findings in this image.",
                               "answer": "Granulomas of tuberculosis, each about 2 mm across."})
        return None

    def repeated(request):
        caption = request_fields(request)["Caption"]
        if caption.startswith("Liver"):  # the reasoning question repeats the description's instruction
            return json.dumps({"question": "Describe the findings in this image!", "reasoning": "Steatosis is "
                               "seen in most hepatocytes here.", "answer": "Macrovesicular steatosis."})
        return None

    def repeated_turn(request):
        caption = request_fields(request)["Caption"]
        if caption.startswith("Renal"):
            return json.dumps({"turns": [
                {"question": "What does this image show?", "answer": "A cellular crescent."},
                {"question": "What stain is used?", "answer": "It is a PAS stain."},
                {"question": "What does the image show?", "answer": "A crescent."}]})
        return None

    def responder(request):
        task = request_fields(request).get("Task")
        special = {"description": ungrounded, "reasoning": repeated, "conversation": repeated_turn}.get(task)
        return (special and special(request)) or answer(request)

    with OpenAITestServer(responder) as server:
        assert main(_args(pathcap, out, server)) == 0
    rejects = {r["id"]: r for r in _rejects(out)}
    grounding = rejects["PMC6/F1:description"]["reason"]
    assert grounding.startswith("grounding: asserts") and "diagnosis 'tuberculosis'" in grounding
    assert "measurement '2 mm'" in grounding
    assert rejects["PMC5/F1:reasoning"]["reason"].startswith("duplicate question: near-identical to PMC5/F1:description")
    assert rejects["PMC3/F1:conversation#turn2"]["level"] == "turn"
    rows = {r["id"]: r for r in _load(out)}
    assert len(rows["PMC3/F1:conversation"]["messages"]) == 4  # the repeated turn was dropped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounted"] and summary["this_run"]["turns_dropped"] == 1


def test_tool_dialogue_runs_ihc_and_renders_with_a_tools_chat_template(pathcap, tmp_path):
    from pathasst.dataset_builders.generate.chat import chat_inputs
    from pathasst.tools import get

    out = tmp_path / "out"
    with OpenAITestServer(answer) as server:
        assert main(_args(pathcap, out, server, "tools=[ihc_quantify,pathclip_zero_shot]", "tasks=[tool]")) == 0
    rows = {r["id"]: r for r in _load(out)}
    ihc = rows["PMC2/F1:tool"]  # the only IHC caption: ihc_quantify is run on its image
    gen = json.loads(ihc["generator"])
    assert gen["tool"] == "ihc_quantify" and gen["tool_result"] == "executed"
    assert all(not t.startswith("tool_result@") for t in gen["templates"])
    call = ihc["messages"][1]["tool_calls"][0]
    get("ihc_quantify").validate_arguments(json.loads(call["function"]["arguments"]))
    result = json.loads(ihc["messages"][2]["content"][0]["text"])
    get("ihc_quantify").validate_result(result)
    assert ihc["messages"][2]["tool_call_id"] == call["id"] and ihc["messages"][2]["name"] == "ihc_quantify"
    other = rows["PMC1/F1:tool"]  # not an immunostain: PathCLIP, which cannot run here, is synthesised
    gen = json.loads(other["generator"])
    assert gen["tool"] == "pathclip_zero_shot" and gen["tool_result"] == "synthesised"
    none = rows["PMC1/F1:tool-none"]
    assert none["task_type"] == "tool" and len(none["tools"]) == 2
    assert not any(m["tool_calls"] for m in none["messages"])

    tokenizer = _tiny_tool_tokenizer()
    messages, tools = chat_inputs(ihc, image_token="<image>")
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert '"name": "ihc_quantify"' in text and "<tool_call>" in text and "<tool_response>" in text
    assert "dab_positive_fraction" in text and text.count("<|im_start|>") == 5
    ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True)
    assert len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids) > 10
    messages, tools = chat_inputs(none)
    assert "<tool_call>" not in tokenizer.apply_chat_template(messages, tools=tools, tokenize=False).split("<|im_start|>user")[-1]


# A Qwen2.5-style chat template that supports tools (the convention transformers documents:
# `tools` as JSON schemas, `tool_calls[].function.{name, arguments}`, `tool` role messages).
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call these tools:\n<tools>\n"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n{{ message.content }}"
    "{%- for call in message.tool_calls %}\n<tool_call>\n{\"name\": \"{{ call.function.name }}\", \"arguments\": "
    "{{ call.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
)


def _tiny_tool_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["tool call response image tissue"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = TOOLS_TEMPLATE
    return fast


def test_rerun_with_other_model_needs_resume_and_bad_settings_are_clear(pathcap, tmp_path, capsys):
    out = tmp_path / "out"
    with OpenAITestServer(answer) as server:
        assert main(_args(pathcap, out, server, "max_records=2")) == 0
        # runtime settings may change between runs of one folder; the model may not
        assert main(_args(pathcap, out, server, "endpoint.concurrency=3", "budget.max_cost=5")) == 0
        assert main([*_args(pathcap, out, server), "endpoint.model=other"]) == 3
        assert "different config" in capsys.readouterr().err
    assert main(["generate", "instruct", str(pathcap), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "endpoint.base_url is not set" in capsys.readouterr().err
    assert main(["generate", "instruct", str(pathcap), "--out", str(tmp_path / "x"), "tasks=[poems]",
                 "endpoint.base_url=http://127.0.0.1:9/v1", "endpoint.model=m"]) == 2
    assert "poems" in capsys.readouterr().err
    assert main(["generate", "instruct", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--recipe", "local"]) == 2
    assert "DATASET not found" in capsys.readouterr().err


def test_second_interrupt_cancels_requests_in_flight(pathcap, tmp_path, capsys, caplog):
    """A slow model: the first Ctrl-C waits for the requests in flight, a second one cancels them."""
    out = tmp_path / "out"

    def interrupt_twice():
        import time

        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    with OpenAITestServer(answer, latency=8) as server:
        threading.Thread(target=interrupt_twice, daemon=True).start()
        import time

        start = time.monotonic()
        assert main(_args(pathcap, out, server, "endpoint.timeout_s=30")) == 130
        assert time.monotonic() - start < 6  # not the 8 s the answers in flight would take
    assert "interrupted by SIGINT" in capsys.readouterr().err
    assert "second SIGINT: cancelling" in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["samples_written"] == 0 and summary["this_run"]["records_left"] >= USABLE
    assert not summary["complete"]
