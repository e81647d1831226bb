"""Using a saved PathAsst model: generation, the agent loop over it, and ``pathasst chat``.

:class:`Assistant` loads any folder ``pathasst train pathasst`` exports (or any LLaVA-family folder
with a chat template) through ``AutoModelForImageTextToText`` and ``AutoProcessor``: the same loading
code every other consumer uses, so what works here works in vLLM/TGI and in the benchmarks. It
renders conversations with the processor's chat template, refuses prompts that would not fit the
language model's context (:class:`PromptTooLong`, never a silent truncation), and serialises
generation with a lock (one model, many server threads).

``pathasst chat IMAGE "question" --model DIR [--tools]`` runs :func:`pathasst.agent.run_agent` over it
and prints the answer and the tool trace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from pathasst.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256


class PromptTooLong(InputError):
    """The prompt plus the tokens asked for exceed the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int):
        super().__init__(f"the prompt is {prompt_tokens} tokens and {max_new_tokens} new tokens were asked for, "
                         f"but the model's context is {context} tokens; shorten the conversation or ask for fewer "
                         "tokens")
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context = context


@dataclasses.dataclass
class Generation:
    """One model reply.

    Attributes:
        text: the generated text (special tokens removed).
        prompt_tokens: tokens of the rendered prompt (image tokens included).
        completion_tokens: tokens generated.
        finish_reason: ``stop`` (end of turn) or ``length`` (``max_new_tokens`` reached).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Assistant:
    """A loaded PathAsst model folder.

    Args:
        folder: the model folder (``output_dir/model`` of a training run).
        device: ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``float32`` (CPU), ``bfloat16`` or ``float16`` (GPU).

    Raises:
        InputError: not a model folder transformers can load.
    """

    def __init__(self, folder: str | Path, *, device: str = "cpu", dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.folder = Path(folder).expanduser()
        if not (self.folder / "config.json").is_file():
            raise InputError(f"--model {folder}: no model folder there (no config.json); give the model/ folder "
                             "of `pathasst train pathasst`")
        try:
            self.processor = AutoProcessor.from_pretrained(self.folder)
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.folder, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16,
                                    "float16": torch.float16}[dtype])
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"--model {folder}: cannot load it ({str(exc).splitlines()[0]})") from None
        self.model.to(device).eval()
        self.device = device
        self.tokenizer = self.processor.tokenizer
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.context = int(getattr(text_config, "max_position_embeddings", 2048))
        self.lock = threading.Lock()
        meta = self.folder / "pathasst.json"
        self.meta = json.loads(meta.read_text()) if meta.is_file() else {}

    @property
    def name(self) -> str:
        """The model id the server reports: the folder's name (its parent's for a ``model/`` folder)."""
        return self.folder.parent.name if self.folder.name == "model" and self.folder.parent.name else self.folder.name

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Optional[Sequence[Mapping[str, Any]]] = None) -> str:
        """The prompt text of a conversation, with the generation prompt."""
        return self.tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None, tokenize=False,
                                                  add_generation_prompt=True, chat_template=self.processor.chat_template)

    def prepare(self, messages: Sequence[Mapping[str, Any]], tools: Optional[Sequence[Mapping[str, Any]]] = None,
                images: Sequence[Any] = (), *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> Any:
        """Model inputs for a conversation; images resized by the processor's policy.

        Raises:
            InputError: the image parts and ``images`` differ in number.
            PromptTooLong: the prompt plus ``max_new_tokens`` exceed the context.
        """
        from pathasst.trainers.pathasst import count_images

        wanted = count_images(messages)
        if wanted != len(images):
            raise InputError(f"the conversation has {wanted} image part(s) but {len(images)} image(s) were given")
        text = self.render(messages, tools)
        inputs = self.processor(images=list(images) or None, text=text, return_tensors="pt")
        n = int(inputs["input_ids"].shape[1])
        if n + max_new_tokens > self.context:
            raise PromptTooLong(n, max_new_tokens, self.context)
        return inputs.to(self.device)

    def _kwargs(self, inputs: Any, max_new_tokens: int, temperature: float, top_p: float, use_cache: bool,
                seed: Optional[int]) -> dict[str, Any]:
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        kwargs: dict[str, Any] = dict(inputs)
        kwargs.update(max_new_tokens=max_new_tokens, use_cache=use_cache, do_sample=temperature > 0,
                      pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate(self, messages: Sequence[Mapping[str, Any]], tools: Optional[Sequence[Mapping[str, Any]]] = None,
                 images: Sequence[Any] = (), *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0,
                 top_p: float = 1.0, use_cache: bool = True, seed: Optional[int] = None) -> Generation:
        """One reply to the conversation (greedy unless ``temperature`` > 0)."""
        import torch

        inputs = self.prepare(messages, tools, images, max_new_tokens=max_new_tokens)
        n = int(inputs["input_ids"].shape[1])
        with self.lock, torch.inference_mode():
            out = self.model.generate(**self._kwargs(inputs, max_new_tokens, temperature, top_p, use_cache, seed))
        new = out[0, n:].tolist()
        eos = set(self._eos_ids())
        finish = "stop" if (new and new[-1] in eos) or len(new) < max_new_tokens else "length"
        return Generation(self.decode(new), n, len(new), finish)

    def stream(self, messages: Sequence[Mapping[str, Any]], tools: Optional[Sequence[Mapping[str, Any]]] = None,
               images: Sequence[Any] = (), *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0,
               top_p: float = 1.0, use_cache: bool = True, seed: Optional[int] = None,
               stats: Optional[dict[str, Any]] = None) -> Iterator[str]:
        """The reply as text pieces while it is generated; ``stats`` receives the token counts."""
        import torch
        from transformers import TextIteratorStreamer

        inputs = self.prepare(messages, tools, images, max_new_tokens=max_new_tokens)
        n = int(inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._kwargs(inputs, max_new_tokens, temperature, top_p, use_cache, seed)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                with torch.inference_mode():
                    result["out"] = self.model.generate(**kwargs, streamer=streamer)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
                result["error"] = exc
                streamer.end()

        with self.lock:
            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            try:
                for piece in streamer:
                    if piece:
                        yield piece
            finally:
                thread.join()
        if "error" in result:
            raise result["error"]
        new = result["out"][0, n:].tolist()
        if stats is not None:
            eos = set(self._eos_ids())
            stats.update(prompt_tokens=n, completion_tokens=len(new),
                         finish_reason="stop" if (new and new[-1] in eos) or len(new) < max_new_tokens else "length")

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids as text, special tokens (end of turn, padding) removed."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def agent_generate(self, images: Sequence[Any] = (), **options: Any):
        """A ``generate(messages, tools) -> text`` for :func:`pathasst.agent.run_agent`."""

        def generate(messages: list[dict[str, Any]], tools: Optional[list[dict[str, Any]]]) -> str:
            return self.generate(messages, tools, images, **options).text

        return generate


def offered_tools(fixed: Mapping[str, Mapping[str, Any]], names: Optional[Sequence[str]] = None) -> list[Any]:
    """The registry tools a run can offer: available here, and with every required argument either
    optional or set in ``fixed`` (a model cannot know a local model folder)."""
    from pathasst.tools import get, list_tools

    tools = [get(n) for n in names] if names else list_tools()
    out = []
    for tool in tools:
        ok, why = tool.available()
        missing = [r for r in tool.parameters.get("required", []) if r not in fixed.get(tool.name, {})]
        if ok and not missing:
            out.append(tool)
        elif names:
            reason = why or f"needs {', '.join(missing)}: give --tool-arg {tool.name}.{missing[0]}=VALUE"
            raise InputError(f"--tool {tool.name}: cannot offer it ({reason})")
    return out


def parse_tool_args(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``TOOL.key=value`` items (values parsed as YAML scalars) into ``{tool: {key: value}}``."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        tool, dot, key = head.partition(".")
        if not sep or not dot or not tool or not key:
            raise InputError(f"--tool-arg {item}: expected TOOL.key=value (e.g. pathology_selector.model=runs/sel/model)")
        out.setdefault(tool, {})[key] = yaml.safe_load(value) if value else ""
    return out


# --------------------------------------------------------------------------------------------
# pathasst chat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``pathasst chat`` verb."""
    parser.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, TIFF, ...)")
    parser.add_argument("question", metavar="QUESTION", help="what to ask about the image")
    parser.add_argument("--model", required=True, metavar="DIR", help="PathAsst model folder (training output_dir/model)")
    parser.add_argument("--tools", action="store_true",
                        help="offer the pathology tools (those available here whose required arguments are set)")
    parser.add_argument("--tool", action="append", default=[], metavar="NAME",
                        help="offer only this tool (repeatable; implies --tools)")
    parser.add_argument("--tool-arg", action="append", default=[], metavar="TOOL.key=value",
                        help="an argument the runtime sets for a tool, e.g. pathology_selector.model=DIR")
    parser.add_argument("--system", default=None, help="system prompt (default: the model's own)")
    parser.add_argument("--max-steps", type=int, default=4, help="most model calls of the tool loop (default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="per model call")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print answer, trace and messages as JSON")
    parser.set_defaults(func=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    """``pathasst chat``: answer a question about an image, running the tools the model calls."""
    from pathasst.agent import run_agent
    from pathasst.images import ImageRejected, load_rgb

    if not Path(args.image).is_file():
        raise InputError(f"IMAGE {args.image}: no such file")
    try:
        image = load_rgb(Path(args.image).read_bytes())
    except ImageRejected as exc:
        raise InputError(f"IMAGE {args.image}: {exc.reason}") from None
    if args.max_steps < 1:
        raise InputError("--max-steps must be >= 1")
    fixed = parse_tool_args(args.tool_arg)
    tools = offered_tools(fixed, args.tool) if (args.tools or args.tool) else []
    assistant = Assistant(args.model, device=args.device)
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.question}]})
    result = run_agent(assistant.agent_generate([image], max_new_tokens=args.max_new_tokens,
                                                temperature=args.temperature, seed=args.seed),
                       messages, tools=tools, image=image, fixed_arguments=fixed, max_steps=args.max_steps)
    if args.json:
        print(json.dumps({"answer": result.answer, "stopped": result.stopped, "steps": result.steps,
                          "trace": result.trace_dicts(), "raw": result.raw}, indent=1, ensure_ascii=False))
        return 0
    print(result.answer or "(no answer)")
    if tools:
        print(f"\ntools offered: {', '.join(t.name for t in tools)}; model calls: {result.steps} "
              f"({'answered' if result.stopped == 'answer' else 'stopped at --max-steps'})")
        if not result.trace:
            print("tool trace: (the model called no tool)")
        for t in result.trace:
            outcome = json.dumps(t.result, sort_keys=True) if t.ok else f"error: {t.error}"
            print(f"tool trace: step {t.step} {t.tool or '?'}({json.dumps(t.arguments)}) -> {outcome}")
    return 0


__all__ = ["Assistant", "Generation", "PromptTooLong", "add_arguments", "offered_tools", "parse_tool_args", "run_chat"]
