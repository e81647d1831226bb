"""The LLM path of caption splitting and refining: prompts, backends, validation, fallback.

One prompt template per task, kept as versioned data (``data/prompts/split.yaml``,
``data/prompts/refine.yaml``), is used by training (:mod:`pathasst.trainers.splitter` renders its
SFT pairs with it) and by inference through either backend:

* :class:`TransformersBackend`: a local folder, as ``pathasst train splitter`` exports it (merged
  model, or a PEFT adapter over its base) or any transformers causal LM with a chat template;
* :class:`EndpointBackend`: any OpenAI-compatible server (vLLM, TGI, llama.cpp, OpenAI), given as
  ``http(s)://host[:port]/v1``, through :mod:`pathasst.endpoint`.

Nothing an LLM writes is used unchecked. :class:`LLMCaptioner` validates every answer and falls
back on the rules' answer (:func:`~pathasst.dataset_builders.curate.captions.split_caption`,
:func:`~pathasst.dataset_builders.curate.captions.refine_caption`) on any failure, with one of
these reasons (counted per reason in the run summary and recorded on the record):

``too_long``
    the caption is longer than ``max_prompt_chars`` (and ``long_caption=fallback``);
``timeout``
    the model or endpoint took longer than ``timeout_s``;
``truncated``
    generation stopped at ``max_new_tokens`` before the answer was complete;
``repetition``
    the output loops (a repeated tail), or names the same panel over and over;
``invalid_json``
    the output is not one JSON object;
``schema``
    the JSON does not satisfy the template's JSON Schema (``jsonschema``);
``unfaithful``
    a content word of a sub-caption (or of the refined caption) is not in the caption: the model
    added something;
``empty``
    the model answered nothing, or split a caption into panels that are all empty;
``endpoint_down``
    the endpoint could not be reached (only with ``on_endpoint_down=fallback``);
``error``
    the backend raised something else (the message is recorded).

Faithfulness compares *content words*: case-folded runs of letters and runs of digits, less a
short list of function words (a model may write "and" where the caption has a comma). A word
in a script written without spaces (Chinese, Japanese, Thai) is supported when it occurs inside
the caption, not only as a whole word.

Importing this module is cheap: transformers, torch, jsonschema and the endpoint client are
imported when a backend or a validator is first used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

from pathasst.errors import ConfigError, InputError, PathasstError

log = logging.getLogger(__name__)

TASKS = ("split", "refine")
FALLBACK_REASONS = ("too_long", "timeout", "truncated", "repetition", "invalid_json", "schema", "unfaithful",
                    "empty", "endpoint_down", "error")
SPLITTER_META = "splitter.json"  # written by `pathasst train splitter` into its model folder
LONG_CAPTION = ("fallback", "truncate")
ON_ENDPOINT_DOWN = ("fallback", "error")

# Function words a model may add or change without adding a fact (English; captions in other
# languages simply have fewer of them to spare).
FUNCTION_WORDS = frozenset(
    "a an the and or of in on at to for with by from as is are was were be been this that these those "
    "its their it which shown show shows showing panel panels respectively".split())


# --------------------------------------------------------------------------------------------
# prompt templates


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """One task's prompt, as stored in ``data/prompts/<task>.yaml``.

    Attributes:
        task: ``split`` or ``refine``.
        version: bumped whenever the wording, answer format or schema changes.
        system: the system message.
        user: the user message, with ``{caption}`` where the caption goes.
        schema: the JSON Schema every answer must satisfy.
    """

    task: str
    version: str
    system: str
    user: str
    schema: Mapping[str, Any]

    @property
    def tag(self) -> str:
        """``task-vVERSION``, as recorded on records and in model folders."""
        return f"{self.task}-v{self.version}"

    def messages(self, caption: str) -> list[dict[str, str]]:
        """The chat messages asking for ``caption``'s answer (system, then user)."""
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user.replace("{caption}", caption)}]


@functools.lru_cache(maxsize=None)
def load_prompt(task: str) -> PromptTemplate:
    """The shipped prompt template of ``task`` (``split`` or ``refine``).

    Raises:
        ConfigError: an unknown task.
    """
    from pathasst.config import yaml_load

    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)} (got {task!r})")
    text = (resources.files("pathasst.dataset_builders.curate") / "data" / "prompts" / f"{task}.yaml").read_text(
        encoding="utf-8")
    data = yaml_load(text)
    return PromptTemplate(task=data["task"], version=str(data["version"]), system=data["system"].strip(),
                          user=data["user"].strip(), schema=data["schema"])


# --------------------------------------------------------------------------------------------
# answers: what a model is trained to write, and how what it wrote is checked


def split_answer(result: Any) -> str:
    """The JSON answer for a :class:`~pathasst.dataset_builders.curate.captions.SplitResult` (the
    SFT target of the split task): compact, keys in the template's order, non-ASCII kept."""
    return json.dumps({"shared_prefix": result.shared_prefix, "shared_suffix": result.shared_suffix,
                       "panels": [{"label": p.label, "subcaption": p.subcaption} for p in result.panels]},
                      ensure_ascii=False, separators=(", ", ": "))


def refine_answer(refined: str) -> str:
    """The JSON answer of the refine task."""
    return json.dumps({"caption": refined}, ensure_ascii=False, separators=(", ", ": "))


class AnswerRejected(Exception):
    """An LLM answer that cannot be used; ``reason`` is one of :data:`FALLBACK_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def content_words(text: str) -> list[str]:
    """The words faithfulness compares (see the module docstring)."""
    from pathasst.dataset_builders.curate.captions import words

    return [w for w in words(text) if w not in FUNCTION_WORDS]


def _spaceless(word: str) -> bool:
    # scripts written without spaces between words: CJK ideographs, kana, Hangul, Thai, Lao, Khmer
    return any("\u0e00" <= ch <= "\u0eff" or "\u1780" <= ch <= "\u17ff" or "\u3040" <= ch <= "\u30ff"
               or "\u3400" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uf900" <= ch <= "\ufaff"
               for ch in word)


def unfaithful_words(output: str, caption: str, allowed: Iterable[str] = ()) -> list[str]:
    """Content words of ``output`` that the caption does not hold (nor ``allowed``)."""
    from pathasst.dataset_builders.curate.captions import words

    known = set(words(caption))
    for item in allowed:
        known.update(words(item))
    folded = caption.casefold()
    return [w for w in content_words(output) if w not in known and not (_spaceless(w) and w in folded)]


_REPEAT_TAIL_MIN = 4  # a tail made of >= 4 copies of one unit is a loop


def is_repetitive(text: str, max_period: int = 120) -> bool:
    """True when ``text`` ends in a loop: its last part is one unit (1..``max_period`` characters)
    repeated at least four times, or the same 6-word run occurs more than 8 times."""
    tail = text.rstrip()
    for period in range(1, max_period + 1):
        span = period * _REPEAT_TAIL_MIN
        if span > len(tail):
            break
        unit = tail[-period:]
        if unit.strip() and tail[-span:] == unit * _REPEAT_TAIL_MIN and (period > 1 or not unit.isalnum()
                                                                          or len(tail) > 40):
            return True
    tokens = text.split()
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - 5):
        gram = tuple(tokens[i:i + 6])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] > 8:
            return True
    return False


def _json_object(text: str) -> Any:
    """The one JSON object of an answer (a ```json fence around it is tolerated)."""
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise AnswerRejected("invalid_json", str(exc)[:120]) from None


def _validate_schema(data: Any, template: PromptTemplate) -> None:
    import jsonschema

    validator = _validator(template.tag, json.dumps(template.schema, sort_keys=True))
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise AnswerRejected("schema", f"{where}: {error.message[:160]}")


@functools.lru_cache(maxsize=8)
def _validator(tag: str, schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def parse_split_answer(text: str, caption: str, template: Optional[PromptTemplate] = None) -> Any:
    """Turn a split answer into a :class:`~pathasst.dataset_builders.curate.captions.SplitResult`,
    or raise :class:`AnswerRejected` (schema, repetition, faithfulness: see the module docstring).

    The result's ``markers_found`` holds the panel labels the answer names.
    """
    from pathasst.dataset_builders.curate.captions import Panel, SplitResult

    template = template or load_prompt("split")
    if not text.strip():
        raise AnswerRejected("empty", "no answer")
    data = _json_object(text)
    _validate_schema(data, template)
    panels = [Panel(p["label"].strip() if isinstance(p["label"], str) else None, p["subcaption"].strip())
              for p in data["panels"]]
    labels = [p.label.casefold() for p in panels if p.label]
    if len(labels) - len(set(labels)) > max(2, len(labels) // 2):
        raise AnswerRejected("repetition", f"{len(labels)} panels but {len(set(labels))} distinct labels")
    if not any(p.subcaption for p in panels) and not (data["shared_prefix"].strip() or data["shared_suffix"].strip()):
        raise AnswerRejected("empty", "every panel is empty")
    parts = [data["shared_prefix"], data["shared_suffix"], *(p.subcaption for p in panels)]
    added = sorted({w for part in parts for w in unfaithful_words(part, caption)})
    if added:
        raise AnswerRejected("unfaithful", "not in the caption: " + ", ".join(added[:8]))
    return SplitResult(shared_prefix=data["shared_prefix"].strip(), shared_suffix=data["shared_suffix"].strip(),
                       panels=panels, markers_found=tuple(p.label for p in panels if p.label))


def parse_refine_answer(text: str, caption: str, template: Optional[PromptTemplate] = None) -> str:
    """The refined caption of a refine answer, or raise :class:`AnswerRejected`.

    The normalisations of the rules (``H&E``, ``PAS``, ``×``) are not counted as added words.
    """
    from pathasst.dataset_builders.curate.captions import NORMALISATION_OUTPUTS

    template = template or load_prompt("refine")
    if not text.strip():
        raise AnswerRejected("empty", "no answer")
    data = _json_object(text)
    _validate_schema(data, template)
    refined = " ".join(data["caption"].split())
    if not refined:
        raise AnswerRejected("empty", "empty caption")
    added = sorted(set(unfaithful_words(refined, caption, NORMALISATION_OUTPUTS)))
    if added:
        raise AnswerRejected("unfaithful", "not in the caption: " + ", ".join(added[:8]))
    return refined


# --------------------------------------------------------------------------------------------
# backends


@dataclasses.dataclass
class Generation:
    """What a backend returned for one prompt.

    Attributes:
        text: the answer.
        finish_reason: ``stop`` (the model ended it), ``length`` (``max_new_tokens`` reached) or
            ``timeout``.
        seconds: wall time of the call.
    """

    text: str
    finish_reason: str
    seconds: float = 0.0


class Backend(Protocol):
    """Anything that answers chat messages: :class:`TransformersBackend`, :class:`EndpointBackend`
    (and scripted fakes in tests)."""

    name: str
    prompt_versions: Mapping[str, str]

    def generate(self, messages: Sequence[Mapping[str, str]], *, max_new_tokens: int, timeout_s: float,
                 schema: Optional[Mapping[str, Any]] = None, tag: str = "") -> Generation: ...


class BackendTimeout(Exception):
    """A backend call that ran past its time limit."""


class BackendUnavailable(Exception):
    """The backend cannot be reached (an endpoint that is down); the message names it."""


class LLMUnavailable(PathasstError):
    """The LLM cannot be reached and it is the only path (``fallback=none`` or
    ``on_endpoint_down=error``): the stage stops (what it wrote so far stays, a rerun resumes).
    Exit code 5, as for :class:`pathasst.endpoint.EndpointError`: input and output were fine."""

    exit_code = 5


def _read_splitter_meta(folder: Path) -> dict[str, Any]:
    path = folder / SPLITTER_META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def load_causal_lm(folder: str | Path, *, device: Optional[str] = None, dtype: str = "auto") -> tuple[Any, Any, dict]:
    """Load a model folder for generation: ``(model, tokenizer, splitter meta)``.

    Accepts what ``pathasst train splitter`` exports (the merged model in the folder itself, or
    only ``adapter/`` over the base model named in ``splitter.json``) and any transformers causal
    LM folder with a tokenizer that has a chat template.

    Raises:
        InputError: the folder is missing or holds neither a model nor an adapter.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"--model {folder}: no such folder (expected a model folder from `pathasst train "
                         "splitter`, or an http(s)://.../v1 endpoint)")
    meta = _read_splitter_meta(root)
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}.get(dtype, "auto")
    if (root / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(root, dtype=torch_dtype)
    elif (root / "adapter" / "adapter_config.json").is_file():
        from peft import PeftModel

        from pathasst.trainers.splitter import resolve_base_folder

        base_dir = resolve_base_folder(meta.get("base_model"), root)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype)
        model = PeftModel.from_pretrained(base, root / "adapter").merge_and_unload()
    else:
        raise InputError(f"--model {folder}: neither a transformers model (config.json) nor a PEFT adapter "
                         "(adapter/adapter_config.json) is in it")
    tokenizer = AutoTokenizer.from_pretrained(root)
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"--model {folder}: its tokenizer has no chat template")
    if device:
        model.to(device)
    elif torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer, meta


def chat_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template (a plain list of ints,
    whatever the transformers version returns)."""
    out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(out, Mapping) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return list(out)


class TransformersBackend:
    """Greedy generation with a local transformers model (see :func:`load_causal_lm`).

    Args:
        folder: the model folder.
        device: ``cpu``, ``cuda``... (default: CUDA when available).
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        prompt_lookup: draft up to this many tokens per step by copying from the prompt
            (prompt-lookup decoding; 0: off). See :class:`LLMSettings`.
    """

    def __init__(self, folder: str | Path, *, device: Optional[str] = None, dtype: str = "auto",
                 prompt_lookup: int = 0) -> None:
        self.model, self.tokenizer, meta = load_causal_lm(folder, device=device, dtype=dtype)
        self.prompt_lookup = prompt_lookup
        self.name = str(folder)
        self.prompt_versions = dict(meta.get("prompt_versions") or {})
        # stop at the end of the assistant turn, whichever token the template closes it with
        stops = {self.tokenizer.eos_token_id}
        for token in ("<|im_end|>", "<|eot_id|>", "</s>", "<|end|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != getattr(self.tokenizer, "unk_token_id", None) and tid >= 0:
                stops.add(tid)
        self.stop_ids = sorted(t for t in stops if t is not None)

    def generate(self, messages: Sequence[Mapping[str, str]], *, max_new_tokens: int, timeout_s: float,
                 schema: Optional[Mapping[str, Any]] = None, tag: str = "") -> Generation:
        import torch

        started = time.monotonic()
        ids = chat_ids(self.tokenizer, messages, add_generation_prompt=True)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        # drafts copied from the prompt are verified by the model: the same greedy answer, fewer passes
        lookup = {"prompt_lookup_num_tokens": self.prompt_lookup} if self.prompt_lookup else {}
        with torch.no_grad():
            out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                      max_new_tokens=max_new_tokens, max_time=timeout_s,
                                      eos_token_id=self.stop_ids, pad_token_id=pad, **lookup)
        seconds = time.monotonic() - started
        new = out[0, input_ids.shape[1]:].tolist()
        ended = bool(new) and new[-1] in self.stop_ids
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if ended:
            finish = "stop"
        elif len(new) >= max_new_tokens:
            finish = "length"
        elif seconds >= timeout_s:
            raise BackendTimeout(f"generation stopped after {seconds:.1f} s (timeout_s={timeout_s})")
        else:
            finish = "stop"
        return Generation(text=text, finish_reason=finish, seconds=seconds)


class EndpointBackend:
    """An OpenAI-compatible chat endpoint (``http(s)://host[:port]/v1``), through
    :class:`pathasst.endpoint.ChatEndpoint` (the ``openai`` client's retries and backoff, the API
    key from ``OPENAI_API_KEY``, errors that name the base URL).

    Args:
        base_url: the endpoint.
        model: the model name the server serves (``endpoint_model=``).
        response_format: ``json_object`` (ask for a JSON answer), ``json_schema`` (send the
            template's schema; vLLM and OpenAI enforce it) or ``none``.
        max_retries: retries of one request (429, 5xx, dropped connections).
        timeout_s: seconds one attempt may take.
    """

    def __init__(self, base_url: str, model: str, *, response_format: str = "json_object", max_retries: int = 2,
                 timeout_s: float = 60.0) -> None:
        from pathasst.endpoint import ChatEndpoint, EndpointConfig

        if not model:
            raise ConfigError(f"--model {base_url} is an endpoint: name the model it serves with endpoint_model=NAME")
        self.base_url = base_url
        self.name = f"{base_url} ({model})"
        self.prompt_versions: dict[str, str] = {}
        self.response_format = response_format
        self.client = ChatEndpoint(EndpointConfig(base_url=base_url, model=model, timeout_s=timeout_s,
                                                  max_retries=max_retries, temperature=0.0))

    def generate(self, messages: Sequence[Mapping[str, str]], *, max_new_tokens: int, timeout_s: float,
                 schema: Optional[Mapping[str, Any]] = None, tag: str = "") -> Generation:
        from pathasst.endpoint import EndpointAuthError, EndpointResponseError, EndpointUnreachable

        response_format: Optional[dict[str, Any]] = None
        if self.response_format == "json_object":
            response_format = {"type": "json_object"}
        elif self.response_format == "json_schema" and schema is not None:
            response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": dict(schema)}}
        started = time.monotonic()
        try:
            done = self.client.complete(list(messages), response_format=response_format, template_version=tag,
                                        max_tokens=max_new_tokens, temperature=0.0)
        except EndpointUnreachable as exc:
            if "no answer within" in str(exc):  # this request timed out: the next one may not
                raise BackendTimeout(str(exc)) from None
            raise BackendUnavailable(str(exc)) from None
        except EndpointAuthError as exc:
            raise BackendUnavailable(str(exc)) from None
        except EndpointResponseError as exc:  # a malformed answer or a 5xx after retries: this record only
            raise RuntimeError(str(exc)) from None
        return Generation(text=done.text or "", finish_reason=done.finish_reason or "stop",
                          seconds=time.monotonic() - started)


def is_endpoint(value: str) -> bool:
    """Whether a ``--model`` value names an endpoint rather than a folder."""
    return value.startswith(("http://", "https://"))


# --------------------------------------------------------------------------------------------
# the captioner: LLM first, checked, rules as fallback


@dataclasses.dataclass
class LLMSettings:
    """The LLM keys shared by ``curate split`` and ``curate refine`` (see their configs).

    Attributes:
        model: a model folder or an ``http(s)://.../v1`` endpoint; None: rules only.
        endpoint_model: the model name an endpoint serves.
        max_new_tokens: generation limit per caption.
        timeout_s: time limit per caption.
        max_prompt_chars: captions longer than this are not sent as they are (see ``long_caption``).
        long_caption: ``fallback`` (the rules split the whole caption; reason ``too_long``) or
            ``truncate`` (the LLM gets the caption cut at a sentence end before the limit, so its
            panels describe only that head; ``meta`` records ``prompt_truncated`` with both lengths,
            and ``caption_raw`` keeps the whole caption).
        fallback: ``rules`` (use the rules' answer when the LLM's fails) or ``none`` (the record
            goes to the ledger with the reason).
        on_endpoint_down: ``fallback`` (to the rules, counted) or ``error`` (stop, naming the URL);
            with ``fallback=none`` an endpoint that is down is always an error.
        response_format: what an endpoint is asked for: ``json_object``, ``json_schema`` (the
            template's schema, enforced by vLLM and OpenAI) or ``none``.
        max_retries: retries of one endpoint request (429, 5xx, dropped connections).
        device: torch device of a local model (default: CUDA when available).
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        prompt_lookup: local models: draft up to this many tokens per forward pass by copying
            n-grams of the prompt (prompt-lookup decoding; 0: off). Every drafted token is
            checked by the model, so the answer is the greedy one either way; a split answer
            copies most of its words from the caption, so several tokens are accepted per pass
            (SmolLM2-135M on a loaded CPU: 60 tokens in 9.6 s instead of 26.4 s, same tokens).
    """

    model: Optional[str] = None
    endpoint_model: Optional[str] = None
    max_new_tokens: int = 768
    timeout_s: float = 120.0
    max_prompt_chars: int = 6000
    long_caption: str = "fallback"
    fallback: str = "rules"
    on_endpoint_down: str = "fallback"
    response_format: str = "json_object"
    max_retries: int = 2
    device: Optional[str] = None
    dtype: str = "auto"
    prompt_lookup: int = 10

    def check(self) -> None:
        """Raise :class:`ValueError` naming the key of a bad value (configs call it in __post_init__)."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 (got {self.timeout_s})")
        if self.max_prompt_chars < 100:
            raise ValueError(f"max_prompt_chars must be >= 100 (got {self.max_prompt_chars})")
        if self.long_caption not in LONG_CAPTION:
            raise ValueError(f"long_caption must be one of {', '.join(LONG_CAPTION)} (got {self.long_caption!r})")
        if self.fallback not in ("rules", "none"):
            raise ValueError(f"fallback must be 'rules' or 'none' (got {self.fallback!r})")
        if self.on_endpoint_down not in ON_ENDPOINT_DOWN:
            raise ValueError(f"on_endpoint_down must be one of {', '.join(ON_ENDPOINT_DOWN)} "
                             f"(got {self.on_endpoint_down!r})")
        if self.response_format not in ("json_object", "json_schema", "none"):
            raise ValueError(f"response_format must be json_object, json_schema or none (got {self.response_format!r})")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 (got {self.max_retries})")
        if self.prompt_lookup < 0:
            raise ValueError(f"prompt_lookup must be >= 0 (0: off; got {self.prompt_lookup})")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16 (got {self.dtype!r})")


def make_backend(settings: LLMSettings) -> Backend:
    """The backend ``settings.model`` names (a folder or an endpoint)."""
    assert settings.model
    if is_endpoint(settings.model):
        return EndpointBackend(settings.model, settings.endpoint_model or "", timeout_s=settings.timeout_s,
                               response_format=settings.response_format, max_retries=settings.max_retries)
    return TransformersBackend(settings.model, device=settings.device, dtype=settings.dtype,
                               prompt_lookup=settings.prompt_lookup)


def truncate_caption(caption: str, limit: int) -> str:
    """``caption`` cut to at most ``limit`` characters, at the last sentence end when there is one
    in the second half, else at the last space."""
    if len(caption) <= limit:
        return caption
    head = caption[:limit]
    ends = [m.end() for m in re.finditer(r"[.!?;\u3002](?=\s|$)", head)]
    if ends and ends[-1] > limit // 2:
        return head[:ends[-1]].rstrip()
    space = head.rfind(" ")
    return head[:space].rstrip() if space > limit // 2 else head


@dataclasses.dataclass
class LLMOutcome:
    """One caption's answer: ``value`` (a SplitResult or a refined caption; None only when the LLM
    failed and ``fallback=none``) and what the record's ``meta`` should say (``info``)."""

    value: Any
    info: dict[str, Any]

    @property
    def used_llm(self) -> bool:
        return self.info.get("status") == "llm"


class LLMCaptioner:
    """Split or refine captions with an LLM, checked, the rules as fallback; counts every outcome.

    Args:
        settings: the LLM keys.
        backend: an already built backend (default: :func:`make_backend`).

    Raises:
        ConfigError / InputError: a bad model folder or endpoint setting.
        pathasst.endpoint.EndpointError: (from :meth:`check_available`) an endpoint that is down
            when the LLM is the only path.
    """

    def __init__(self, settings: LLMSettings, backend: Optional[Backend] = None) -> None:
        settings.check()
        self.settings = settings
        self.backend = backend if backend is not None else make_backend(settings)
        self.down: Optional[str] = None  # why the endpoint is unusable, once found down
        self.stats: dict[str, Any] = {"calls": 0, "accepted": 0, "fallbacks": {}, "truncated_prompts": 0,
                                      "llm_seconds": 0.0}
        self._warned: set[str] = set()
        # subfigure records repeat their parent's caption: one LLM call per caption, not per panel
        self._recent: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}

    # -- bookkeeping

    def summary(self) -> dict[str, Any]:
        """What this run did with the LLM: calls, accepted answers, fallbacks per reason."""
        out = dict(self.stats)
        out["fallbacks"] = dict(sorted(self.stats["fallbacks"].items()))
        out["fallbacks_total"] = sum(out["fallbacks"].values())
        out["llm_seconds"] = round(out["llm_seconds"], 3)
        out["model"] = self.backend.name
        if self.down:
            out["endpoint_down"] = self.down
        return out

    def _fail(self, reason: str, detail: str, info: dict[str, Any]) -> None:
        self.stats["fallbacks"][reason] = self.stats["fallbacks"].get(reason, 0) + 1
        info.update(status="fallback" if self.settings.fallback == "rules" else "failed", reason=reason)
        if detail:
            info["detail"] = detail[:300]

    def prompt_tag(self, task: str) -> str:
        """The prompt template tag of ``task`` (``split-v1``)."""
        return load_prompt(task).tag

    def _template(self, task: str) -> PromptTemplate:
        template = load_prompt(task)
        trained = self.backend.prompt_versions.get(task)
        if trained is not None and str(trained) != template.version and task not in self._warned:
            self._warned.add(task)
            log.warning("%s was trained with prompt %s-v%s; this run uses %s", self.backend.name, task, trained,
                        template.tag)
        return template

    # -- the two tasks

    def split(self, caption: str, *, distribute: bool = False) -> LLMOutcome:
        """Split ``caption`` (see the class docstring); the rules' split on failure."""
        from pathasst.dataset_builders.curate.captions import split_caption

        def rules() -> Any:
            return split_caption(caption, distribute=distribute)

        result, info = self._ask("split", caption, parse_split_answer)
        if result is None:
            return LLMOutcome(rules() if self.settings.fallback == "rules" else None, info)
        if distribute:
            result = result.distribute()
        return LLMOutcome(result, info)

    def refine(self, caption: str) -> LLMOutcome:
        """Refine ``caption`` (see the class docstring); the rules' refinement on failure."""
        from pathasst.dataset_builders.curate.captions import refine_caption

        refined, info = self._ask("refine", caption, parse_refine_answer)
        if refined is None:
            return LLMOutcome(refine_caption(caption) if self.settings.fallback == "rules" else None, info)
        return LLMOutcome(refined, info)

    def _ask(self, task: str, caption: str, parse) -> tuple[Any, dict[str, Any]]:
        key = (task, caption)
        if key in self._recent:
            self.stats["reused"] = self.stats.get("reused", 0) + 1
            value, info = self._recent[key]
            return value, dict(info)
        value, info = self._answer(task, caption, parse)
        if len(self._recent) >= 256:
            self._recent.pop(next(iter(self._recent)))
        self._recent[key] = (value, dict(info))
        return value, info

    def _answer(self, task: str, caption: str, parse) -> tuple[Any, dict[str, Any]]:
        template = self._template(task)
        info: dict[str, Any] = {"model": self.backend.name, "prompt": template.tag}
        prompt_caption = caption
        if len(caption) > self.settings.max_prompt_chars:
            if self.settings.long_caption == "fallback":
                self._fail("too_long", f"{len(caption)} characters > max_prompt_chars={self.settings.max_prompt_chars}",
                           info)
                return None, info
            prompt_caption = truncate_caption(caption, self.settings.max_prompt_chars)
            info["prompt_truncated"] = {"chars": len(caption), "sent": len(prompt_caption)}
            self.stats["truncated_prompts"] += 1
        if self.down:
            self._fail("endpoint_down", self.down, info)
            return None, info
        self.stats["calls"] += 1
        try:
            gen = self.backend.generate(template.messages(prompt_caption), max_new_tokens=self.settings.max_new_tokens,
                                        timeout_s=self.settings.timeout_s, schema=template.schema,
                                        tag=template.tag)
        except BackendTimeout as exc:
            self._fail("timeout", str(exc), info)
            return None, info
        except BackendUnavailable as exc:
            if self.settings.on_endpoint_down == "error" or self.settings.fallback == "none":
                raise LLMUnavailable(f"--model {self.settings.model}: {exc}; the LLM is the only path with these "
                                     "settings (fallback=none or on_endpoint_down=error)") from None
            self.down = str(exc)
            log.warning("the LLM is unreachable, the rules serve from now on: %s", exc)
            self._fail("endpoint_down", self.down, info)
            return None, info
        except Exception as exc:  # noqa: BLE001 - a backend bug must not lose the record
            self._fail("error", f"{type(exc).__name__}: {exc}", info)
            return None, info
        self.stats["llm_seconds"] += gen.seconds
        if gen.finish_reason == "timeout":
            self._fail("timeout", f"after {gen.seconds:.1f} s", info)
            return None, info
        if gen.finish_reason == "length":
            reason = "repetition" if is_repetitive(gen.text) else "truncated"
            self._fail(reason, f"stopped at max_new_tokens={self.settings.max_new_tokens}", info)
            return None, info
        try:
            value = parse(gen.text, caption, template)
        except AnswerRejected as exc:
            if exc.reason == "invalid_json" and is_repetitive(gen.text):
                exc = AnswerRejected("repetition", exc.detail)
            self._fail(exc.reason, exc.detail, info)
            return None, info
        self.stats["accepted"] += 1
        info["status"] = "llm"
        return value, info

    def check_available(self) -> None:
        """For an endpoint, one tiny request before the run: when it fails, either raise (the LLM
        is the only path: ``fallback=none`` or ``on_endpoint_down=error``) or mark the backend down
        so that every record is served by the rules, counted as ``endpoint_down``."""
        if not isinstance(self.backend, EndpointBackend):
            return
        try:
            self.backend.generate([{"role": "user", "content": "Answer with {}"}], max_new_tokens=4,
                                  timeout_s=self.settings.timeout_s)
        except RuntimeError as exc:  # it answered, if badly: reachable; records will say what went wrong
            log.warning("endpoint %s answered the probe with an error: %s", self.backend.base_url, exc)
        except (BackendUnavailable, BackendTimeout) as exc:
            if self.settings.on_endpoint_down == "error" or self.settings.fallback == "none":
                raise InputError(f"--model {self.backend.base_url}: the endpoint is not answering ({exc}); "
                                 "it is the only path with these settings (fallback=none or "
                                 "on_endpoint_down=error)") from None
            self.down = str(exc)
            log.warning("endpoint %s is down, the rules serve every record: %s", self.backend.base_url, exc)


__all__ = [
    "AnswerRejected",
    "Backend",
    "BackendTimeout",
    "BackendUnavailable",
    "EndpointBackend",
    "FALLBACK_REASONS",
    "Generation",
    "LLMCaptioner",
    "LLMOutcome",
    "LLMSettings",
    "LLMUnavailable",
    "PromptTemplate",
    "TransformersBackend",
    "chat_ids",
    "content_words",
    "is_endpoint",
    "is_repetitive",
    "load_causal_lm",
    "load_prompt",
    "make_backend",
    "parse_refine_answer",
    "parse_split_answer",
    "refine_answer",
    "split_answer",
    "truncate_caption",
    "unfaithful_words",
]
