"""Running hooks in their configured order, each one bounded in time and isolated, so a hook that
raises, hangs or answers garbage holds only its message: outbound hooks (MAPI preprocessors) on a
message before any transport sees it, inbound hooks (MAPI spooler hooks) on each local recipient's
copy before it is filed.

Hooks are declared in the configuration as ``[[hooks]]`` tables (name, type, optional addrtypes,
domains, timeout; the other keys are the hook's options) and built by the ``msgspool.hooks``
entry point named by `type`, like transports. A hook object has ``preprocess(draft)`` (outbound),
``postprocess(delivery)`` (inbound), or both — each a plain function (run in a worker thread, so a
slow one does not block the event loop) or a coroutine function (awaited); domain/hooks.py says
what they may answer. For an inbound hook, `domains` are those of the mailbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ParamSpec, TypeVar

from msgspool.domain.hooks import (
    UNCHANGED,
    Delivery,
    Draft,
    DraftRecipient,
    Hold,
    HookError,
    HookRecord,
    HookScope,
    Postprocessed,
    Preprocessed,
    Reject,
    describe,
    describe_inbound,
    judge,
    judge_inbound,
)
from msgspool.domain.message import Message
from msgspool.domain.recipient import Status
from msgspool.errors import ConfigError

log = logging.getLogger("msgspool.hooks")
P = ParamSpec("P")
T = TypeVar("T")
HOOK_THREADS = 4  # sync hooks at once; a hung one keeps its thread until it returns


@dataclass(slots=True)
class LoadedHook:
    hook: Any  # an OutboundHook, an InboundHook, or both (ports.py)
    scope: HookScope
    timeout: float


def load_hooks(settings: Any) -> tuple[list[LoadedHook], list[LoadedHook]]:
    """The configured (outbound, inbound) hooks, in order, built by their `msgspool.hooks` entry points."""
    factories = {ep.name: ep for ep in entry_points(group="msgspool.hooks")}
    outbound: list[LoadedHook] = []
    inbound: list[LoadedHook] = []
    names: set[str] = set()
    for declared in settings.hooks:
        options = dict(declared)
        name, kind = options.pop("name", None), options.pop("type", None)
        if not name or not kind:
            raise ConfigError(f"hook {declared!r}: needs a name and a type")
        if name in names:
            raise ConfigError(f"hook {name}: the name is used twice")
        if kind not in factories:
            raise ConfigError(f"hook {name}: unknown type {kind!r} (known: {', '.join(sorted(factories))})")
        names.add(name)
        addrtypes, domains = options.pop("addrtypes", None), options.pop("domains", None)
        timeout = float(options.pop("timeout", settings.hook_timeout))
        hook = factories[kind].load()(name, settings, options)
        # The configuration's scope, else the one the hook declares (attributes addrtypes, domains).
        scope = HookScope(frozenset(a.upper() for a in (addrtypes or getattr(hook, "addrtypes", ()))),
                          tuple(domains or getattr(hook, "domains", ())))
        if callable(getattr(hook, "preprocess", None)):
            outbound.append(LoadedHook(hook, scope, timeout))
        if callable(getattr(hook, "postprocess", None)):
            inbound.append(LoadedHook(hook, scope, timeout))
        if not callable(getattr(hook, "preprocess", None)) and not callable(getattr(hook, "postprocess", None)):
            raise ConfigError(f"hook {name}: type {kind!r} has neither preprocess nor postprocess")
    return outbound, inbound


def has_inbound_hooks(settings: Any) -> bool:
    """Whether any configured hook type has `postprocess`, known without building the hooks."""
    if not settings.hooks:
        return False  # every `sendmail` run asks: no entry-point scan when there are no hooks
    factories = {ep.name: ep for ep in entry_points(group="msgspool.hooks")}
    kinds = {str(declared.get("type")) for declared in settings.hooks}
    return any(callable(getattr(factories[k].load(), "postprocess", None)) for k in kinds if k in factories)


def draft_of(message: Message) -> Draft:
    """The hooks' view of a message: its recipients that are being delivered now."""
    return Draft(message.id, message.sender,
                 [DraftRecipient(r.address, r.addrtype, r.index) for r in message.recipients
                  if r.status is Status.ACTIVE],
                 message.content, message.message_class, message.origin, dict(message.meta))


class Pipeline:
    """Calls hooks safely: in a worker thread or awaited, within their timeout, errors contained."""

    STAGE = ""

    def __init__(self, hooks: Sequence[LoadedHook],
                 on_history: Callable[[str, list[HookRecord]], None] | None = None) -> None:
        self.hooks = list(hooks)
        self.on_history = on_history  # told what the hooks did on each run (the metrics' hook outcomes)
        self._threads = ThreadPoolExecutor(HOOK_THREADS, thread_name_prefix="msgspool-hook")

    async def _call(self, loaded: LoadedHook, method: Callable[[Any], Any], arg: object) -> object:
        """The hook's answer; HookError when it raises (SystemExit and KeyboardInterrupt too) or
        overruns its time. Only cancellation (the daemon stopping) goes through."""
        try:
            if inspect.iscoroutinefunction(method):
                return await asyncio.wait_for(_contained(method(arg)), loaded.timeout)
            return await self._in_thread(loaded, method, arg)
        except TimeoutError as err:
            raise HookError(f"no answer within {loaded.timeout:g} s") from err
        except (HookError, asyncio.CancelledError):
            raise
        except BaseException as err:  # the hook's own bug, even sys.exit(): isolate it to this message
            raise HookError(_error_text(err)) from err

    async def _in_thread(self, loaded: LoadedHook, method: Callable[[Any], Any], arg: object) -> object:
        pool = self._threads
        future = asyncio.get_running_loop().run_in_executor(pool, method, arg)
        try:
            return await asyncio.wait_for(future, loaded.timeout)
        except TimeoutError:
            self._abandon(pool, loaded.hook.name)
            raise

    def _abandon(self, pool: ThreadPoolExecutor, name: str) -> None:
        """A plain hook overran its time. Python cannot stop its thread, which may never return:
        later calls get a fresh pool, so a few hung calls cannot take every hook thread and stall
        all mail; the stuck thread is left to finish (or not) on its own."""
        if pool is not self._threads:
            return
        log.warning("hook %s overran its timeout in a worker thread; hooks get fresh threads", name)
        pool.shutdown(wait=False)  # calls already queued there still run when a thread comes free
        self._threads = ThreadPoolExecutor(HOOK_THREADS, thread_name_prefix="msgspool-hook")

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


class Preprocessor(Pipeline):
    """The outbound pipeline. Each hook runs on every draft the hooks before it produced. A
    Reject, or a hook's failure, stops it; a hook's Hold does not: as Postfix's cleanup goes on
    after a header_checks HOLD, the hooks after it still do their part (a DKIM signature), so that
    `queue release` can send the message as it is without running the hooks again."""

    STAGE = "preprocess"

    async def run(self, draft: Draft) -> Preprocessed:
        result = await self._run(draft)
        if self.on_history is not None:
            self.on_history(self.STAGE, result.history)
        return result

    async def _run(self, draft: Draft) -> Preprocessed:
        result = Preprocessed([draft])
        for loaded in self.hooks:
            drafts: list[Draft] = []
            for current in result.drafts:
                answer = await self._step(loaded, current, result)
                if isinstance(answer, Reject | Hold):
                    return dataclasses.replace(result, verdict=answer)
                drafts.extend(answer)
            result.drafts = drafts
        return result

    async def _step(self, loaded: LoadedHook, current: Draft, result: Preprocessed) -> list[Draft] | Reject | Hold:
        """One hook on one draft, recorded in `result.history`: the drafts to go on with, or the
        verdict that stops the pipeline (a Reject; a Hold when the hook failed). The hook's own
        Hold goes into `result.hold` (the first reason wins) and the draft goes on unchanged."""
        if not loaded.scope.applies(current.recipients):
            return [current]
        name = loaded.hook.name
        try:
            given = current.copy()  # the hook may change it in place and answer None: `current` stays
            answer = _judging(judge, await self._call(loaded, loaded.hook.preprocess, given), current, given)
        except HookError as err:
            log.warning("%s: hook %s failed: %s; message held", current.message_id, name, err)
            result.history.append(HookRecord(name, "error", str(err)))
            return Hold(f"hook {name} failed: {err}")
        if isinstance(answer, Reject):
            result.history.append(_verdict_record(name, answer))
            return answer
        if isinstance(answer, Hold):
            result.history.append(_verdict_record(name, answer))
            result.hold = result.hold or answer
            return [current]
        result.history.append(dataclasses.replace(describe(current, answer) or UNCHANGED, hook=name))
        return answer


class Postprocessor(Pipeline):
    """The inbound pipeline: every hook in turn on one local recipient's copy."""

    STAGE = "postprocess"

    async def run(self, delivery: Delivery) -> Postprocessed:
        result = await self._run(delivery)
        if self.on_history is not None:
            self.on_history(self.STAGE, result.history)
        return result

    async def _run(self, delivery: Delivery) -> Postprocessed:
        result = Postprocessed(delivery)
        for loaded in self.hooks:
            if not loaded.scope.applies([DraftRecipient(delivery.mailbox)]):
                continue
            name, given = loaded.hook.name, result.delivery.copy()
            try:
                answer = _judging(judge_inbound, await self._call(loaded, loaded.hook.postprocess, given), given)
            except HookError as err:
                log.warning("%s: inbound hook %s failed for <%s>: %s; held", delivery.message_id, name,
                            delivery.recipient, err)
                result.history.append(HookRecord(name, "error", str(err)))
                return dataclasses.replace(result, verdict=Hold(f"inbound hook {name} failed: {err}"))
            if isinstance(answer, Reject | Hold):
                result.history.append(_verdict_record(name, answer))
                return dataclasses.replace(result, verdict=answer)
            given.actions = answer
            result.history.append(dataclasses.replace(describe_inbound(result.delivery, given) or UNCHANGED, hook=name))
            result.delivery = given
        return result


async def _contained(hook_call: Awaitable[object]) -> object:
    """A coroutine hook's answer, with SystemExit and KeyboardInterrupt turned into HookError inside
    the task that runs it: asyncio re-raises those two from a task straight out of the event loop
    (Task.__step), which would stop the daemon before anyone could catch them. The daemon takes
    SIGINT through the event loop (daemon.py), so a KeyboardInterrupt here is the hook's own raise."""
    try:
        return await hook_call
    except (SystemExit, KeyboardInterrupt) as err:
        raise HookError(_error_text(err)) from err


def _judging(judge_answer: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Judging is pure code over objects the hook made: whatever breaks it (an odd subclass, a
    field deleted) is the hook's garbage, so its message is held rather than left active."""
    try:
        return judge_answer(*args, **kwargs)
    except HookError:
        raise
    except Exception as err:
        raise HookError(f"answered garbage ({_error_text(err)})") from err


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _verdict_record(name: str, verdict: Reject | Hold) -> HookRecord:
    if isinstance(verdict, Reject):
        return HookRecord(name, "rejected", verdict.reply.line())
    return HookRecord(name, "held", verdict.reason)

