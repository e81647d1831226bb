"""`pathasst generate instruct DATASET... --out DIR --recipe NAME`: PathInstruct through any OpenAI-compatible endpoint.

For every PathCap record (image + caption) the generator asks a chat model, through
:class:`pathasst.endpoint.ChatEndpoint`, for samples of the task types in ``tasks``:

``description``  one instruction about the image and its answer;
``conversation`` 2-4 question/answer turns;
``reasoning``    a question, step-by-step reasoning from visible features, and the answer;
``tool``         a tool-invocation dialogue: the user's request needs one tool of the registry
                 (:mod:`pathasst.tools`), the assistant calls it with arguments valid against the
                 tool's JSON schema, the tool's result follows (the tool is *run* on the record's
                 image when it is in ``run_tools`` and available, e.g. ``ihc_quantify``; otherwise
                 the endpoint *synthesises* a result, checked against the tool's ``result_schema``;
                 the sample's ``generator`` says which), and the assistant answers from it. With
                 ``no_tool_dialogue`` every record also gets a dialogue where tools are offered but
                 none is needed, and the assistant answers without calling one.

Prompts are versioned data files (``templates/*.yaml``, see
:mod:`~pathasst.dataset_builders.generate.templates`); every sample's ``generator`` is a JSON object
naming the model and the template versions that made it.

Gates (:mod:`~pathasst.dataset_builders.generate.gates`): each answer must parse as JSON valid
against the template's schema (a truncated answer is invalid); an invalid answer is sent back once
with the validation error ("repair"), then the sample is rejected. Samples naming a diagnosis,
grade, stain or measurement the caption (or tool result) does not support are rejected; a question
near-identical to an earlier one about the same image is rejected (a repeated conversation turn is
dropped from its conversation). Captions shorter than ``min_caption_words`` and missing or
undecodable images reject the record before any request. Every rejection is a line of
``rejects.jsonl`` with its reason and its ``level`` (record, sample or turn).

Scale and robustness: requests run concurrently (``endpoint.concurrency``) with the openai client's
retries; answers are cached in ``OUT/.pathasst/responses.sqlite`` (or ``cache=FILE``) keyed by
(model, template version, prompt hash), so a rerun or a resumed run never pays twice; ``budget.*``
caps requests, tokens and cost and stops the run cleanly (exit 6); Ctrl-C or SIGTERM stop starting
requests, let those in flight finish (and be cached), keep every finished record and exit 130 (a
second signal cancels the requests in flight); an
unreachable endpoint or a rejected key stops the run with an error naming the base URL (exit 5),
finished records and the cache kept. Rerunning the same command resumes. ``summary.json`` holds
counts, tokens, cost and retries.

``--export-llava FILE`` also writes LLaVA's JSON conversation format (see
:mod:`~pathasst.dataset_builders.generate.llava`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from pathasst.endpoint import Budget, BudgetExceeded, EndpointAuthError, EndpointConfig, EndpointUnreachable

log = logging.getLogger(__name__)

RECIPE_DIR = Path(__file__).with_name("recipes")
TASKS = ("description", "conversation", "reasoning", "tool")
SIMPLE_TASKS = ("description", "conversation", "reasoning")
DEFAULT_TOOLS = ["pathclip_zero_shot", "pathology_selector", "subfigure_detect", "ihc_quantify"]
# words that make an IHC read-out a sensible request for the image
_IHC_HINTS = ("immuno", "ihc", "dab", "ki-67", "ki67", "pd-l1", "pdl1", "her2", "p53", "positive", "expression",
              "stain for", "staining for", "cd3", "cd20", "cd31", "cd34", "cd68", "cytokeratin", "s-100", "s100")


@dataclasses.dataclass
class InstructConfig:
    """Settings of ``generate instruct`` (a ``--recipe`` YAML, then ``key=value`` overrides).

    Attributes:
        endpoint: where to send requests (``endpoint.base_url``, ``endpoint.model``,
            ``endpoint.api_key_env``, ``endpoint.concurrency``, ...).
        budget: caps (``budget.max_requests``, ``budget.max_tokens``, ``budget.max_cost``) and
            prices per 1000 tokens (``budget.price_prompt_per_1k``, ``budget.price_completion_per_1k``).
        tasks: task types to generate per record.
        no_tool_dialogue: with ``tool``, also a dialogue where tools are offered and none is needed.
        tools: the registry tools offered in tool dialogues.
        run_tools: tools run on the record's image when available; the others' results are synthesised.
        tool_models: value of the ``model`` argument per tool (the model the runtime would load).
        min_caption_words: captions with fewer words are skipped (too short to ground anything).
        json_mode: send ``response_format={"type": "json_object"}`` (turn off for servers without it).
        repair: send an invalid answer back once with its validation error before rejecting it.
        grounding: run the grounding filter.
        dedup_threshold: ``difflib`` ratio from which two questions about one image are the same.
        records_in_flight: records worked on at once (0: twice ``endpoint.concurrency``).
        max_records: stop after this many input records (0: all).
        commit_every: commit the output folder every this many samples (a killed run loses at most these,
            and their answers stay cached).
        cache: response cache file; default ``OUT/.pathasst/responses.sqlite``.
        shard: ``K/N``: only the records whose id hashes to the K-th of N parts.
        inputs: the input folders (filled in).
        templates: template tags used (filled in).
    """

    endpoint: EndpointConfig = dataclasses.field(default_factory=EndpointConfig)
    budget: Budget = dataclasses.field(default_factory=Budget)
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(TASKS))
    no_tool_dialogue: bool = True
    tools: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TOOLS))
    run_tools: list[str] = dataclasses.field(default_factory=lambda: ["ihc_quantify"])
    tool_models: dict[str, str] = dataclasses.field(default_factory=lambda: {
        "pathclip_zero_shot": "pathasst/PathCLIP-ViT-B-16",
        "pathology_selector": "pathasst/pathology-selector",
        "subfigure_detect": "pathasst/subfigure-detector",
    })
    min_caption_words: int = 5
    json_mode: bool = True
    repair: bool = True
    grounding: bool = True
    dedup_threshold: float = 0.85
    records_in_flight: int = 0
    max_records: int = 0
    commit_every: int = 500
    cache: str = ""
    shard: Optional[str] = None
    inputs: list[str] = dataclasses.field(default_factory=list)
    templates: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from pathasst.inputs import parse_shard

        parse_shard(self.shard)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks: {unknown or 'empty'}; choose from {', '.join(TASKS)}")
        if not 0 < self.dedup_threshold <= 1:
            raise ValueError(f"dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        if self.min_caption_words < 0 or self.max_records < 0 or self.records_in_flight < 0:
            raise ValueError("min_caption_words, max_records and records_in_flight must be 0 or more")
        if self.commit_every < 1:
            raise ValueError(f"commit_every must be at least 1, got {self.commit_every}")


def output_config(cfg: InstructConfig) -> dict[str, Any]:
    """What the output folder's config hash covers: runtime settings (concurrency, timeouts, budget,
    cache) may change between runs of one folder; model, templates and gates may not."""
    from pathasst.config import to_dict

    data = to_dict(cfg)
    runtime = {"budget": data.pop("budget"), "cache": data.pop("cache"), "max_records": data.pop("max_records"),
               "records_in_flight": data.pop("records_in_flight"), "commit_every": data.pop("commit_every"),
               "endpoint": {}}
    for key in ("base_url", "api_key_env", "timeout_s", "max_retries", "concurrency", "extra_headers"):
        runtime["endpoint"][key] = data["endpoint"].pop(key)
    data["runtime"] = runtime
    return data


# --------------------------------------------------------------------------------------------
# samples


class _Stop(Exception):
    """The run is stopping (interrupt, budget, fatal endpoint error): start no new request."""


@dataclasses.dataclass
class Rejected:
    id: str
    reason: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Sample:
    id: str
    task_type: str
    messages: list[dict[str, Any]]
    tools: list[str]
    generator: dict[str, Any]
    questions: list[str]  # the user turns, for dedup
    text: str  # what the grounding filter reads
    support: str  # what may back it
    numbers: set[str] = dataclasses.field(default_factory=set)


def _text(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]


def _msg(role: str, content: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "tool_calls": extra.get("tool_calls"),
            "name": extra.get("name"), "tool_call_id": extra.get("tool_call_id")}


def _user_first(text: str) -> dict[str, Any]:
    return _msg("user", [{"type": "image", "text": None}, {"type": "text", "text": text}])


def eligible_tools(record: Mapping[str, Any], tools: list[str]) -> list[str]:
    """Tools a request about this record can sensibly need: IHC quantification only for
    immunostains, subfigure detection only for whole (possibly compound) figures."""
    caption = str(record.get("caption") or "").casefold()
    out = []
    for name in tools:
        if name == "ihc_quantify" and not any(h in caption for h in _IHC_HINTS):
            continue
        if name == "subfigure_detect" and (record.get("subfigure_label") or record.get("bbox")):
            continue
        out.append(name)
    return out


def pick(key: str, options: list[str]) -> str:
    """A stable choice among ``options`` by the hash of ``key``."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return options[digest % len(options)]


class Generator:
    """Turns PathCap records into PathInstruct samples through one :class:`ChatEndpoint`."""

    def __init__(self, cfg: InstructConfig, endpoint):
        from pathasst.dataset_builders.generate.gates import Grounding
        from pathasst.dataset_builders.generate.templates import load_template
        from pathasst.tools import get, openai_schema

        self.cfg = cfg
        self.endpoint = endpoint
        self.grounding = Grounding() if cfg.grounding else None
        names = list(SIMPLE_TASKS) + ["tool_request", "tool_result", "tool_answer", "tool_none"]
        self.templates = {name: load_template(name) for name in names}
        self.tools = {name: get(name) for name in cfg.tools}
        self.tool_schemas = [json.dumps(openai_schema(t), sort_keys=True) for t in self.tools.values()]
        self.stopping = False
        self.tool_runs = {"executed": 0, "synthesised": 0}

    # --- one request with the schema gate ---

    async def ask(self, name: str, values: Mapping[str, Any], check=None) -> tuple[dict[str, Any], str]:
        """The template's answer for ``values``, valid against its schema (and ``check``), repaired once.

        Returns:
            ``(data, model)``.

        Raises:
            OutputInvalid: still invalid after the repair; _Stop: the run is stopping.
        """
        from pathasst.dataset_builders.generate.gates import OutputInvalid, parse_output

        tmpl = self.templates[name]
        messages = tmpl.messages({"task": name, **values})
        fmt = {"type": "json_object"} if self.cfg.json_mode else None
        for _attempt in range(2 if self.cfg.repair else 1):
            if self.stopping:
                raise _Stop()
            done = await self.endpoint.acomplete(messages, response_format=fmt, template_version=tmpl.tag)
            try:
                data = parse_output(done.text, tmpl.output_schema, done.finish_reason)
                if check is not None:
                    check(data)
                return data, done.model
            except OutputInvalid as exc:
                error = exc
            messages = [*messages, {"role": "assistant", "content": done.text or ""},
                        {"role": "user", "content": f"That answer is invalid: {error}. Reply again with only the "
                                                    "corrected JSON object."}]
        suffix = " (after one repair request)" if self.cfg.repair else ""
        raise OutputInvalid(f"{name}: {error}{suffix}")

    def _generator(self, model: str, *names: str, **extra: Any) -> dict[str, Any]:
        return {"model": model or self.cfg.endpoint.model, "templates": [self.templates[n].tag for n in names], **extra}

    # --- the task types ---

    async def description(self, sid: str, caption: str) -> Sample:
        data, model = await self.ask("description", {"caption": caption})
        return Sample(sid, "description", [_user_first(data["instruction"]), _msg("assistant", _text(data["answer"]))],
                      [], self._generator(model, "description"), [data["instruction"]],
                      data["instruction"] + "\n" + data["answer"], caption)

    async def conversation(self, sid: str, caption: str) -> Sample:
        data, model = await self.ask("conversation", {"caption": caption})
        messages, questions, text = [], [], []
        for i, turn in enumerate(data["turns"]):
            messages.append(_user_first(turn["question"]) if i == 0 else _msg("user", _text(turn["question"])))
            messages.append(_msg("assistant", _text(turn["answer"])))
            questions.append(turn["question"])
            text += [turn["question"], turn["answer"]]
        return Sample(sid, "conversation", messages, [], self._generator(model, "conversation"), questions,
                      "\n".join(text), caption)

    async def reasoning(self, sid: str, caption: str) -> Sample:
        data, model = await self.ask("reasoning", {"caption": caption})
        answer = f"{data['reasoning'].strip()}\n\nAnswer: {data['answer'].strip()}"
        return Sample(sid, "reasoning", [_user_first(data["question"]), _msg("assistant", _text(answer))], [],
                      self._generator(model, "reasoning"), [data["question"]],
                      "\n".join([data["question"], answer]), caption)

    async def tool_none(self, sid: str, caption: str) -> Sample:
        data, model = await self.ask("tool_none", {"caption": caption, "tool_names": ", ".join(self.tools)})
        return Sample(sid, "tool", [_user_first(data["question"]), _msg("assistant", _text(data["answer"]))],
                      list(self.tool_schemas), self._generator(model, "tool_none", tool=None),
                      [data["question"]], data["question"] + "\n" + data["answer"], caption)

    async def tool(self, sid: str, caption: str, record: Mapping[str, Any], image) -> Sample:
        from pathasst.dataset_builders.generate.gates import OutputInvalid, result_numbers
        from pathasst.tools import ToolError

        options = eligible_tools(record, list(self.tools))
        name = pick(sid, options)
        tool = self.tools[name]
        props = tool.parameters.get("properties", {})
        fixed = {"model": self.cfg.tool_models[name]} if "model" in props and name in self.cfg.tool_models else {}

        def arguments_of(data: Mapping[str, Any]) -> dict[str, Any]:
            args = {**{k: v for k, v in data["arguments"].items() if k not in fixed}, **fixed}
            try:
                tool.validate_arguments(args)
            except ToolError as exc:
                raise OutputInvalid(f"the arguments do not fit the tool's schema: {exc}") from None
            return args

        def check_request(data: Mapping[str, Any]) -> None:
            arguments_of(data)

        values = {"caption": caption, "tool_name": name, "tool_description": tool.description,
                  "tool_parameters": tool.parameters, "fixed_arguments": fixed}
        request, model = await self.ask("tool_request", values, check_request)
        arguments = arguments_of(request)
        used = ["tool_request"]
        source = "synthesised"
        result = None
        if name in self.cfg.run_tools and tool.available()[0]:
            try:
                result = await asyncio.to_thread(tool.run, image, **arguments)
                source = "executed"
            except ToolError as exc:  # unavailable after all, or a result off its schema: synthesise
                log.debug("tool %s could not run on %s (%s); synthesising its result", name, sid, exc)
        if result is None:
            def check_result(data: Mapping[str, Any]) -> None:
                try:
                    tool.validate_result(data["result"])
                except ToolError as exc:
                    raise OutputInvalid(str(exc)) from None

            synth, _ = await self.ask("tool_result", {**values, "arguments": arguments,
                                                      "result_schema": tool.result_schema}, check_result)
            result = synth["result"]
            used.append("tool_result")
        self.tool_runs[source] += 1
        result_text = json.dumps(result, sort_keys=True, ensure_ascii=False)
        answer, _ = await self.ask("tool_answer", {"caption": caption, "request": request["request"], "tool_name": name,
                                                   "arguments": arguments, "result": result})
        used.append("tool_answer")
        call_id = "call_" + hashlib.sha256(sid.encode()).hexdigest()[:12]
        call = {"id": call_id, "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, sort_keys=True, ensure_ascii=False)}}
        messages = [
            _user_first(request["request"]),
            _msg("assistant", [], tool_calls=[call]),
            _msg("tool", _text(result_text), name=name, tool_call_id=call_id),
            _msg("assistant", _text(answer["answer"])),
        ]
        numbers = result_numbers(result) | result_numbers(arguments)
        return Sample(sid, "tool", messages, list(self.tool_schemas),
                      self._generator(model, *used, tool=name, tool_result=source), [request["request"]],
                      request["request"] + "\n" + answer["answer"], caption + "\n" + result_text, numbers)

    # --- one record ---

    def plan(self, rid: str) -> list[str]:
        """The sample ids one record should yield, in order."""
        out = []
        for task in self.cfg.tasks:
            out.append(f"{rid}:{task}")
            if task == "tool" and self.cfg.no_tool_dialogue:
                out.append(f"{rid}:tool-none")
        return out

    async def record(self, row: Mapping[str, Any]) -> tuple[list[Sample], list[Rejected], list[Rejected]]:
        """Samples of one record, the rejected samples, and dropped conversation turns.

        Raises:
            _Stop, BudgetExceeded, EndpointUnreachable, EndpointAuthError: the run must stop; the
            record is left for the next run.
        """
        from pathasst.dataset_builders.generate.gates import OutputInvalid, QuestionDedup
        from pathasst.endpoint import EndpointResponseError

        rid = str(row["id"])
        caption = " ".join(str(row.get("caption") or "").split())
        image = row.get("image")
        if isinstance(image, Mapping):
            image = image.get("bytes")
        ids = self.plan(rid)
        coros = []
        for sid in ids:
            task = sid.rsplit(":", 1)[1]
            if task == "tool":
                coros.append(self.tool(sid, caption, row, image))
            elif task == "tool-none":
                coros.append(self.tool_none(sid, caption))
            else:
                coros.append(getattr(self, task)(sid, caption))
        results = await asyncio.gather(*coros, return_exceptions=True)
        fatal = [r for r in results if isinstance(r, (_Stop, BudgetExceeded, EndpointUnreachable, EndpointAuthError))]
        if fatal:
            raise fatal[0]
        samples, rejected, turns = [], [], []
        dedup = QuestionDedup(self.cfg.dedup_threshold)
        for sid, result in zip(ids, results):
            if isinstance(result, OutputInvalid):
                rejected.append(Rejected(sid, f"schema: {result}"))
                continue
            if isinstance(result, EndpointResponseError):
                rejected.append(Rejected(sid, f"endpoint error: {result}", {"status": result.status}))
                continue
            if isinstance(result, BaseException):
                rejected.append(Rejected(sid, f"generation error: {type(result).__name__}: {str(result)[:300]}"))
                continue
            sample = result
            if self.grounding is not None:
                claims = self.grounding.unsupported(sample.text, sample.support, sample.numbers)
                if claims:
                    rejected.append(Rejected(sid, "grounding: asserts " + ", ".join(map(str, claims[:5]))
                                             + " not supported by the caption",
                                             {"claims": [c.__dict__ for c in claims]}))
                    continue
            repeat = dedup.check(sample.questions[0])
            if repeat is not None:
                rejected.append(Rejected(sid, f"duplicate question: near-identical to {repeat[0]} (ratio {repeat[1]})",
                                         {"question": sample.questions[0]}))
                continue
            if sample.task_type == "conversation":
                sample = self._dedup_turns(sample, dedup, turns)
            for i, question in enumerate(sample.questions):
                dedup.add(question, sid if i == 0 else f"{sid}#turn{i}")
            samples.append(sample)
        return samples, rejected, turns

    def _dedup_turns(self, sample: Sample, dedup, dropped: list[Rejected]) -> Sample:
        """Drop conversation turns whose question repeats an earlier one about the image."""
        from pathasst.dataset_builders.generate.gates import QuestionDedup

        local = QuestionDedup(self.cfg.dedup_threshold)
        local._seen = list(dedup._seen)
        kept_msgs, kept_q = sample.messages[:2], sample.questions[:1]
        local.add(sample.questions[0], sample.id)
        for i in range(1, len(sample.questions)):
            question = sample.questions[i]
            repeat = local.check(question)
            if repeat is not None:
                dropped.append(Rejected(f"{sample.id}#turn{i}", f"duplicate question: near-identical to {repeat[0]} "
                                        f"(ratio {repeat[1]}); turn dropped from the conversation",
                                        {"question": question}))
                continue
            local.add(question, f"{sample.id}#turn{i}")
            kept_msgs += sample.messages[2 * i: 2 * i + 2]
            kept_q.append(question)
        return dataclasses.replace(sample, messages=kept_msgs, questions=kept_q)


def to_record(sample: Sample, row: Mapping[str, Any]) -> dict[str, Any]:
    """The PathInstruct record of a sample, with the PathCap record's image."""
    return {
        "id": sample.id,
        "image": row.get("image"),
        "messages": sample.messages,
        "task_type": sample.task_type,
        "tools": sample.tools,
        "figure_id": row.get("figure_id"),
        "generator": json.dumps(sample.generator, sort_keys=True, ensure_ascii=False),
    }


# --------------------------------------------------------------------------------------------
# the run


def check_record(row: Mapping[str, Any], min_words: int) -> Optional[str]:
    """Why a record cannot be used (before any request), or None."""
    from pathasst.images import ImageRejected, load_rgb

    caption = str(row.get("caption") or "")
    n = len(caption.split())
    if n < min_words:
        return f"caption too short to ground anything ({n} words, min_caption_words={min_words})"
    image = row.get("image")
    data = image.get("bytes") if isinstance(image, Mapping) else image
    if not data:
        return "missing image: the record has no image bytes"
    try:
        load_rgb(data)
    except ImageRejected as exc:
        return f"undecodable image: {exc.reason}"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        return f"undecodable image: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def generate_instruct(datasets: list[str], out: str | Path, cfg: Optional[InstructConfig] = None, *,
                      overwrite: bool = False, resume: bool = False, progress: bool = True,
                      command: Optional[str] = None, export_llava: str | Path | None = None,
                      handle_signals: bool = False) -> dict[str, Any]:
    """Run ``generate instruct`` (see the module docstring).

    Returns:
        The summary, also written to ``out/summary.json``; ``stopped`` says why a run ended early.

    Raises:
        EndpointError: unreachable endpoint or rejected key (finished records are kept).
        InputError, OutputError, ConfigError: bad inputs, output folder or settings.
    """
    from pathasst.dataset_builders.generate.templates import load_template

    cfg = cfg or InstructConfig()
    cfg.endpoint.check()
    names = list(SIMPLE_TASKS) + ["tool_request", "tool_result", "tool_answer", "tool_none"]
    cfg = dataclasses.replace(cfg, inputs=[str(d) for d in datasets],
                              templates={n: load_template(n).tag for n in names})
    return asyncio.run(_run(cfg, Path(out), overwrite=overwrite, resume=resume, progress=progress,
                            command=command or "pathasst generate instruct", export_llava=export_llava,
                            handle_signals=handle_signals))


async def _run(cfg: InstructConfig, out: Path, *, overwrite, resume, progress, command, export_llava,
               handle_signals) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from pathasst.dataset_builders.curate.split import _check_columns, _input_splits, input_shards, iter_rows
    from pathasst.endpoint import ChatEndpoint, ResponseCache
    from pathasst.inputs import in_shard, parse_shard
    from pathasst.records import get_spec
    from pathasst.writer import STATE_DIR, DatasetWriter

    started = time.monotonic()
    shards = [item for dataset in cfg.inputs for item in input_shards(dataset)]
    for dataset in cfg.inputs:
        _check_columns(input_shards(dataset)[0][0], dataset)
    part = parse_shard(cfg.shard)
    splits, salt = _input_splits(cfg.inputs, shards)
    counts = {"records_in": 0, "records_done_before": 0, "records_generated": 0, "records_rejected": 0,
              "samples_written": 0, "samples_rejected": 0, "turns_dropped": 0, "records_left": 0}
    stopped: Optional[str] = None
    fatal: Optional[BaseException] = None

    writer = DatasetWriter(out, get_spec("pathinstruct"), config=output_config(cfg), resume=resume,
                           overwrite=overwrite, splits=splits, split_salt=salt, command=command,
                           config_ignore=("runtime",), max_shard_records=cfg.commit_every)
    cache = ResponseCache(cfg.cache or out / STATE_DIR / "responses.sqlite")
    endpoint = ChatEndpoint(cfg.endpoint, cache=cache, budget=cfg.budget)
    gen = Generator(cfg, endpoint)
    per_record = len(gen.plan("x"))
    window = cfg.records_in_flight or 2 * cfg.endpoint.concurrency
    loop = asyncio.get_running_loop()
    installed = []

    def request_stop(reason: str) -> None:
        nonlocal stopped
        if stopped is None:
            stopped = reason
            log.warning("stopping: %s; requests in flight finish and are cached", reason)
        gen.stopping = True

    pending: dict[asyncio.Task, tuple[str, str, Mapping[str, Any]]] = {}
    signals_seen = 0

    def on_signal(name: str) -> None:
        # first signal: stop starting requests, let those in flight finish into the cache; a second
        # one (a slow model, a long timeout) cancels them: their records are redone on the next run
        nonlocal signals_seen
        signals_seen += 1
        request_stop(f"interrupted by {name}")
        if signals_seen > 1:
            log.warning("second %s: cancelling %d records in flight", name, len(pending))
            for task in pending:
                task.cancel()

    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, signal.Signals(sig).name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no such signal
                pass

    total = None
    if part is None:
        import pyarrow.parquet as pq

        total = sum(pq.ParquetFile(path).metadata.num_rows for path, _ in shards)
        if cfg.max_records:
            total = min(total, cfg.max_records)
    bar = tqdm(total=total, desc="generate instruct", unit="rec", disable=not progress)

    def postfix() -> None:
        u = endpoint.usage
        bar.set_postfix(req=u.requests, cached=u.cache_hits, tok=u.tokens, cost=f"{u.cost:.4f}", refresh=False)

    def write(rid: str, split: str, row: Mapping[str, Any], result) -> None:
        samples, rejected, turns = result
        with writer.unit(rid):
            for sample in samples:
                if writer.add(to_record(sample, row), split=split):
                    counts["samples_written"] += 1
                else:
                    counts["samples_rejected"] += 1
            for item in rejected:
                writer.reject(item.id, item.reason, level="sample", record=rid, **item.info)
                counts["samples_rejected"] += 1
            for item in turns:
                writer.reject(item.id, item.reason, level="turn", record=rid, **item.info)
                counts["turns_dropped"] += 1
        counts["records_generated"] += 1


    async def drain(return_when) -> None:
        nonlocal fatal
        if not pending:
            return
        done, _ = await asyncio.wait(set(pending), return_when=return_when)
        for task in done:
            rid, split, row = pending.pop(task)
            bar.update(1)
            if task.cancelled():
                counts["records_left"] += 1
                continue
            exc = task.exception()
            if exc is None:
                write(rid, split, row, task.result())
            elif isinstance(exc, _Stop):
                counts["records_left"] += 1
            elif isinstance(exc, BudgetExceeded):
                counts["records_left"] += 1
                request_stop(str(exc))
            elif isinstance(exc, (EndpointUnreachable, EndpointAuthError)):
                counts["records_left"] += 1
                fatal = fatal or exc
                request_stop(f"endpoint error: {exc}")
            else:
                raise exc
        postfix()

    try:
        seen: set[str] = set()
        position = -1
        for position, (row, split) in enumerate(iter_rows(shards)):
            rid = row.get("id")
            rid = str(rid) if rid not in (None, "") else f"{split}#{position}"
            if part is not None and not in_shard(rid, part):
                continue
            if cfg.max_records and counts["records_in"] >= cfg.max_records:
                break
            counts["records_in"] += 1
            if stopped is not None:
                counts["records_left"] += 1
                continue
            key = rid if rid not in seen else f"{rid}#dup{position}"
            first = rid not in seen
            seen.add(rid)
            if writer.is_done(key):
                counts["records_done_before"] += 1
                bar.update(1)
                continue
            if not first or row.get("id") in (None, ""):
                reason = "invalid record: no id" if row.get("id") in (None, "") else f"duplicate id: '{rid}' occurs again in the input"
                writer.reject(key, reason, level="record", samples=per_record)
                counts["records_rejected"] += 1
                bar.update(1)
                continue
            problem = await asyncio.to_thread(check_record, row, cfg.min_caption_words)
            if problem:
                writer.reject(rid, problem, level="record", samples=per_record)
                counts["records_rejected"] += 1
                bar.update(1)
                continue
            pending[asyncio.create_task(gen.record(row))] = (rid, split, row)
            if len(pending) >= window:
                await drain(asyncio.FIRST_COMPLETED)
        while pending:
            await drain(asyncio.ALL_COMPLETED)
    except BaseException:
        # a hard stop (second Ctrl-C, a bug): keep what is finished, cancel the rest
        for task in pending:
            task.cancel()
        bar.close()
        writer.close()
        await endpoint.aclose()
        cache.close()
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    bar.close()
    await endpoint.aclose()
    cache.close()
    result = writer.finalize(_card(cfg))
    summary = _summary(cfg, out, counts, result, endpoint, gen, per_record, stopped, started)
    if export_llava:
        from pathasst.dataset_builders.generate.llava import export_llava as _export

        summary["llava"] = _export(out, export_llava)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if fatal is not None:
        raise fatal
    return summary


def _summary(cfg, out, counts, result, endpoint, gen, per_record, stopped, started) -> dict[str, Any]:
    seconds = round(time.monotonic() - started, 3)
    planned = counts["records_generated"] * per_record
    summary = {
        "out": str(out),
        "stage": "generate instruct",
        "model": cfg.endpoint.model,
        "base_url": cfg.endpoint.base_url,
        "templates": cfg.templates,
        "this_run": counts,
        "samples_per_record": per_record,
        "tool_results": gen.tool_runs,
        "usage": endpoint.usage.as_dict(),
        "budget": dataclasses.asdict(cfg.budget),
        "records": result.records,
        "samples_total": result.total_records,
        "rejected_total": result.rejected,
        "reject_reasons": result.reject_reasons,
        "stopped": stopped,
        "complete": stopped is None and counts["records_left"] == 0,
        "seconds": seconds,
        "samples_per_second": round(counts["samples_written"] / seconds, 3) if seconds else None,
    }
    # every planned sample of a generated record is written or in the ledger
    summary["accounted"] = counts["samples_written"] + counts["samples_rejected"] == planned
    if not summary["accounted"]:
        log.warning("accounting: %d samples planned, %d written + %d rejected", planned, counts["samples_written"],
                    counts["samples_rejected"])
    return summary


def _card(cfg: InstructConfig) -> str:
    tags = ", ".join(f"`{t}`" for t in cfg.templates.values())
    return (
        "# PathInstruct\n\n"
        "Pathology instruction-following samples (description, multi-turn conversation, reasoning, and "
        "tool-invocation dialogues) generated from PathCap image-caption pairs by `pathasst generate instruct` "
        f"with the model `{cfg.endpoint.model}` and the prompt templates {tags}. Each sample's `generator` "
        "column names the model and templates that made it, and for tool dialogues whether the tool's result was "
        "executed or synthesised. `messages` follow transformers' chat format (`tool_calls` on assistant turns, "
        "arguments as JSON strings; `name`/`tool_call_id` on tool turns); `tools` holds the JSON schemas offered. "
        "Samples dropped by the quality gates (schema, grounding in the caption, near-identical questions) are "
        "listed in `rejects.jsonl` with their reason.\n\n"
        "```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\")\n```\n"
    )


# --------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Generate PathInstruct samples (description, conversation, reasoning, tool dialogues) for every record of "
        "PathCap folders through an OpenAI-compatible endpoint (endpoint.base_url, endpoint.model; the key comes "
        "from the environment variable named by endpoint.api_key_env). Answers are cached, so a rerun resumes "
        "without paying twice; budget.max_requests / max_tokens / max_cost stop the run cleanly."
    )
    parser.add_argument("inputs", nargs="+", metavar="DATASET | key=value",
                        help="input PathCap dataset folder(s), and settings such as endpoint.model=NAME")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output PathInstruct folder")
    parser.add_argument("--recipe", help=f"recipe name ({', '.join(sorted(p.stem for p in RECIPE_DIR.glob('*.yaml')))}) "
                        "or YAML file; key=value overrides win over it")
    parser.add_argument("--export-llava", metavar="FILE", type=Path,
                        help="also write LLaVA's JSON conversation format (images beside it)")
    parser.add_argument("--shard", metavar="K/N", help="process only the K-th of N disjoint parts of the records")
    parser.add_argument("--overwrite", action="store_true", help="start the output folder afresh (the cache too)")
    parser.add_argument("--resume", action="store_true", help="continue a folder written with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.common import parse_paths_and_overrides
    from pathasst.inputs import require_paths
    from pathasst.subcommands import invoked_command

    # the HTTP client logs every request at INFO: thousands of lines that hide the progress bar
    for name in ("httpx", "httpx2"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    datasets, overrides = parse_paths_and_overrides(list(args.inputs))
    if args.shard is not None:
        overrides.append(f"shard={args.shard}")
    cfg = load_config(InstructConfig, args.recipe, overrides, recipe_dir=RECIPE_DIR)
    cfg.endpoint.check()
    require_paths(datasets, what="DATASET")
    summary = generate_instruct([str(d) for d in datasets], args.out, cfg, overwrite=args.overwrite,
                                resume=args.resume, progress=not args.no_progress,
                                command=invoked_command("pathasst generate instruct"),
                                export_llava=args.export_llava, handle_signals=True)
    print(summary_line(summary))
    if summary["stopped"]:
        print(f"pathasst generate: stopped: {summary['stopped']}; finished records were kept, "
              "rerun the same command to continue", file=sys.stderr)
        return 130 if summary["stopped"].startswith("interrupted") else BudgetExceeded.exit_code
    return 0


def summary_line(summary: Mapping[str, Any]) -> str:
    c, u = summary["this_run"], summary["usage"]
    reasons = "; ".join(f"{k}: {v}" for k, v in summary["reject_reasons"].items())
    return (f"{c['records_in']} records in ({c['records_done_before']} done before, {c['records_left']} left): "
            f"{c['samples_written']} samples written, {c['samples_rejected']} rejected, {c['turns_dropped']} turns "
            f"dropped" + (f" ({reasons})" if reasons else "")
            + f"; {u['requests']} requests paid, {u['cache_hits']} from cache, {u['retries']} retries, "
            f"{u['tokens']} tokens, cost {u['cost']:.4f} -> {summary['out']}")


if __name__ == "__main__":  # python -m pathasst.dataset_builders.generate.instruct DATASET --out DIR
    from pathasst.cli import main as _main

    sys.exit(_main(["generate", "instruct", *sys.argv[1:]]))
